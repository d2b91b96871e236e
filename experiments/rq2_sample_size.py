"""RQ2 sample-size shift: models trained with N_max in {32, 64, 128} at d = 8, tested at N from 16 to 512.

    python -m experiments.rq2_sample_size --scale=cpu

Each model trains in ``--root/<scale>_nmax=<n>`` (resumable) and is evaluated with TGMM and EM
(official and k-means++) on the same fresh tasks at every test N. Writes ``rq2_sample_size_<scale>.json``
and a figure of l2 vs test N per K.
"""

import os

from absl import app, flags, logging

from experiments import study
from experiments.reporting import ordered_methods
from tgmm_jax.scoring import MODEL_METHOD

study.define_common_flags(root="runs/rq2", eval_seed=20260402)
flags.DEFINE_integer("dim", 8, "Data dimension.")
flags.DEFINE_list("train_n", ["32", "64", "128"], "N_max of the trained models.")
flags.DEFINE_list("test_n", ["16", "32", "64", "128", "256", "512"], "Test sample sizes.")
flags.DEFINE_list("methods", [MODEL_METHOD, "em", "em_kmeanspp"], "Methods to compare.")
FLAGS = flags.FLAGS


def plot(by_train_n: dict, path: str) -> None:
    largest = max(by_train_n, key=int)
    ks = sorted({c["K"] for c in by_train_n[largest]["cells"]})
    panels = []
    for k in ks:
        series = []
        for train_n, results in by_train_n.items():
            cells = results["cells"]
            ns = sorted({c["N"] for c in cells})
            for method in ordered_methods(cells):
                if method != MODEL_METHOD and train_n != largest:
                    continue  # baselines do not depend on the training N: plot them once
                label = f"TGMM (N_train={train_n})" if method == MODEL_METHOD else method
                stats = [study.mean_sem(cells, method, K=k, N=n) for n in ns]
                series.append((label, ns, stats, "-" if method == MODEL_METHOD else "--"))
        panels.append((k, series))
    study.panel_figure(panels, path, xlabel="test N", title=lambda k: f"K = {k}", xlog=True)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    by_train_n = {}
    for n in FLAGS.train_n:
        workdir = os.path.join(FLAGS.root, f"{FLAGS.scale}_d={FLAGS.dim}_nmax={n}")
        study.train_model(study.train_config(FLAGS.scale, FLAGS.dim, int(n), FLAGS.steps), workdir)
        methods = FLAGS.methods if n == max(FLAGS.train_n, key=int) else [MODEL_METHOD]
        by_train_n[n] = study.evaluate_cached(
            workdir,
            os.path.join(FLAGS.results, "rq2", f"{FLAGS.scale}_nmax={n}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell,
            ns=tuple(int(t) for t in FLAGS.test_n),
            seed=FLAGS.eval_seed,
            methods=methods,
        )
    study.write_json(
        FLAGS.results,
        f"rq2_sample_size_{FLAGS.scale}.json",
        {"scale": FLAGS.scale, "dim": FLAGS.dim, "by_train_n": by_train_n},
    )
    plot(by_train_n, os.path.join(FLAGS.results, f"rq2_sample_size_{FLAGS.scale}.png"))


if __name__ == "__main__":
    app.run(main)
