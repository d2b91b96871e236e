"""RQ2 distribution shift: test means U[-5, 5]^d + sigma_p N(0, I), sigma_p in {0, 1, 2, 5, 10}, d = 8.

    python -m experiments.rq2_distribution_shift --scale=cpu

Uses the d = 8, N_max = 128 model of the RQ1 study (trained if missing) and every method on the same
shifted tasks. Writes ``rq2_distribution_shift_<scale>.json`` and a figure of l2 vs sigma_p per K.
"""

import json
import os

from absl import app, flags, logging

from experiments import study

flags.DEFINE_enum("scale", "cpu", list(study.SCALES), "Model and recipe: CPU-sized or the paper's.")
flags.DEFINE_list("sigma_p", ["0", "1", "2", "5", "10"], "Mean-shift scales.")
flags.DEFINE_integer("steps", None, "Override the training steps (cpu scale).")
flags.DEFINE_integer("tasks_per_cell", 1280, "Evaluation tasks per (K, N).")
flags.DEFINE_integer("eval_seed", 20260403, "Seed of the evaluation tasks.")
flags.DEFINE_string("root", "runs/rq1", "Parent of the training workdirs (shared with RQ1).")
flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")
FLAGS = flags.FLAGS


def plot(by_shift: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    shifts = sorted(by_shift, key=float)
    cells0 = by_shift[shifts[0]]["cells"]
    ks = sorted({c["K"] for c in cells0})
    fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 3.4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        for method in dict.fromkeys(c["method"] for c in cells0):
            stats = [study.mean_sem(by_shift[s]["cells"], method, K=k) for s in shifts]
            ax.errorbar([float(s) for s in shifts], [m for m, _ in stats], yerr=[e for _, e in stats], marker="o",
                        capsize=2, label=method)
        ax.set_yscale("log")
        ax.set_title(f"K = {k}")
        ax.set_xlabel("sigma_p")
    axes[0][0].set_ylabel("l2 error (mean ± sem)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = os.path.join(FLAGS.root, f"{FLAGS.scale}_d=8")
    study.train_model(study.train_config(FLAGS.scale, 8, 128, FLAGS.steps), workdir)
    by_shift = {}
    for s in FLAGS.sigma_p:
        by_shift[s] = study.evaluate_cached(
            workdir, os.path.join(FLAGS.results, "rq2_shift", f"{FLAGS.scale}_sigma={s}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell, ns=(128,), seed=FLAGS.eval_seed, mean_shift=float(s),
        )
    os.makedirs(FLAGS.results, exist_ok=True)
    with open(os.path.join(FLAGS.results, f"rq2_distribution_shift_{FLAGS.scale}.json"), "w") as f:
        json.dump({"scale": FLAGS.scale, "by_sigma_p": by_shift}, f, indent=1)
    plot(by_shift, os.path.join(FLAGS.results, f"rq2_distribution_shift_{FLAGS.scale}.png"))


if __name__ == "__main__":
    app.run(main)
