"""Real data (rebuttal Q2): clustering and held-out log-likelihood on datasets that ship inside scikit-learn.

    python -m experiments.studies.real_data.run [--splits=10] [--datasets=digits01,digits04,iris,wine] [--mnist_dir=DIR]

Data (no downloads): scikit-learn's ``load_digits`` (8x8 images, D = 64) as 0-vs-1 (K = 2, N = 360) and 0-4
(K = 5, N = 901), ``load_iris`` (K = 3, D = 4, N = 150), ``load_wine`` (K = 3, D = 13, N = 178); with
``--mnist_dir`` also the rebuttal's MNIST tasks 0-vs-1 and 0-4 from the test split (784 pixels in [0, 1]).

Splits: each of ``--splits`` random halves: methods fit on one half (N_fit = floor(N / 2)) and are scored on both.

Preprocessing (the rebuttal's text does not say what it did; the models assume unit component variance
at the training tasks' spread, means in [-5, 5]): fitted on the fitting half only, then applied to both halves:
  std    z-score every feature (a constant feature stays 0), keep the data's own D;
  pca8   z-score, then project on the top 8 principal axes (the paper-architecture model's d = 8; D >= 8 only);
then one global factor so the mean per-feature variance is ``TRAINING_VARIANCE`` = 6.5 (as
the first step of ``TGMMEstimator(standardize=True)``). Every method sees the same points; log-likelihoods are per point,
in nats, in these coordinates (comparable across methods of one dataset and view, not across views).

Sample size: the shipped models were trained on N <= 128; the fitting halves hold 75-450 points. We give
the models every point (tasks padded to one N with a point mask, as the library does) and, beside that,
only a random 128-point subset of the fitting half (``_sub128``): the estimate is then scored on all points.

Methods: em (official init), em_kmeanspp, spectral (all unit variance, the paper's setting), tgmm (the
shipped dimension-free 'cluster' model), tgmm+em (its estimate + 5 EM steps), tgmm_paper (the shipped
'paper_d8', pca8 view only), and scikit-learn's GaussianMixture (spherical and diagonal covariances, k-means
init, 3 restarts) as an independent reference that also fits the variances. Metrics: cluster accuracy of
the MAP labels against the true classes under the best label permutation, on the fitting half (clustering)
and on the held-out half, and the held-out mean log-likelihood; mean and standard deviation over splits.
Writes ``--results/real_data.json`` and ``real_data.png``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from matplotlib.figure import Figure
from sklearn.mixture import GaussianMixture

from experiments import datasets, label_metrics, study
from experiments import methods as methods_lib
from tgmm_jax import gmm, scoring
from tgmm_jax.estimator import TRAINING_VARIANCE
from tgmm_jax.pretrained import load_pretrained
from tgmm_jax.tasks import GMMTask


def define_flags() -> None:
    """The command line (defined only when run as a script, so tests can import the module next to
    other studies that define flags of the same names)."""
    flags.DEFINE_list("datasets", list(datasets.SKLEARN_DATASETS), "scikit-learn datasets to run.")
    flags.DEFINE_list("views", ["std", "pca8"], "Preprocessings (see the module docstring).")
    flags.DEFINE_list("methods", [], "Methods to run (default: all that apply).")
    flags.DEFINE_integer("splits", 10, "Random half splits.")
    flags.DEFINE_integer("seed", 20261215, "Seed of the splits, subsets and restarts.")
    flags.DEFINE_string("mnist_dir", None, "Directory with MNIST's t10k IDX files: adds mnist01 and mnist04.")
    flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")


FLAGS = flags.FLAGS

K_MAX = 5  # the shipped models' largest K
SUBSET = 128  # the models' training N
PCA_DIM = 8
REFINE_STEPS = 5
SKLEARN = {"sklearn_spherical": "spherical", "sklearn_diag": "diag"}


def preprocess(x_fit, x_eval, view: str):
    """(fit, eval) points in the study's coordinates, the map fitted on ``x_fit`` only (module docstring)."""
    centre, sd = x_fit.mean(axis=0), x_fit.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    z_fit, z_eval = (x_fit - centre) / sd, (x_eval - centre) / sd
    if view == "pca8":
        if z_fit.shape[1] < PCA_DIM:
            raise ValueError(f"pca8 needs D >= {PCA_DIM}; the data have D = {z_fit.shape[1]}")
        axes_DxP = np.linalg.svd(z_fit, full_matrices=False)[2][:PCA_DIM].T
        z_fit, z_eval = z_fit @ axes_DxP, z_eval @ axes_DxP
    elif view != "std":
        raise ValueError(f"unknown view {view!r}; choose 'std' or 'pca8'")
    scale = np.sqrt(np.mean(z_fit**2) / TRAINING_VARIANCE)
    return z_fit / scale, z_eval / scale


