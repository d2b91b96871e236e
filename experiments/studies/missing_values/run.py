"""Missing values: the TGMM estimator against exact missing-data EM and mean imputation + EM.

Held-out Algorithm-1 tasks (``--dims`` 2 and 8, N = ``--num_points`` (128), K = 3, ``--tasks`` per cell, isotropic unit
variance) with coordinates masked completely at random (``tgmm_jax.masking``: each point keeps at least one
coordinate; the masked fraction's expectation is the rate) at ``--rates`` 0, 10, 30 and 50%. The tasks are the
same at every rate, and every method sees the same mask.

  tgmm            ``TGMMEstimator(3, missing="allow", noise_variance=1.0)`` (the shipped checkpoint): the network
                  reads the points filled from their 5 nearest neighbours (``tgmm_jax.imputation``), then exact
                  missing-data EM steps (``MISSING_EM_STEPS`` = 5)
  tgmm_refine     the same with ``refine="em", em_steps=100`` (the baselines' max_iter), no restarts
  tgmm_restarts   the same with ``n_restarts=9`` added: the network's start plus 9 k-means++ starts (seeded on
                  the same filled points), 10 starts as the baselines' n_init, each run through the same 100
                  exact missing-data EM steps; per task the fit of highest observed-data log-likelihood is kept
                  (the network's on ties). The network plus classical restarts, not the network alone
  em_missing      exact missing-data EM, k-means++ x 10 seeded on the mean-imputed points (baselines.missing_em)
  em_mean_impute  mean imputation, then EM with k-means++ x 10 (em_kmeanspp on the completed points)

All fit the task's model (``--variant``, isotropic: unit variance, known; the paper's setting; the estimator is
told ``noise_variance=1.0``). The estimator fits the tasks of a cell by ``fit_batch``, ``FIT_CHUNK`` per call. Scores
per task:
  l2          the project's aligned parameter error (``tgmm_jax.metrics.evaluate_estimates``: means and weights
              under the best component matching) against the true mixture
  ari         adjusted Rand index of each method's own labels against the true ones: em_missing's and the
              estimator's MAP component under the posterior given the observed coordinates (the estimator's
              ``predict``; ``predict_agreement`` (``_matched``: up to the components' order) checks it
              against ``fit(X).predict(X)`` on the first ``PREDICT_CHECKS`` tasks of each cell); em_mean_impute's
              MAP component of the imputed point under its fit (what the imputation pipeline outputs)
  ari_observed  ARI of the MAP component given the observed coordinates under any fit (the estimates' quality
              as clusterers, with the same label rule for all)
and the paired differences em_missing - em_mean_impute and <model> - <baseline> of l2 and ARI (mean, SEM
over tasks), and tgmm_restarts - tgmm_refine (what the restarts add). ``tgmm_restarts_origin`` says per task
whether tgmm_restarts kept the network start's fit: its network run is tgmm_refine's (same seed, same steps),
so the kept fit is the network start's where it equals tgmm_refine's fit (``_restart_origin``). ``checks`` holds the
issue's two done-when verdicts at rate 0.3 per d and model arm (``report.checks``).
At d = 2 a rate of 50% is the maximum: every point has exactly one coordinate missing, so no point shows both
coordinates together: the data identify the two marginal mixtures, and only their weights tell which cluster
of x_1 goes with which cluster of x_2 (weakly: close weights swap). A large l2 there is mostly the data's limit.

``--arms=NAME=CHECKPOINT,...`` scores more checkpoints on the same tasks and masks, each as ``tgmm@NAME`` and
``tgmm_refine@NAME`` (the settings of ``tgmm`` and ``tgmm_refine``), with their paired differences from the
``--checkpoint`` model's (``tgmm@NAME_minus_tgmm``, ...) and between arms; for example the networks trained with
masks (``config.missing_rate_max``) with and without the mask read-in (``ModelConfig.readin_mask``).

Usage: python -m experiments.studies.missing_values.run [--tasks 128] [--results results/missing_values]
Writes ``missing_values.json`` and ``missing_values.png`` to ``--results``; ``--plot_only`` redraws the figure
from the saved JSON.
"""

from __future__ import annotations

import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from baselines import get_baseline
from experiments.label_metrics import stat
from experiments.studies.missing_values import report
from tgmm_jax import gmm, masking, pretrained
from tgmm_jax.estimator import TGMMEstimator
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.mixture import missing
from tgmm_jax.tasks import TaskSpec, sample_tasks

