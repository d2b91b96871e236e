"""Phase transition (rebuttal Q4, after Ndaoud 2018): two-component tasks around the exact-recovery threshold.

    python -m experiments.studies.phase_transition.run [--tasks_per_cell=128] [--settings=d2,d8,b0.1,b1]

(b1 runs at most ``MAX_TASKS['b1']`` = 32 tasks per cell: at D = 621 every task costs ~20x more CPU.)

Tasks: ``tgmm_jax.tasks.sample_phase_transition_tasks``, the official ``SphericalGaussianMixtureTask.abn_config``
(docs/official_differences.md §1):
n points, D = int(b n log n), weights (1/2, 1/2), means +-(Delta/2) u (u uniform on the sphere)
plus a shared offset Delta N(0, I), unit noise; Delta^2 = (1 + sqrt(a)) log n is the distance between the means.

Thresholds. Ndaoud's exact-recovery threshold for means +-theta is ||theta||^2 = (1 + sqrt(1 + 2D/(n log n))) log n
= (1 + sqrt(1 + 2b)) log n. The official configuration's "line" a = 1 + 2b puts that value on Delta^2, the
squared distance between the means, i.e. on (2||theta||)^2: a separation half of Ndaoud's. We sweep the ratio
rho = Delta / Delta_line, Delta_line^2 = (1 + sqrt(1 + 2b)) log n, so rho = 1 is the official line and rho = 2
is Ndaoud's threshold (a = (rho^2 (1 + sqrt(1 + 2b)) - 1)^2 is handed to the sampler).

Settings (n, b): 'd2' (32, 0.0185; D = 2), 'd8' (128, 0.013; D = 8), 'b0.1' (128, 0.1; D = 62: the official
yaml's task, there evaluated at 32 points), 'b1' (128, 1.0; D = 621). Methods: em (official init), em_kmeanspp,
spectral, tgmm (the shipped dimension-free 'cluster' model), tgmm+em (its estimate + 5 EM steps), tgmm_paper
(the shipped paper-architecture model where its d matches: paper_d2 at D = 2, paper_d8 at D = 8), and oracle
(the true parameters: the Bayes classifier, a ceiling). No training: the shipped checkpoints only.

Per task: cluster accuracy of the MAP labels under the best label permutation, exact recovery (accuracy 1),
aligned l2 and l2 of the means (``tgmm_jax.metrics``). Cells are cached per setting in ``--cache`` (rerunning
skips finished settings); writes ``--results/phase_transition.json`` and ``phase_transition.png``.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from matplotlib.figure import Figure

from experiments import label_metrics, study
from experiments import methods as methods_lib
from tgmm_jax import scoring
from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.pretrained import load_pretrained
from tgmm_jax.tasks import GMMTask, sample_phase_transition_tasks


def define_flags() -> None:
    """The command line (defined only when run as a script, so tests can import the module next to
    other studies that define flags of the same names)."""
    flags.DEFINE_list("settings", ["d2", "d8", "b0.1", "b1"], "Settings (see SETTINGS).")
    flags.DEFINE_list(
        "rhos", ["0.75", "1", "1.25", "1.5", "1.75", "2", "2.5", "3"], "Delta / Delta_line values."
    )
    flags.DEFINE_integer("tasks_per_cell", 128, "Tasks per (setting, rho).")
    flags.DEFINE_list("methods", [], "Methods to run (default: all that apply).")
    flags.DEFINE_integer("eval_seed", 20261215, "Seed of the tasks (the same for every method).")
    flags.DEFINE_string("cache", "runs/phase_transition", "Per-setting cache of finished cells.")
    flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")


FLAGS = flags.FLAGS

# name -> (n, b, shipped paper-architecture checkpoint for that D or None)
SETTINGS = {
    "d2": (32, 0.0185, "paper_d2"),
    "d8": (128, 0.013, "paper_d8"),
    "b0.1": (128, 0.1, None),
    "b1": (128, 1.0, None),
}
# D = 621 costs ~20x the CPU of D = 62 per task (d x d moments and projections): fewer tasks there.
MAX_TASKS = {"b1": 32}
REFINE_STEPS = 5
ORACLE = "oracle"
K_MAX = 5  # the shipped models' largest K: tasks are padded to it (component_mask)


def line_delta(n: int, b: float) -> float:
    """Delta on the official line a = 1 + 2b (distance between the means); Ndaoud's threshold is twice it."""
    return math.sqrt((1.0 + math.sqrt(1.0 + 2.0 * b)) * math.log(n))


