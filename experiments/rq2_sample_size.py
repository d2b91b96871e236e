"""RQ2 sample-size shift: models trained with N_max in {32, 64, 128} at d = 8, tested at N from 16 to 512.

    python -m experiments.rq2_sample_size --scale=cpu

Each model trains in ``--root/<scale>_nmax=<n>`` (resumable) and is evaluated with TGMM and EM
(official and k-means++) on the same fresh tasks at every test N. Writes ``rq2_sample_size_<scale>.json``
and a figure of l2 vs test N per K.
"""

import json
import os

from absl import app, flags, logging

from experiments import study

flags.DEFINE_enum("scale", "cpu", list(study.SCALES), "Model and recipe: CPU-sized or the paper's.")
flags.DEFINE_integer("dim", 8, "Data dimension.")
flags.DEFINE_list("train_n", ["32", "64", "128"], "N_max of the trained models.")
flags.DEFINE_list("test_n", ["16", "32", "64", "128", "256", "512"], "Test sample sizes.")
flags.DEFINE_list("methods", ["tgmm", "em", "em_kmeanspp"], "Methods to compare.")
flags.DEFINE_integer("steps", None, "Override the training steps (cpu scale).")
flags.DEFINE_integer("tasks_per_cell", 1280, "Evaluation tasks per (K, N).")
flags.DEFINE_integer("eval_seed", 20260402, "Seed of the evaluation tasks.")
flags.DEFINE_string("root", "runs/rq2", "Parent of the training workdirs.")
flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")
FLAGS = flags.FLAGS


def plot(by_train_n: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    first = next(iter(by_train_n.values()))["cells"]
    ks = sorted({c["K"] for c in first})
    fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 3.4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        for train_n, results in by_train_n.items():
            cells = results["cells"]
            ns = sorted({c["N"] for c in cells})
            for method in dict.fromkeys(c["method"] for c in cells):
                if method != "tgmm" and train_n != max(by_train_n, key=int):
                    continue  # baselines do not depend on the training N: plot them once
                label = f"TGMM (N_train={train_n})" if method == "tgmm" else method
                stats = [study.mean_sem(cells, method, K=k, N=n) for n in ns]
                ax.errorbar(ns, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=2,
                            label=label, linestyle="-" if method == "tgmm" else "--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"K = {k}")
        ax.set_xlabel("test N")
    axes[0][0].set_ylabel("l2 error (mean ± sem)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    by_train_n = {}
    for n in FLAGS.train_n:
        workdir = os.path.join(FLAGS.root, f"{FLAGS.scale}_d={FLAGS.dim}_nmax={n}")
        study.train_model(study.train_config(FLAGS.scale, FLAGS.dim, int(n), FLAGS.steps), workdir)
        methods = FLAGS.methods if n == max(FLAGS.train_n, key=int) else ["tgmm"]
        by_train_n[n] = study.evaluate_cached(
            workdir, os.path.join(FLAGS.results, "rq2", f"{FLAGS.scale}_nmax={n}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell, ns=tuple(int(t) for t in FLAGS.test_n), seed=FLAGS.eval_seed,
            methods=methods,
        )
    os.makedirs(FLAGS.results, exist_ok=True)
    with open(os.path.join(FLAGS.results, f"rq2_sample_size_{FLAGS.scale}.json"), "w") as f:
        json.dump({"scale": FLAGS.scale, "dim": FLAGS.dim, "by_train_n": by_train_n}, f, indent=1)
    plot(by_train_n, os.path.join(FLAGS.results, f"rq2_sample_size_{FLAGS.scale}.png"))


if __name__ == "__main__":
    app.run(main)
