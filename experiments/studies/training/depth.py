"""Depth x sample size (the rebuttal's Tables 1 and 3): does TGMM's error fall as the test N
grows, and only when the network is deep enough?

    python -m experiments.studies.training.depth --layers=1,3,6 --steps=300

One model per depth L (the tiny recipe at the ``tiny`` width: set backbone, 32 wide, 2 heads), trained on
N in [n/2, n] at d = ``--dim`` (resumable, ``--root/L=<L>``), evaluated once on the same fresh tasks at every
``--test_n`` (beyond the training N too: the set backbone has no positions, so any N is valid input);
the baselines once, beside the deepest model. Writes ``depth_sample_size.json`` (cells, and per L the ratio
of the error at the largest test N to the error at the training N) and ``depth_sample_size.png``.
"""

import os

import numpy as np
from absl import app, flags, logging

from experiments import study
from experiments.studies.training import common as ts
from tgmm_jax.scoring import MODEL_METHOD

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command: importing this module defines none."""
    flags.DEFINE_list("layers", ["1", "3", "6"], "Depths L (the rebuttal: up to 12).")
    flags.DEFINE_integer("steps", 300, "Training steps per model.")
    flags.DEFINE_integer("dim", 8, "Data dimension.")
    flags.DEFINE_integer("n", 64, "N_max of training (N drawn from [n/2, n]).")
    flags.DEFINE_list("test_n", ["32", "64", "128", "256", "512"], "Test sample sizes.")
    flags.DEFINE_list(
        "baselines", ["em", "em_kmeanspp", "spectral"], "Baselines scored beside the deepest model."
    )
    flags.DEFINE_integer("tasks_per_cell", 128, "Evaluation tasks per (K, N).")
    flags.DEFINE_integer("eval_seed", 20260416, "Seed of the evaluation tasks (the same for every model).")
    flags.DEFINE_string("root", "runs/depth", "Parent of the training workdirs.")
    flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")


def n_trend(cells: list[dict], method: str, n_train: int, n_large: int) -> dict:
    """Per K and over K: l2 at the largest test N / l2 at the training N (< 1: the error falls with N)."""
    ks = sorted({c["K"] for c in cells if c["method"] == method})
    ratios = {}
    for k in ks:
        a, b = ts.cell(cells, method, K=k, N=n_large), ts.cell(cells, method, K=k, N=n_train)
        if a is not None and b is not None and b["l2"]["mean"] > 0:
            ratios[str(k)] = a["l2"]["mean"] / b["l2"]["mean"]
    finite = [r for r in ratios.values() if np.isfinite(r)]
    return dict(by_k=ratios, geomean=float(np.exp(np.mean(np.log(finite)))) if finite else float("nan"))


def plot(payload: dict, path: str) -> None:
    ks = payload["ks"]
    panels = []
    for k in ks:
        series = []
        for layers, res in payload["by_layers"].items():
            ns = sorted({c["N"] for c in res["cells"]})
            for method in dict.fromkeys(c["method"] for c in res["cells"]):
                stats = [study.mean_sem(res["cells"], method, K=k, N=n) for n in ns]
                if method == MODEL_METHOD:
                    series.append((f"TGMM L={layers}", ns, stats, "-"))
                else:
                    series.append((method, ns, stats, "--"))
        panels.append((k, series))
    study.panel_figure(panels, path, xlabel="test N", title=lambda k: f"K = {k}", xlog=True)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    layers = [int(x) for x in FLAGS.layers]
    test_n = tuple(int(x) for x in FLAGS.test_n)
    deepest = max(layers)
    payload = dict(
        dim=FLAGS.dim,
        n_train=[FLAGS.n // 2, FLAGS.n],
        test_n=list(test_n),
        steps=FLAGS.steps,
        tasks_per_cell=FLAGS.tasks_per_cell,
        eval_seed=FLAGS.eval_seed,
        by_layers={},
    )
    for num_layers in sorted(layers):
        config = ts.depth_config(layers=num_layers, steps=FLAGS.steps, d=FLAGS.dim, n=FLAGS.n)
        workdir = os.path.join(FLAGS.root, f"d={FLAGS.dim}_n={FLAGS.n}_steps={FLAGS.steps}_L={num_layers}")
        study.train_model(config, workdir)
        methods = [MODEL_METHOD] + (list(FLAGS.baselines) if num_layers == deepest else [])
        result = study.evaluate_cached(
            workdir,
            os.path.join(FLAGS.results, "training_studies", f"depth_{os.path.basename(workdir)}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell,
            ns=test_n,
            seed=FLAGS.eval_seed,
            methods=methods,
        )
        result["trend"] = n_trend(result["cells"], MODEL_METHOD, FLAGS.n, max(test_n))
        result["curve"] = ts.learning_curve(workdir)
        payload["by_layers"][str(num_layers)] = result
    deep_cells = payload["by_layers"][str(deepest)]["cells"]
    payload["ks"] = sorted({c["K"] for c in deep_cells})
    payload["baseline_trend"] = {
        m: n_trend(deep_cells, m, FLAGS.n, max(test_n))
        for m in dict.fromkeys(c["method"] for c in deep_cells if c["method"] != MODEL_METHOD)
    }  # the baselines asked for and the model's reference (em_kmeanspp), which runs with every model
    study.write_json(FLAGS.results, "depth_sample_size.json", payload)
    plot(payload, os.path.join(FLAGS.results, "depth_sample_size.png"))


if __name__ == "__main__":
    define_flags()
    app.run(main)
