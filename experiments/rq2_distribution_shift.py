"""RQ2 distribution shift: test means U[-5, 5]^d + sigma_p N(0, I), sigma_p in {0, 1, 2, 5, 10}, d = 8.

    python -m experiments.rq2_distribution_shift --scale=cpu

Uses the d = 8, N_max = 128 model of the RQ1 study (trained if missing) and every method on the same
shifted tasks. Writes ``rq2_distribution_shift_<scale>.json`` and a figure of l2 vs sigma_p per K.
"""

import os

from absl import app, flags, logging

from experiments import study
from experiments.reporting import ordered_methods

study.define_common_flags(root="runs/rq1", eval_seed=20260403)  # the d = 8 model of RQ1
flags.DEFINE_list("sigma_p", ["0", "1", "2", "5", "10"], "Mean-shift scales.")
FLAGS = flags.FLAGS


def plot(by_shift: dict, path: str) -> None:
    shifts = sorted(by_shift, key=float)
    cells0 = by_shift[shifts[0]]["cells"]
    panels = []
    for k in sorted({c["K"] for c in cells0}):
        series = [
            (
                method,
                [float(s) for s in shifts],
                [study.mean_sem(by_shift[s]["cells"], method, K=k) for s in shifts],
                "-",
            )
            for method in ordered_methods(cells0)
        ]
        panels.append((k, series))
    study.panel_figure(panels, path, xlabel="sigma_p", title=lambda k: f"K = {k}")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = os.path.join(FLAGS.root, f"{FLAGS.scale}_d=8")
    study.train_model(study.train_config(FLAGS.scale, 8, 128, FLAGS.steps), workdir)
    by_shift = {}
    for s in FLAGS.sigma_p:
        by_shift[s] = study.evaluate_cached(
            workdir,
            os.path.join(FLAGS.results, "rq2_shift", f"{FLAGS.scale}_sigma={s}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell,
            ns=(128,),
            seed=FLAGS.eval_seed,
            mean_shift=float(s),
        )
    study.write_json(
        FLAGS.results,
        f"rq2_distribution_shift_{FLAGS.scale}.json",
        {"scale": FLAGS.scale, "by_sigma_p": by_shift},
    )
    plot(by_shift, os.path.join(FLAGS.results, f"rq2_distribution_shift_{FLAGS.scale}.png"))


if __name__ == "__main__":
    app.run(main)
