"""RQ1 effectiveness: TGMM vs every baseline over d in {2, 8, 32, 128} x K in {2, 3, 4, 5} at N = 128.

    python -m experiments.rq1_effectiveness --scale=cpu      # CPU-sized models (tiny recipe, 4000 steps)
    python -m experiments.rq1_effectiveness --scale=paper    # the paper's model and recipe (GPU/TPU)

One model per d, trained in ``--root/d=<d>`` (rerunning resumes), evaluated once on
``--tasks_per_cell`` fresh tasks per (K, N=128), results in ``--results/rq1.json`` and a figure like the
paper's Figure 2 (error vs K per d) in ``rq1_effectiveness.png``.
"""

import os

from absl import app, flags, logging

from experiments import study
from experiments.reporting import ordered_methods

study.define_common_flags(root="runs/rq1", eval_seed=20260401)
flags.DEFINE_list("dims", ["2", "8", "32", "128"], "Data dimensions.")
FLAGS = flags.FLAGS


def plot(results_by_d: dict, path: str) -> None:
    panels = []
    for d in sorted(results_by_d, key=int):
        cells = results_by_d[d]["cells"]
        series = []
        for method in ordered_methods(cells):
            ks = sorted({c["K"] for c in cells if c["method"] == method})
            series.append((method, ks, [study.mean_sem(cells, method, K=k) for k in ks], "-"))
        panels.append((d, series))
    study.panel_figure(panels, path, xlabel="K", title=lambda d: f"d = {d}")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results_by_d = {}
    for d in FLAGS.dims:
        config = study.train_config(FLAGS.scale, int(d), 128, FLAGS.steps)
        workdir = os.path.join(FLAGS.root, f"{FLAGS.scale}_d={d}")
        study.train_model(config, workdir)
        results_by_d[d] = study.evaluate_cached(
            workdir,
            os.path.join(FLAGS.results, "rq1", f"{FLAGS.scale}_d={d}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell,
            ns=(128,),
            seed=FLAGS.eval_seed,
        )
    study.write_json(FLAGS.results, f"rq1_{FLAGS.scale}.json", {"scale": FLAGS.scale, "by_dim": results_by_d})
    plot(results_by_d, os.path.join(FLAGS.results, f"rq1_effectiveness_{FLAGS.scale}.png"))


if __name__ == "__main__":
    app.run(main)