def _pad(x_NxD, n_pad: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((n_pad, x_NxD.shape[1]), np.float32)
    out[: len(x_NxD)] = x_NxD
    return out, np.arange(n_pad) < len(x_NxD)


def _task(points_BxNxD, mask_BxN, labels_BxN, k: int) -> GMMTask:
    """A batch of real-data tasks in the library's layout; the 'true' parameters are unknown (zeros)."""
    b, _, d = points_BxNxD.shape
    return GMMTask(
        points=jnp.asarray(points_BxNxD),
        point_mask=jnp.asarray(mask_BxN),
        labels=jnp.asarray(labels_BxN, jnp.int32),
        weights=jnp.zeros((b, K_MAX)),
        means=jnp.zeros((b, K_MAX, d)),
        scales=jnp.ones((b, K_MAX, d)),
        component_mask=jnp.broadcast_to(jnp.arange(K_MAX) < k, (b, K_MAX)),
        num_components=jnp.full((b,), k, jnp.int32),
    )


def _methods(view: str, names) -> tuple[dict, dict]:
    methods, params = methods_lib.cluster_with_skeleton(load_pretrained("cluster"), REFINE_STEPS)
    if view == "pca8":
        paper = load_pretrained("paper_d8")
        methods["tgmm_paper"] = scoring.model_method(paper.model)
        params["tgmm_paper"] = paper.params
    subsets = [m for m in (scoring.MODEL_METHOD, "tgmm_paper") if m in methods]
    chosen = {
        **{m: m for m in methods},
        **{f"{m}_sub{SUBSET}": m for m in subsets},
        **{m: m for m in SKLEARN},
    }
    if names:
        chosen = {k: v for k, v in chosen.items() if k in names}
    return chosen, (methods, params)


def _scores(estimate, fit, test) -> dict[str, np.ndarray]:
    """Per split: accuracy on the fitting and held-out halves, mean log-likelihood of both (NumPy [B])."""
    estimate = jax.tree.map(jnp.asarray, estimate)
    out = {}
    for half, task in (("fit", fit), ("test", test)):
        pred = label_metrics.map_labels(task.points, estimate)
        out[f"acc_{half}"] = label_metrics.best_permutation_accuracy(task.labels, pred, task.point_mask)
        out[f"ll_{half}"] = np.asarray(
            gmm.mean_log_likelihood(task.points, task.point_mask, estimate), np.float64
        )
    ok = np.isfinite(out["ll_test"]) & np.isfinite(out["ll_fit"])
    ok &= np.asarray(jnp.all(jnp.isfinite(estimate.means) | ~fit.component_mask[..., None], axis=(1, 2)))
    return {k: np.where(ok, v, np.nan) for k, v in out.items()}


def _sklearn_scores(kind: str, fits, tests, k: int, seed: int) -> dict[str, np.ndarray]:
    out = {f"{m}_{h}": [] for m in ("acc", "ll") for h in ("fit", "test")}
    for s, ((xf, yf), (xt, yt)) in enumerate(zip(fits, tests)):
        gm = GaussianMixture(k, covariance_type=kind, n_init=3, random_state=seed + s).fit(xf)
        for half, x, y in (("fit", xf, yf), ("test", xt, yt)):
            out[f"acc_{half}"].append(
                label_metrics.best_permutation_accuracy(y[None], gm.predict(x)[None])[0]
            )
            out[f"ll_{half}"].append(gm.score(x))
    return {k: np.asarray(v) for k, v in out.items()}


def run_dataset(name: str, x_NxD, y_N, view: str, splits: int, seed: int, n_pad: int, names=()) -> list[dict]:
    """Every method on ``splits`` random halves of one dataset in one view: one cell per method."""
    k = int(y_N.max()) + 1
    rng = np.random.default_rng(seed)
    fits, tests, subset_masks = [], [], []
    for _ in range(splits):
        order = rng.permutation(len(x_NxD))
        fit_idx, test_idx = order[: len(order) // 2], order[len(order) // 2 :]
        xf, xt = preprocess(x_NxD[fit_idx], x_NxD[test_idx], view)
        fits.append((xf, y_N[fit_idx]))
        tests.append((xt, y_N[test_idx]))
        subset = np.zeros(n_pad, bool)
        subset[rng.choice(len(fit_idx), min(SUBSET, len(fit_idx)), replace=False)] = True
        subset_masks.append(subset)

    def batch(halves):
        padded = [_pad(x, n_pad) for x, _ in halves]
        labels = np.stack([np.pad(y, (0, n_pad - len(y))) for _, y in halves])
        return _task(np.stack([p for p, _ in padded]), np.stack([m for _, m in padded]), labels, k)

    fit, test = batch(fits), batch(tests)
    fit_sub = fit.replace(point_mask=jnp.asarray(np.stack(subset_masks)))
    chosen, (methods, params) = _methods(view, names)
    cells = []
    for label, base in chosen.items():
        start = time.perf_counter()
        if label in SKLEARN:
            scores = _sklearn_scores(SKLEARN[label], fits, tests, k, seed)
        else:
            task = fit_sub if label.endswith(f"_sub{SUBSET}") else fit
            estimate = scoring.fit_in_chunks(methods[base], params.get(base), jax.random.key(seed), task)
            scores = _scores(jax.block_until_ready(estimate), fit, test)
        seconds = time.perf_counter() - start
        cell = dict(
            dataset=name, view=view, dim=int(fit.points.shape[-1]), K=k, method=label, seconds=seconds
        )
        ok = np.isfinite(scores["ll_test"])
        cell["not_applicable"] = float(1.0 - ok.mean())
        for metric, values in scores.items():
            cell[metric] = dict(
                label_metrics.stat(values), std=float(np.nanstd(values)) if ok.any() else float("nan")
            )
            cell[metric]["values"] = [float(v) for v in values]
        cells.append(cell)
    attach_split_gains(cells)
    logging.warning("real data: %s (%s) done", name, view)
    return cells


GAINS = {scoring.MODEL_METHOD: "em_seeded", "tgmm+em": "em_seeded+em"}  # learned method -> its skeleton


def attach_split_gains(cells: list[dict]) -> None:
    """The learned gain of tgmm (tgmm+em) over em_seeded (em_seeded+em) on the same splits: the model's held-out
    accuracy minus the skeleton's (positive = the network helps), mean ± sem over splits, z."""
    by_method = {c["method"]: c for c in cells}
    for learned, reference in GAINS.items():
        if learned not in by_method or reference not in by_method:
            continue
        diff = np.asarray(by_method[learned]["acc_test"]["values"]) - np.asarray(
            by_method[reference]["acc_test"]["values"]
        )
        diff = diff[np.isfinite(diff)]
        mean = float(diff.mean()) if diff.size else float("nan")
        sem = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
        z = mean / sem if sem > 0 else (0.0 if mean == 0 else float("nan"))
        by_method[learned]["learned_gain"] = dict(
            metric="acc_test (model minus reference)", reference=reference, mean=mean, sem=sem, z=z
        )


def plot(cells: list[dict], path: str) -> None:
    """Per (dataset, view): fitting-half accuracy (top) and held-out log-likelihood (bottom), one bar per method."""
    panels = list(dict.fromkeys((c["dataset"], c["view"]) for c in cells))
    fig = Figure(figsize=(3.2 * len(panels), 6.4))
    axes = fig.subplots(2, len(panels), squeeze=False)
    for j, (name, view) in enumerate(panels):
        mine = [c for c in cells if c["dataset"] == name and c["view"] == view]
        ys = np.arange(len(mine))
        for row, metric, xlabel in (
            (0, "acc_fit", "cluster accuracy (fit half)"),
            (1, "ll_test", "held-out log-lik / point"),
        ):
            ax = axes[row][j]
            colors = [
                f"C{0 if c['method'].startswith('tgmm') else 1 if c['method'].startswith('sklearn') else 2}"
                for c in mine
            ]
            ax.barh(
                ys, [c[metric]["mean"] for c in mine], xerr=[c[metric]["std"] for c in mine], color=colors
            )
            ax.set_yticks(ys, [c["method"] for c in mine], fontsize=6)
            ax.set_xlabel(xlabel, fontsize=8)
            if metric == "ll_test":
                _clip_outliers(ax, [c[metric]["mean"] for c in mine], ys)
        axes[0][j].set_title(f"{name} [{view}] (K = {mine[0]['K']}, D = {mine[0]['dim']})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _clip_outliers(ax, means, ys) -> None:
    """x range from the best mean down to 4x its distance to the median; bars beyond it are marked off scale
    (a diagonal-covariance fit on z-scored digit pixels reaches -1e5 and would hide every other bar)."""
    finite = np.asarray([m for m in means if np.isfinite(m)])
    if finite.size == 0:
        return
    best, median = finite.max(), np.median(finite)
    low = best - 4.0 * max(best - median, 1.0) - 5.0
    ax.set_xlim(low, best + 0.05 * (best - low))
    for y, m in zip(ys, means):
        if np.isfinite(m) and m < low:
            ax.text(low, y, f" off scale: {m:.3g}", va="center", fontsize=6, color="red")


def load_all(names, mnist_dir=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = {name: datasets.sklearn_dataset(name) for name in names}
    if mnist_dir:
        images, labels = datasets.load_mnist(mnist_dir, "test")
        for name, digits in datasets.MNIST_TASKS.items():
            data[name] = datasets.mnist_task(images, labels, digits)
    return data


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    data = load_all(FLAGS.datasets, FLAGS.mnist_dir)
    n_pad = -(-max((len(y) + 1) // 2 for _, y in data.values()) // 64) * 64  # one padded N: few compilations
    cells = []
    for name, (x, y) in data.items():
        for view in FLAGS.views:
            if view == "pca8" and x.shape[1] < PCA_DIM:
                continue  # iris (D = 4): nothing to project
            cells += run_dataset(name, x, y, view, FLAGS.splits, FLAGS.seed, n_pad, FLAGS.methods)
    payload = dict(
        datasets={
            name: dict(
                n=len(y), dim=int(x.shape[1]), K=int(y.max()) + 1, class_counts=np.bincount(y).tolist()
            )
            for name, (x, y) in data.items()
        },
        views=FLAGS.views,
        splits=FLAGS.splits,
        seed=FLAGS.seed,
        padded_n=n_pad,
        subset=SUBSET,
        training_variance=TRAINING_VARIANCE,
        refine_steps=REFINE_STEPS,
        device=jax.devices()[0].platform,
        shipped_cluster_checkpoint=study.shipped_checkpoint_text("cluster"),
        cells=cells,
    )
    os.makedirs(FLAGS.results, exist_ok=True)
    with open(os.path.join(FLAGS.results, "real_data.json"), "w") as f:
        json.dump(payload, f, indent=1)
    plot(cells, os.path.join(FLAGS.results, "real_data.png"))


if __name__ == "__main__":
    define_flags()
    app.run(main)
