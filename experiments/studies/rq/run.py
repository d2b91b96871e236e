"""The paper's RQ1 and RQ2, in three parts that share one recipe (``study.train_config``):

    python -m experiments.studies.rq.run --part=effectiveness --scale=cpu   # RQ1
    python -m experiments.studies.rq.run --part=sample_size --scale=cpu     # RQ2, sample-size shift
    python -m experiments.studies.rq.run --part=shift --scale=cpu           # RQ2, distribution shift

``--scale=paper`` trains the paper's model and recipe instead (GPU/TPU).

- effectiveness: TGMM vs every baseline over d in {2, 8, 32, 128} x K in {2, 3, 4, 5} at N = 128. One model
  per d, trained in ``--root/<scale>_d=<d>`` (rerunning resumes), evaluated once on ``--tasks_per_cell`` fresh
  tasks per (K, N=128); writes ``rq1_<scale>.json`` and a figure like the paper's Figure 2 (error vs K per
  d), ``rq1_effectiveness_<scale>.png``.
- sample_size: models trained with N_max in {32, 64, 128} at d = 8, each in ``--root/<scale>_d=8_nmax=<n>``,
  evaluated with TGMM and EM (official and k-means++) on the same fresh tasks at every test N from 16 to
  512; writes ``rq2_sample_size_<scale>.json`` and a figure of l2 vs test N per K.
- shift: test means U[-5, 5]^d + sigma_p N(0, I), sigma_p in {0, 1, 2, 5, 10}, with the d = 8, N_max = 128
  model of the effectiveness part (trained if missing) and every method on the same shifted tasks; writes
  ``rq2_distribution_shift_<scale>.json`` and a figure of l2 vs sigma_p per K.
"""

import os

from absl import app, flags, logging

from experiments import study
from experiments.reporting import ordered_methods
from tgmm_jax.scoring import MODEL_METHOD

# part -> (default --root, default --eval_seed): the shift part reuses the effectiveness part's d = 8 model
PARTS = {
    "effectiveness": ("runs/rq1", 20260401),
    "sample_size": ("runs/rq2", 20260402),
    "shift": ("runs/rq1", 20260403),
}
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined only when it runs, so that importing this module defines none)."""
    flags.DEFINE_enum("part", None, list(PARTS), "Which part of the study to run.")
    study.define_common_flags(root=None, eval_seed=None)  # None: the part's own (PARTS)
    flags.DEFINE_list("dims", ["2", "8", "32", "128"], "effectiveness: data dimensions.")
    flags.DEFINE_integer("dim", 8, "sample_size: data dimension.")
    flags.DEFINE_list("train_n", ["32", "64", "128"], "sample_size: N_max of the trained models.")
    flags.DEFINE_list("test_n", ["16", "32", "64", "128", "256", "512"], "sample_size: test sample sizes.")
    flags.DEFINE_list("methods", [MODEL_METHOD, "em", "em_kmeanspp"], "sample_size: methods to compare.")
    flags.DEFINE_list("sigma_p", ["0", "1", "2", "5", "10"], "shift: mean-shift scales.")
    flags.mark_flag_as_required("part")


def plot_effectiveness(results_by_d: dict, path: str) -> None:
    panels = []
    for d in sorted(results_by_d, key=int):
        cells = results_by_d[d]["cells"]
        series = []
        for method in ordered_methods(cells):
            ks = sorted({c["K"] for c in cells if c["method"] == method})
            series.append((method, ks, [study.mean_sem(cells, method, K=k) for k in ks], "-"))
        panels.append((d, series))
    study.panel_figure(panels, path, xlabel="K", title=lambda d: f"d = {d}")


def plot_sample_size(by_train_n: dict, path: str) -> None:
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


def plot_shift(by_shift: dict, path: str) -> None:
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


def run_effectiveness(root: str, eval_seed: int) -> None:
    results_by_d = {}
    for d in FLAGS.dims:
        config = study.train_config(FLAGS.scale, int(d), 128, FLAGS.steps)
        workdir = os.path.join(root, f"{FLAGS.scale}_d={d}")
        study.train_model(config, workdir)
        results_by_d[d] = study.evaluate_cached(
            workdir,
            os.path.join(FLAGS.results, "rq1", f"{FLAGS.scale}_d={d}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell,
            ns=(128,),
            seed=eval_seed,
        )
    study.write_json(FLAGS.results, f"rq1_{FLAGS.scale}.json", {"scale": FLAGS.scale, "by_dim": results_by_d})
    plot_effectiveness(results_by_d, os.path.join(FLAGS.results, f"rq1_effectiveness_{FLAGS.scale}.png"))


def run_sample_size(root: str, eval_seed: int) -> None:
    by_train_n = {}
    for n in FLAGS.train_n:
        workdir = os.path.join(root, f"{FLAGS.scale}_d={FLAGS.dim}_nmax={n}")
        study.train_model(study.train_config(FLAGS.scale, FLAGS.dim, int(n), FLAGS.steps), workdir)
        methods = FLAGS.methods if n == max(FLAGS.train_n, key=int) else [MODEL_METHOD]
        by_train_n[n] = study.evaluate_cached(
            workdir,
            os.path.join(FLAGS.results, "rq2", f"{FLAGS.scale}_nmax={n}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell,
            ns=tuple(int(t) for t in FLAGS.test_n),
            seed=eval_seed,
            methods=methods,
        )
    study.write_json(
        FLAGS.results,
        f"rq2_sample_size_{FLAGS.scale}.json",
        {"scale": FLAGS.scale, "dim": FLAGS.dim, "by_train_n": by_train_n},
    )
    plot_sample_size(by_train_n, os.path.join(FLAGS.results, f"rq2_sample_size_{FLAGS.scale}.png"))


def run_shift(root: str, eval_seed: int) -> None:
    workdir = os.path.join(root, f"{FLAGS.scale}_d=8")
    study.train_model(study.train_config(FLAGS.scale, 8, 128, FLAGS.steps), workdir)
    by_shift = {}
    for s in FLAGS.sigma_p:
        by_shift[s] = study.evaluate_cached(
            workdir,
            os.path.join(FLAGS.results, "rq2_shift", f"{FLAGS.scale}_sigma={s}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell,
            ns=(128,),
            seed=eval_seed,
            mean_shift=float(s),
        )
    study.write_json(
        FLAGS.results,
        f"rq2_distribution_shift_{FLAGS.scale}.json",
        {"scale": FLAGS.scale, "by_sigma_p": by_shift},
    )
    plot_shift(by_shift, os.path.join(FLAGS.results, f"rq2_distribution_shift_{FLAGS.scale}.png"))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    root, eval_seed = PARTS[FLAGS.part]
    run = {"effectiveness": run_effectiveness, "sample_size": run_sample_size, "shift": run_shift}[FLAGS.part]
    run(FLAGS.root or root, eval_seed if FLAGS.eval_seed is None else FLAGS.eval_seed)


if __name__ == "__main__":
    define_flags()
    app.run(main)