def a_for(rho: float, b: float) -> float:
    """The sampler's ``a`` giving Delta = rho * line_delta (ValueError where rho is too small for any a > 0)."""
    root = rho**2 * (1.0 + math.sqrt(1.0 + 2.0 * b)) - 1.0
    if root <= 0:
        raise ValueError(f"rho={rho} is below the smallest separation the sampler can make at b={b}")
    return root**2


def dimension(n: int, b: float) -> int:
    return int(b * n * math.log(n))


def _methods(setting: str, names) -> tuple[dict, dict]:
    methods, params = methods_lib.cluster_with_skeleton(load_pretrained("cluster"), REFINE_STEPS)
    paper = SETTINGS[setting][2]
    if paper is not None:
        ckpt = load_pretrained(paper)
        methods["tgmm_paper"] = scoring.model_method(ckpt.model)
        params["tgmm_paper"] = ckpt.params
    if names:
        unknown = sorted(set(names) - set(methods) - {ORACLE})
        if unknown:
            raise ValueError(
                f"unknown method(s) {unknown} for setting {setting}; available: {sorted(methods)}"
            )
        methods = {k: v for k, v in methods.items() if k in names}
    return methods, params


def pad_components(task: GMMTask, k_max: int) -> GMMTask:
    """``task`` with its component axis padded to ``k_max`` (masked off), the shape the models output."""
    extra = k_max - task.weights.shape[1]
    if extra <= 0:
        return task
    pad = lambda a, value: jnp.concatenate(
        [a, jnp.full(a.shape[:1] + (extra,) + a.shape[2:], value, a.dtype)], axis=1
    )
    return task.replace(
        weights=pad(task.weights, 0.0),
        means=pad(task.means, 0.0),
        scales=pad(task.scales, 1.0),
        component_mask=pad(task.component_mask, False),
    )


GAINS = {scoring.MODEL_METHOD: "em_seeded", "tgmm+em": "em_seeded+em"}  # learned method -> its skeleton


def _per_task(estimate, task) -> dict:
    return {k: np.asarray(v) for k, v in evaluate_estimates(estimate, task).items()}


def _summary(estimate, task, metrics=None) -> dict:
    metrics = _per_task(estimate, task) if metrics is None else metrics
    acc = label_metrics.best_permutation_accuracy(
        task.labels, label_metrics.map_labels(task.points, estimate), task.point_mask
    )
    ok = metrics["applicable"].astype(bool)
    return {
        "num_tasks": int(ok.size),
        "not_applicable": float(1.0 - ok.mean()),
        "cluster_acc": label_metrics.stat(acc[ok]),
        "exact_recovery": float(np.mean(acc[ok] == 1.0)) if ok.any() else float("nan"),
        "l2": label_metrics.stat(metrics["l2"][ok]),
        "l2_means": label_metrics.stat(metrics["l2_means"][ok]),
        "oracle_gap": label_metrics.stat(metrics["oracle_gap"][ok]),
    }


def run_setting(setting: str, rhos, tasks_per_cell: int, seed: int, names=()) -> list[dict]:
    """Every method on the same tasks for each rho of one setting: one JSON-ready cell per (rho, method)."""
    n, b, _ = SETTINGS[setting]
    methods, params = _methods(setting, names)
    cells = []
    for i, rho in enumerate(rhos):
        a = a_for(rho, b)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), n), i)
        task = pad_components(sample_phase_transition_tasks(key, n, a, b, tasks_per_cell), K_MAX)
        where = dict(
            setting=setting, n=n, b=b, dim=dimension(n, b), rho=rho, a=a, delta=rho * line_delta(n, b)
        )
        fingerprint = scoring.task_fingerprint(task)
        if not names or ORACLE in names:
            cells.append(
                dict(
                    where,
                    method=ORACLE,
                    seconds=0.0,
                    fingerprint=fingerprint,
                    **_summary(task.params(), task),
                )
            )
        per_task, mine = {}, {}
        for name, fn in methods.items():
            start = time.perf_counter()
            estimate = jax.block_until_ready(
                scoring.fit_in_chunks(fn, params.get(name), jax.random.fold_in(key, 1), task, chunk=256)
            )
            seconds = time.perf_counter() - start
            estimate = jax.tree.map(jax.numpy.asarray, estimate)
            per_task[name] = _per_task(estimate, task)
            mine[name] = dict(
                where,
                method=name,
                seconds=seconds,
                fingerprint=fingerprint,
                **_summary(estimate, task, per_task[name]),
            )
            cells.append(mine[name])
        for learned, reference in GAINS.items():  # paired l2 difference on the same tasks
            if learned in per_task and reference in per_task:
                gain = scoring.paired_gain(
                    per_task[learned], per_task[reference], np.zeros(task.points.shape[0])
                )
                mine[learned]["learned_gain"] = dict(gain[0], reference=reference)
        logging.warning("phase transition %s rho=%s done (D=%d)", setting, rho, where["dim"])
    return cells


