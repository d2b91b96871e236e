"""Missing values, the classical half: exact missing-data EM against mean imputation + EM.

Held-out Algorithm-1 tasks (``--dims`` 2 and 8, N = 128, K = 3, ``--tasks`` per cell, isotropic unit
variance) with coordinates masked completely at random (``tgmm_jax.masking``: each point keeps at least one
coordinate; the masked fraction's expectation is the rate) at ``--rates`` 0, 10, 30 and 50%. The tasks are the
same at every rate, and both methods see the same mask.

  em_missing      exact missing-data EM, k-means++ x 10 seeded on the mean-imputed points (baselines.missing_em)
  em_mean_impute  mean imputation, then EM with k-means++ x 10 (em_kmeanspp on the completed points)

Both fit the task's model (``--variant``, isotropic: unit variance, known; the paper's setting). Scores per task:
  l2          the project's aligned parameter error (``tgmm_jax.metrics.evaluate_estimates``: means and weights
              under the best component matching) against the true mixture
  ari         adjusted Rand index of each method's own labels against the true ones: em_missing's MAP
              component under the posterior given the observed coordinates; em_mean_impute's MAP component of
              the imputed point under its fit (what the imputation pipeline outputs)
  ari_observed  ARI of the MAP component given the observed coordinates under either fit (the estimates' quality
              as clusterers, with the same label rule for both)
and the paired difference em_missing - em_mean_impute of l2 and ARI (mean, SEM over tasks).
At d = 2 a rate of 50% is the maximum: every point has exactly one coordinate missing, so no point shows both
coordinates together: the data identify the two marginal mixtures, and only their weights tell which cluster
of x_1 goes with which cluster of x_2 (weakly: close weights swap). A large l2 there is mostly the data's limit.

Usage: python -m experiments.studies.missing_values.run [--tasks 128] [--results results/missing_values]
Writes ``missing_values.json`` to ``--results``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from sklearn.metrics import adjusted_rand_score

from baselines import get_baseline
from experiments.label_metrics import stat
from tgmm_jax import gmm, masking
from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.mixture import missing
from tgmm_jax.tasks import TaskSpec, sample_tasks

METHODS = ("em_missing", "em_mean_impute")
NUM_POINTS = 128
NUM_COMPONENTS = 3

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command: importing this module defines none."""
    flags.DEFINE_list("dims", ["2", "8"], "Data dimensions.")
    flags.DEFINE_list(
        "rates", ["0", "0.1", "0.3", "0.5"], "Missing rates (expected fraction of masked coordinates)."
    )
    flags.DEFINE_integer("tasks", 128, "Tasks per dimension (the same tasks at every rate).")
    flags.DEFINE_enum("variant", "isotropic", ["isotropic", "anisotropic"], "The mixture both methods fit.")
    flags.DEFINE_integer("n_init", 10, "k-means++ restarts of both methods.")
    flags.DEFINE_integer("eval_seed", 20261206, "Seed of the tasks and masks.")
    flags.DEFINE_string("results", "results/missing_values", "Where missing_values.json goes.")


def _ari(labels_BxN, pred_BxN, mask_BxN) -> np.ndarray:
    return np.array([adjusted_rand_score(t[m], p[m]) for t, p, m in zip(labels_BxN, pred_BxN, mask_BxN)])


def _paired(a, b) -> dict:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return stat(diff)


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
    for name in METHODS:
        fit = get_baseline(name, FLAGS.variant, n_init=FLAGS.n_init)
        fit_key = jax.random.fold_in(key, 7)
        jax.block_until_ready(fit(fit_key, masked))  # compile (the same shapes at every rate)
        start = time.perf_counter()
        estimate, info = jax.block_until_ready(fit(fit_key, masked))
        seconds = time.perf_counter() - start
        l2 = np.asarray(evaluate_estimates(estimate, task)["l2"], np.float64)
        by_observed = np.asarray(np.argmax(missing.log_joint(masked.points, estimate), axis=-1))
        if name == "em_mean_impute":
            filled = missing.mean_impute(masked.points, masked.point_mask)
            own = np.asarray(np.argmax(gmm.log_joint(filled, estimate), axis=-1))
        else:
            own = by_observed
        ari = _ari(labels, own, real)
        ari_observed = _ari(labels, by_observed, real)
        per_task[name] = dict(l2=l2, ari=ari)
        out["methods"][name] = dict(
            l2=stat(l2),
            ari=stat(ari),
            ari_observed=stat(ari_observed),
            n_iter=stat(info["n_iter"]),
            converged=float(np.mean(info["converged"])),
            valid=float(np.mean(info["valid"])),
            seconds=seconds,
        )
    a, b = per_task["em_missing"], per_task["em_mean_impute"]
    out["em_missing_minus_em_mean_impute"] = dict(
        l2=_paired(a["l2"], b["l2"]), ari=_paired(a["ari"], b["ari"])
    )
    out["l2_ratio_em_missing_over_em_mean_impute"] = float(np.mean(a["l2"]) / np.mean(b["l2"]))
    return out


def main(argv):
    del argv
    started = time.time()
    cells = []
    for dim in [int(d) for d in FLAGS.dims]:
        spec = TaskSpec(dim=dim, ks=(NUM_COMPONENTS,), n_max=NUM_POINTS, n_min=NUM_POINTS, variable_n=False)
        key = jax.random.fold_in(jax.random.key(FLAGS.eval_seed), 1000 * dim + NUM_POINTS)
        task = sample_tasks(key, spec, FLAGS.tasks)
        for rate in [float(r) for r in FLAGS.rates]:
            cell = run_cell(task, dim, rate, jax.random.fold_in(key, 1))
            cells.append(cell)
            m = cell["methods"]
            print(
                f"d={dim} rate={rate:.2f} masked={cell['masked_fraction']:.3f}  "
                + "  ".join(
                    f"{n}: l2 {m[n]['l2']['mean']:.4f} ari {m[n]['ari']['mean']:.3f}" for n in METHODS
                ),
                flush=True,
            )
    payload = dict(
        description=__doc__.split("\n\n")[0],
        settings=dict(
            dims=[int(d) for d in FLAGS.dims],
            rates=[float(r) for r in FLAGS.rates],
            tasks=FLAGS.tasks,
            num_points=NUM_POINTS,
            num_components=NUM_COMPONENTS,
            variant=FLAGS.variant,
            n_init=FLAGS.n_init,
            eval_seed=FLAGS.eval_seed,
            backend=jax.default_backend(),
        ),
        cells=cells,
        wall_seconds=time.time() - started,
    )
    os.makedirs(FLAGS.results, exist_ok=True)
    path = os.path.join(FLAGS.results, "missing_values.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {path} ({payload['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