MODELS = report.MODELS  # ("tgmm", "tgmm_refine", "tgmm_restarts")
BASELINES = report.BASELINES  # ("em_missing", "em_mean_impute")
METHODS = MODELS + BASELINES
NUM_POINTS = 128  # the default of --num_points
NUM_COMPONENTS = 3
REFINE_STEPS = 100  # tgmm_refine's EM steps: the baselines' max_iter (baselines.missing_em)
RESTARTS = 9  # tgmm_restarts' k-means++ restarts: with the network's start, the baselines' n_init = 10 starts
# tgmm_restarts' kept fit is the network start's fit where its weights and means are within this of tgmm_refine's
# under the best component order (data units): equal optima reached from two starts differ by float32 noise (~1e-6)
# or, not fully converged in 100 steps, by ~1e-3; a different optimum differs by far more
SAME_FIT_ATOL = 1e-2
# ... and it is the network's own run where they are within this in the same order (float32 noise of two programs)
SAME_RUN_ATOL = 1e-4
PREDICT_CHECKS = 4  # tasks per cell on which fit_batch's labels are checked against fit(X).predict(X)
# Datasets per fit_batch call (the estimator itself runs at most ``estimator.FIT_TASKS`` = 64 fits per jitted
# call: see there why).
FIT_CHUNK = 64

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command: importing this module defines none."""
    flags.DEFINE_list("dims", ["2", "8"], "Data dimensions.")
    flags.DEFINE_list(
        "rates", ["0", "0.1", "0.3", "0.5"], "Missing rates (expected fraction of masked coordinates)."
    )
    flags.DEFINE_integer("tasks", 128, "Tasks per dimension (the same tasks at every rate).")
    flags.DEFINE_integer("num_points", NUM_POINTS, "Points per task (N).", lower_bound=NUM_COMPONENTS)
    flags.DEFINE_enum("variant", "isotropic", ["isotropic", "anisotropic"], "The mixture the baselines fit.")
    flags.DEFINE_integer("n_init", 10, "k-means++ restarts of both baselines.")
    flags.DEFINE_integer("eval_seed", 20261206, "Seed of the tasks and masks.")
    flags.DEFINE_string("checkpoint", pretrained.DEFAULT, "The estimator's checkpoint.")
    flags.DEFINE_list(
        "arms", [], "More checkpoints to score as NAME=CHECKPOINT (tgmm@NAME, tgmm_refine@NAME)."
    )
    flags.DEFINE_string("results", "results/missing_values", "Where missing_values.json goes.")
    flags.DEFINE_bool("plot_only", False, "Only redraw missing_values.png from the saved JSON.")


def _ari(labels_BxN, pred_BxN, mask_BxN) -> np.ndarray:
    return np.array([adjusted_rand_score(t[m], p[m]) for t, p, m in zip(labels_BxN, pred_BxN, mask_BxN)])


def _paired(a, b) -> dict:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return stat(diff)


ARM_SETTINGS = (
    report.ARM_SETTINGS
)  # ("tgmm", "tgmm_refine"): the settings each --arms checkpoint is scored with


def arm_checkpoints(arms) -> dict:
    """``--arms`` as {NAME: CHECKPOINT}; a malformed or repeated entry is a ValueError naming it."""
    out = {}
    for item in arms:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or "@" in name or name in out:
            raise ValueError(f"--arms entries are NAME=CHECKPOINT with distinct names (no '@'), got {item!r}")
        out[name] = path
    return out


def arm_methods(arms) -> list[str]:
    """The method names of the ``--arms`` checkpoints: tgmm@NAME, tgmm_refine@NAME per arm."""
    return [f"{setting}@{name}" for name in arm_checkpoints(arms) for setting in ARM_SETTINGS]


def _estimator(name: str) -> TGMMEstimator:
    """The model method ``name`` (a model setting, or ``setting@ARM`` for an ``--arms`` checkpoint): the
    estimator told the known unit isotropic noise (the baselines' model)."""
    setting, _, arm = name.partition("@")
    extra = {
        "tgmm": {},
        "tgmm_refine": dict(refine="em", em_steps=REFINE_STEPS),
        "tgmm_restarts": dict(refine="em", em_steps=REFINE_STEPS, n_restarts=RESTARTS),
    }[setting]
    return TGMMEstimator(
        NUM_COMPONENTS,
        checkpoint=arm_checkpoints(FLAGS.arms)[arm] if arm else FLAGS.checkpoint,
        noise_variance=1.0,
        missing="allow",
        random_state=0,
        **extra,
    )


def _fit_model(name: str, masked):
    """(estimate as the task's MixtureParams (float32, K = NUM_COMPONENTS), the estimator) for every task of
    ``masked``, ``FIT_CHUNK`` tasks per ``fit_batch`` call (NaN = missing)."""
    est = _estimator(name)
    points, real = np.asarray(masked.points, np.float64), np.asarray(masked.point_mask)
    chunks = [
        est.fit_batch(points[i : i + FIT_CHUNK], real[i : i + FIT_CHUNK])
        for i in range(0, points.shape[0], FIT_CHUNK)
    ]
    fit = jax.tree.map(lambda *a: np.concatenate(a), *chunks)
    k = NUM_COMPONENTS
    if not (fit.component_mask[:, :k].all() and not fit.component_mask[:, k:].any()):
        raise RuntimeError(f"{name}: fit_batch did not fit K = {k} components")
    estimate = MixtureParams(
        *(jnp.asarray(a[:, :k], jnp.float32) for a in (fit.weights, fit.means, fit.scales)),
        jnp.asarray(fit.component_mask[:, :k]),
    )
    return estimate, est


def _predict_agreement(name: str, masked, labels_BxN) -> tuple[float, float]:
    """Fractions of the first ``PREDICT_CHECKS`` tasks' points on which ``fit(X).predict(X)`` of one task gives
    the labels of the batched fit (``labels_BxN``): the batched scoring is the estimator's own ``predict``
    (as they come, after matching the components one to one (most points in common)): with restarts, a restart
    that reaches the network start's optimum in another component order wins or loses the near-tie (~1e-7 per
    point) by float32 noise, which differs between the one-task and the batched program."""
    points = np.asarray(masked.points, np.float64)
    real = np.asarray(masked.point_mask)
    same, matched = [], 0.0
    for i in range(min(PREDICT_CHECKS, points.shape[0])):
        alone = _estimator(name).fit(points[i][real[i]]).predict(points[i][real[i]])
        batched = labels_BxN[i][real[i]]
        same.append(alone == batched)
        counts_KxK = np.zeros((NUM_COMPONENTS, NUM_COMPONENTS))
        np.add.at(counts_KxK, (alone, batched), 1)
        rows, cols = linear_sum_assignment(-counts_KxK)
        matched += counts_KxK[rows, cols].sum()
    same = np.concatenate(same)
    return float(np.mean(same)), float(matched / same.size)


def _fit(name: str, masked, key):
    """One method on every task: (estimate, info dict or None, labels it outputs [B, N], seconds)."""
    if name in MODELS or "@" in name:
        _fit_model(name, masked)  # compile (the same shapes at every rate)
        start = time.perf_counter()
        estimate, _ = _fit_model(name, masked)
        seconds = time.perf_counter() - start
        return estimate, None, seconds
    fit = get_baseline(name, FLAGS.variant, n_init=FLAGS.n_init)
    jax.block_until_ready(fit(key, masked))  # compile (the same shapes at every rate)
    start = time.perf_counter()
    estimate, info = jax.block_until_ready(fit(key, masked))
    return estimate, info, time.perf_counter() - start


def _max_gap(a: MixtureParams, b: MixtureParams, perm) -> np.ndarray:
    """Largest absolute difference of weights and means between ``a`` and ``b`` with ``b``'s components in the
    order ``perm``: [B]."""
    w = np.abs(np.asarray(a.weights) - np.asarray(b.weights)[:, perm]).max(axis=-1)
    mu = np.abs(np.asarray(a.means) - np.asarray(b.means)[:, perm]).max(axis=(-2, -1))
    return np.maximum(w, mu)


def _restart_origin(masked, restarts: MixtureParams, refine: MixtureParams) -> dict:
    """Where tgmm_restarts' kept fit came from, per task. Its network run is tgmm_refine's fit (the same seed,
    network and 100 EM steps). ``gap``: the largest difference of its weights and means from tgmm_refine's under
    the best of the K! component orders; ``network_fit``: gap <= ``SAME_FIT_ATOL``, the kept fit is the network
    start's (the network's own run, or a restart that reached the same optimum and won the tie by float32
    noise: which of the two was kept is not meaningful); else a restart's other optimum was kept.
    ``network_run``: the same order within ``SAME_RUN_ATOL`` (the network's own run, as far as float32 tells).
    ``loglik_gain``: its mean observed-data log-likelihood per point minus tgmm_refine's; ``restart_gain``
    summarises it on the tasks where a restart's other optimum was kept. ``below_refine`` counts tasks where the
    gain is below -1e-4: none, if the network run is indeed the same in both."""
    k = np.asarray(refine.weights).shape[-1]
    same_order_B = _max_gap(restarts, refine, np.arange(k))
    gap_B = np.min([_max_gap(restarts, refine, list(p)) for p in itertools.permutations(range(k))], axis=0)
    network_B = gap_B <= SAME_FIT_ATOL
    ll = [
        np.asarray(missing.log_likelihood(masked.points, masked.point_mask, p), np.float64)
        for p in (restarts, refine)
    ]
    gain_B = ll[0] - ll[1]
    return dict(
        network_fit=[bool(x) for x in network_B],
        network_fit_fraction=float(np.mean(network_B)),
        network_run=[bool(x) for x in same_order_B <= SAME_RUN_ATOL],
        gap=[float(x) for x in gap_B],
        loglik_gain=[float(x) for x in gain_B],
        restart_gain=stat(gain_B[~network_B]),
        below_refine=int(np.sum(gain_B < -1e-4)),
    )


def run_cell(task, dim: int, rate: float, key) -> dict:
    masked, observed = masking.mask_task(jax.random.fold_in(key, round(1000 * rate)), task, rate)
    observed = np.asarray(observed)
    real = np.asarray(task.point_mask)
    labels = np.asarray(task.labels)
    out = dict(
        dim=dim,
        rate=rate,
        masked_fraction=float(1.0 - observed[real].mean()),
        points_with_missing=float(np.mean(~observed[real].all(axis=-1))),
        methods={},
    )
    per_task = {}
    arms = arm_methods(FLAGS.arms)
    for name in METHODS + tuple(arms):
        estimate, info, seconds = _fit(name, masked, jax.random.fold_in(key, 7))
        l2 = np.asarray(evaluate_estimates(estimate, task)["l2"], np.float64)
        by_observed = np.asarray(np.argmax(missing.log_joint(masked.points, estimate), axis=-1))
        if name == "em_mean_impute":
            filled = missing.mean_impute(masked.points, masked.point_mask)
            own = np.asarray(np.argmax(gmm.log_joint(filled, estimate), axis=-1))
        else:
            own = by_observed
        ari = _ari(labels, own, real)
        ari_observed = _ari(labels, by_observed, real)
        per_task[name] = dict(l2=l2, ari=ari, estimate=estimate)
        out["methods"][name] = dict(
            l2=stat(l2), ari=stat(ari), ari_observed=stat(ari_observed), seconds=seconds
        )
        if info is not None:
            out["methods"][name].update(
                n_iter=stat(info["n_iter"]),
                converged=float(np.mean(info["converged"])),
                valid=float(np.mean(info["valid"])),
            )
        else:
            raw, matched = _predict_agreement(name, masked, own)
            out["methods"][name].update(predict_agreement=raw, predict_agreement_matched=matched)
    pairs = [("em_missing", "em_mean_impute"), ("tgmm_restarts", "tgmm_refine")]
    for a_name, b_name in pairs + [(m, b) for m in MODELS for b in BASELINES]:
        a, b = per_task[a_name], per_task[b_name]
        out[f"{a_name}_minus_{b_name}"] = dict(l2=_paired(a["l2"], b["l2"]), ari=_paired(a["ari"], b["ari"]))
    a, b = per_task["em_missing"], per_task["em_mean_impute"]
    out["l2_ratio_em_missing_over_em_mean_impute"] = float(np.mean(a["l2"]) / np.mean(b["l2"]))
    for m in MODELS:
        out[f"l2_ratio_{m}_over_em_missing"] = float(np.mean(per_task[m]["l2"]) / np.mean(a["l2"]))
    arm_names = list(arm_checkpoints(FLAGS.arms))
    for setting in ARM_SETTINGS:
        pairs = [(f"{setting}@{a}", setting) for a in arm_names]
        pairs += [(f"{setting}@{a}", f"{setting}@{b}") for a, b in itertools.combinations(arm_names, 2)]
        pairs += [(f"{setting}@{a}", base) for a in arm_names for base in BASELINES]
        for a_name, b_name in pairs:
            a, b = per_task[a_name], per_task[b_name]
            out[f"{a_name}_minus_{b_name}"] = dict(
                l2=_paired(a["l2"], b["l2"]), ari=_paired(a["ari"], b["ari"])
            )
    out["tgmm_restarts_origin"] = _restart_origin(
        masked, per_task["tgmm_restarts"]["estimate"], per_task["tgmm_refine"]["estimate"]
    )
    return out


def plot(payload: dict, path: str) -> None:
    """One row per d: l2 (log scale) and ARI against the missing rate, mean ± sem over tasks, per method."""
    from matplotlib.figure import Figure

    cells = payload["cells"]
    dims = sorted({c["dim"] for c in cells})
    named = list(METHODS) + sorted({m for c in cells for m in c["methods"] if "@" in m})
    methods = [m for m in named if any(m in c["methods"] for c in cells)]
    fig = Figure(figsize=(8.0, 2.9 * len(dims)))
    axes = fig.subplots(len(dims), 2, squeeze=False)
    for i, dim in enumerate(dims):
        mine = sorted((c for c in cells if c["dim"] == dim), key=lambda c: c["rate"])
        for j, metric in enumerate(("l2", "ari")):
            ax = axes[i][j]
            for n, m in enumerate(methods):
                pts = [(c["rate"], c["methods"][m][metric]) for c in mine if m in c["methods"]]
                ax.errorbar(
                    [100 * r for r, _ in pts], [s["mean"] for _, s in pts], yerr=[s["sem"] for _, s in pts],
                    marker="o", ms=3, capsize=2, color=f"C{n}", label=m,
                    linestyle="--" if m in BASELINES else "-",
                )  # fmt: skip
            if metric == "l2":
                ax.set_yscale("log")
            label = "ARI" if metric == "ari" else metric
            ax.set_title(f"d={dim}, N={payload['settings']['num_points']}, K=3: {label}", fontsize=9)
            ax.set_ylabel(f"{label} (mean ± sem)", fontsize=8)
            ax.set_xlabel("missing coordinates (%)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    columns = min(len(labels), 5)
    rows = -(-len(labels) // columns)
    fig.legend(handles, labels, loc="upper center", ncol=columns, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.05 * rows * 2 / len(dims)))
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    json_path = os.path.join(FLAGS.results, "missing_values.json")
    figure_path = os.path.join(FLAGS.results, "missing_values.png")
    if FLAGS.plot_only:
        with open(json_path) as f:
            plot(json.load(f), figure_path)
        print(f"wrote {figure_path}")
        return
    started = time.time()
    cells = []
    for dim in [int(d) for d in FLAGS.dims]:
        n = FLAGS.num_points
        spec = TaskSpec(dim=dim, ks=(NUM_COMPONENTS,), n_max=n, n_min=n, variable_n=False)
        key = jax.random.fold_in(jax.random.key(FLAGS.eval_seed), 1000 * dim + n)
        task = sample_tasks(key, spec, FLAGS.tasks)
        for rate in [float(r) for r in FLAGS.rates]:
            cell = run_cell(task, dim, rate, jax.random.fold_in(key, 1))
            cells.append(cell)
            m = cell["methods"]
            print(
                f"d={dim} rate={rate:.2f} masked={cell['masked_fraction']:.3f}  "
                + "  ".join(f"{n}: l2 {v['l2']['mean']:.4f} ari {v['ari']['mean']:.3f}" for n, v in m.items())
                + "  tgmm_restarts kept the network start's fit on "
                f"{100 * cell['tgmm_restarts_origin']['network_fit_fraction']:.0f}% of tasks",
                flush=True,
            )
    payload = dict(
        description=__doc__.split("\n\n")[0],
        settings=dict(
            dims=[int(d) for d in FLAGS.dims],
            rates=[float(r) for r in FLAGS.rates],
            tasks=FLAGS.tasks,
            num_points=FLAGS.num_points,
            num_components=NUM_COMPONENTS,
            variant=FLAGS.variant,
            n_init=FLAGS.n_init,
            eval_seed=FLAGS.eval_seed,
            checkpoint=FLAGS.checkpoint,
            arms=arm_checkpoints(FLAGS.arms),
            refine_steps=REFINE_STEPS,
            restarts=RESTARTS,
            backend=jax.default_backend(),
        ),
        cells=cells,
    )
    payload["checks"] = report.checks(payload)
    payload["wall_seconds"] = time.time() - started
    for c in payload["checks"]:
        print(report.check_line(c), flush=True)
    os.makedirs(FLAGS.results, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1)
    plot(payload, figure_path)
    print(f"wrote {json_path} and {figure_path} ({payload['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