def plot(cells: list[dict], path: str) -> None:
    """Accuracy (top) and exact-recovery rate (bottom) against rho per setting, both thresholds marked."""
    settings = list(dict.fromkeys(c["setting"] for c in cells))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig = Figure(figsize=(4 * len(settings), 6.4))
    axes = fig.subplots(2, len(settings), squeeze=False)
    for j, setting in enumerate(settings):
        mine = [c for c in cells if c["setting"] == setting]
        for m in methods:
            rows = sorted((c for c in mine if c["method"] == m), key=lambda c: c["rho"])
            if not rows:
                continue
            xs = [c["rho"] for c in rows]
            style = ":" if m == ORACLE else "-"
            axes[0][j].errorbar(
                xs,
                [c["cluster_acc"]["mean"] for c in rows],
                yerr=[c["cluster_acc"]["sem"] for c in rows],
                marker="o",
                capsize=2,
                label=m,
                color=colors[m],
                linestyle=style,
            )
            axes[1][j].plot(
                xs, [c["exact_recovery"] for c in rows], marker="o", label=m, color=colors[m], linestyle=style
            )
        first = mine[0]
        for ax in axes[:, j]:
            ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.axvline(2.0, color="black", linestyle="--", linewidth=1)
            ax.set_xlabel("rho = Delta / Delta_line  (1: official line, 2: Ndaoud)")
        axes[0][j].set_title(f"{setting}: n = {first['n']}, b = {first['b']}, D = {first['dim']}")
    axes[0][0].set_ylabel("cluster accuracy (best permutation)")
    axes[1][0].set_ylabel("exact recovery rate")
    handles = {}
    for ax in axes[0]:  # every method once, also one missing from the last panel (tgmm_paper)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0][-1].legend(list(handles.values()), list(handles), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rhos = [float(r) for r in FLAGS.rhos]
    unknown = sorted(set(FLAGS.settings) - set(SETTINGS))
    if unknown:
        raise app.UsageError(f"unknown setting(s) {unknown}; choose from {sorted(SETTINGS)}")
    cells = []
    tasks = {s: min(FLAGS.tasks_per_cell, MAX_TASKS.get(s, FLAGS.tasks_per_cell)) for s in FLAGS.settings}
    for setting in FLAGS.settings:
        config = dict(
            setting=setting,
            rhos=rhos,
            tasks_per_cell=tasks[setting],
            seed=FLAGS.eval_seed,
            methods=FLAGS.methods,
            checkpoint=study.shipped_checkpoint_text("cluster"),  # a new shipped model invalidates the cache
        )
        path = os.path.join(FLAGS.cache, f"{setting}.json")
        saved = None
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
        if saved is None or saved["config"] != config:
            saved = dict(
                config=config,
                cells=run_setting(setting, rhos, tasks[setting], FLAGS.eval_seed, FLAGS.methods),
            )
            os.makedirs(FLAGS.cache, exist_ok=True)
            with open(path, "w") as f:
                json.dump(saved, f, indent=1)
        cells += saved["cells"]
    payload = dict(
        settings={
            name: dict(n=n, b=b, dim=dimension(n, b), paper_checkpoint=p, tasks_per_cell=tasks[name])
            for name, (n, b, p) in SETTINGS.items()
            if name in FLAGS.settings
        },
        rhos=rhos,
        tasks_per_cell=FLAGS.tasks_per_cell,
        eval_seed=FLAGS.eval_seed,
        refine_steps=REFINE_STEPS,
        shipped_cluster_checkpoint=study.shipped_checkpoint_text("cluster"),
        thresholds=dict(
            official_line="Delta^2 = (1 + sqrt(1 + 2b)) log n (a = 1 + 2b), rho = 1",
            ndaoud="(Delta / 2)^2 = (1 + sqrt(1 + 2b)) log n, rho = 2",
        ),
        device=jax.devices()[0].platform,
        cells=cells,
    )
    os.makedirs(FLAGS.results, exist_ok=True)
    with open(os.path.join(FLAGS.results, "phase_transition.json"), "w") as f:
        json.dump(payload, f, indent=1)
    plot(cells, os.path.join(FLAGS.results, "phase_transition.png"))


if __name__ == "__main__":
    define_flags()
    app.run(main)
