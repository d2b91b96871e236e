"""RQ1 effectiveness: TGMM vs every baseline over d in {2, 8, 32, 128} x K in {2, 3, 4, 5} at N = 128.

    python -m experiments.rq1_effectiveness --scale=cpu      # CPU-sized models (tiny recipe, 4000 steps)
    python -m experiments.rq1_effectiveness --scale=paper    # the paper's model and recipe (GPU/TPU)

One model per d, trained in ``--root/d=<d>`` (rerunning resumes), evaluated once on
``--tasks_per_cell`` fresh tasks per (K, N=128), results in ``--results/rq1.json`` and a figure like the
paper's Figure 2 (error vs K per d) in ``rq1_effectiveness.png``.
"""

import json
import os

from absl import app, flags, logging

from experiments import study

flags.DEFINE_enum("scale", "cpu", list(study.SCALES), "Model and recipe: CPU-sized or the paper's.")
flags.DEFINE_list("dims", ["2", "8", "32", "128"], "Data dimensions.")
flags.DEFINE_integer("steps", None, "Override the training steps (cpu scale).")
flags.DEFINE_integer("tasks_per_cell", 1280, "Evaluation tasks per (K, N).")
flags.DEFINE_integer("eval_seed", 20260401, "Seed of the evaluation tasks.")
flags.DEFINE_string("root", "runs/rq1", "Parent of the training workdirs.")
flags.DEFINE_string("results", "results", "Where rq1.json and the figure go.")
FLAGS = flags.FLAGS


def plot(results_by_d: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    dims = sorted(results_by_d, key=int)
    fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        cells = results_by_d[d]["cells"]
        for method in dict.fromkeys(c["method"] for c in cells):
            ks = sorted({c["K"] for c in cells if c["method"] == method})
            stats = [study.mean_sem(cells, method, K=k) for k in ks]
            ax.errorbar(ks, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=2, label=method)
        ax.set_yscale("log")
        ax.set_title(f"d = {d}")
        ax.set_xlabel("K")
        ax.set_xticks(sorted({c["K"] for c in cells}))
    axes[0][0].set_ylabel("l2 error (mean ± sem)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results_by_d = {}
    for d in FLAGS.dims:
        config = study.train_config(FLAGS.scale, int(d), 128, FLAGS.steps)
        workdir = os.path.join(FLAGS.root, f"{FLAGS.scale}_d={d}")
        study.train_model(config, workdir)
        results_by_d[d] = study.evaluate_cached(
            workdir, os.path.join(FLAGS.results, "rq1", f"{FLAGS.scale}_d={d}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell, ns=(128,), seed=FLAGS.eval_seed,
        )
    os.makedirs(FLAGS.results, exist_ok=True)
    with open(os.path.join(FLAGS.results, f"rq1_{FLAGS.scale}.json"), "w") as f:
        json.dump({"scale": FLAGS.scale, "by_dim": results_by_d}, f, indent=1)
    plot(results_by_d, os.path.join(FLAGS.results, f"rq1_effectiveness_{FLAGS.scale}.png"))


if __name__ == "__main__":
    app.run(main)
