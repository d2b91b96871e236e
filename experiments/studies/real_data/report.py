"""The REPORT section of the real-data study (``experiments/studies/real_data/run.py``), from its saved JSON."""

from __future__ import annotations

import os

import numpy as np

from experiments.reporting import format_gain
from experiments.studies.base import Part, load_json

CLAIM = (
    "Rebuttal to Reviewer TJ7f, Q2 (OpenReview): TGMM models meta-trained on synthetic mixtures cluster the"
    " MNIST test split (784-dim flattened pixels; 0-vs-1 and digits 0-4) in an unsupervised fashion and"
    ' "reasonably generalize to real-world datasets"; its table (EM, spectral, TGMM) is not in the text we'
    " have, nor what projection or scaling was used. The reviewer asked for held-out (predictive)"
    " log-likelihood as well, which the rebuttal did not report."
)


def _fmt(stat, digits=3):
    if stat is None or not np.isfinite(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _best(cells, metric):
    finite = [c for c in cells if np.isfinite(c[metric]["mean"])]
    return max(finite, key=lambda c: c[metric]["mean"]) if finite else None


def real_data_section(saved: dict, figure: str) -> list[str]:
    cells = saved["cells"]
    out = [
        "## Real data: scikit-learn's bundled digits, iris and wine (rebuttal Q2)",
        f"![accuracy and held-out log-likelihood]({figure})",
        "",
        f"**The paper's claim.** {CLAIM}",
        "",
        (
            "**What we ran** (`python -m experiments.studies.real_data.run`; no downloads, so scikit-learn's 8x8 `load_digits`"
            " stands in for MNIST): "
            + ", ".join(
                f"{name} (N = {d['n']}, D = {d['dim']}, K = {d['K']})"
                for name, d in saved["datasets"].items()
            )
            + f". {saved['splits']} random half splits: every method fits one half and is scored on both."
            " Preprocessing, fitted on the fitting half only: `std` = z-score each feature at the data's own D;"
            " `pca8` = z-score, then the top 8 principal axes (the paper-architecture model's d); then one global"
            f" factor so the mean per-feature variance is {saved['training_variance']} (the training tasks' spread,"
            " the first step of `TGMMEstimator(standardize=True)`), because every model and EM baseline here assumes unit"
            " component variance. Log-likelihoods are per point, in nats, in those coordinates: comparable within"
            " a dataset and view, not across views. Methods: `tgmm` = the shipped dimension-free `cluster` model,"
            f" `tgmm+em` = + {saved['refine_steps']} EM steps, `em_seeded` / `em_seeded+em` = the model's"
            " parameter-free skeleton (its seedings and EM steps, no learned term) without / with the same EM steps,"
            " the reference of the learned gain, `tgmm_paper` = the shipped `paper_d8` (pca8 only),"
            " `em` (official init), `em_kmeanspp`, `spectral` (all unit variance, the paper's setting), and"
            " scikit-learn's `GaussianMixture` (spherical / diagonal covariances, fitted variances, 3 k-means"
            " restarts) as an independent reference."
        ),
        "",
        (
            f"**Sample size.** The models were trained on N ≤ 128; the fitting halves hold"
            f" {min(d['n'] // 2 for d in saved['datasets'].values())} to"
            f" {max(d['n'] // 2 for d in saved['datasets'].values())} points. We give the models every point"
            f" (padded tasks with a point mask) and, as `*_sub{saved['subset']}`, only a random"
            f" {saved['subset']}-point subset of the fitting half; either estimate is scored on all points."
        ),
        "",
        (
            "Accuracy: MAP labels against the true classes under the best label permutation; mean ± standard"
            " deviation over the splits."
        ),
        "",
    ]
    for name in saved["datasets"]:
        mine = [c for c in cells if c["dataset"] == name]
        if not mine:
            continue
        out += [
            f"### {name}",
            "",
            (
                "| method | view | accuracy (fit half) | accuracy (held-out half) | held-out log-lik / point |"
                " learned gain (held-out accuracy minus the skeleton's, same splits) |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for c in mine:
            na = f" [{c['not_applicable']:.0%} n/a]" if c["not_applicable"] > 0 else ""
            gain = c.get("learned_gain")
            gain_text = f"{format_gain(gain)} vs {gain['reference']}" if gain else ""
            out.append(
                f"| {c['method']} | {c['view']} | {_fmt(c['acc_fit'])}{na} | {_fmt(c['acc_test'])} |"
                f" {_fmt(c['ll_test'], 2)} | {gain_text} |"
            )
        summary = []
        for view in dict.fromkeys(c["view"] for c in mine):
            in_view = [c for c in mine if c["view"] == view]
            best_acc, best_ll = _best(in_view, "acc_fit"), _best(in_view, "ll_test")
            ours = [c for c in in_view if c["method"].startswith("tgmm")]
            best_ours = _best(ours, "acc_fit")
            if best_acc and best_ll and best_ours:
                summary.append(
                    f"{view}: highest accuracy {best_acc['method']} ({best_acc['acc_fit']['mean']:.3f}), best TGMM row"
                    f" {best_ours['method']} ({best_ours['acc_fit']['mean']:.3f}); highest held-out log-likelihood"
                    f" {best_ll['method']} ({best_ll['ll_test']['mean']:.2f})"
                )
        out += ["", "; ".join(summary) + ".", ""]
    out += _subset_effect(cells, saved["subset"])
    if any(name.startswith("digits") for name in saved["datasets"]):
        out += [
            (
                "**Held-out log-likelihood on digits, `std` view.** z-scoring divides pixels that are almost always"
                " blank in the fitting half by a tiny standard deviation, so a held-out image with ink there lands"
                " far out (checked on one random digits 0-4 split: held-out coordinates up to 317 against 56 in the"
                " fitting half). That costs every unit-variance fit hundreds of nats per point and the diagonal"
                " scikit-learn fit, whose variances for those pixels are tiny, far more (its off-scale bars). The"
                " `pca8` view has no such coordinates; compare methods within a view."
            ),
            "",
        ]
    if not any(name.startswith("mnist") for name in saved["datasets"]):
        out += [
            (
                "**MNIST.** Not run: the study needs the MNIST IDX files, and nothing downloads."
                " `experiments/datasets.py` reads the IDX files (`load_mnist(directory, 'test')`, plain or gzipped, magic number, shape and size"
                " checked) and `mnist_task` builds the rebuttal's 0-vs-1 and 0-4 tasks (784 pixels in [0, 1]);"
                " `python -m experiments.studies.real_data.run --mnist_dir=DIR` adds both to this study. The loader lives in"
                " `experiments/`, not the library: reading a file format and picking digit classes are the study's"
                " inputs, not the estimator's; a user hands the array to `TGMMEstimator.fit`."
            ),
            "",
        ]
    if "shipped_cluster_checkpoint" in saved:
        out += [f"Checkpoint: {saved['shipped_cluster_checkpoint']}.", ""]
    return out


def _subset_effect(cells, subset: int) -> list[str]:
    """How much the fitting-half accuracy changes when the models see only ``subset`` points instead of all."""
    rows = []
    for c in cells:
        if not c["method"].endswith(f"_sub{subset}"):
            continue
        full = next(
            (
                f
                for f in cells
                if f["dataset"] == c["dataset"]
                and f["view"] == c["view"]
                and f["method"] == c["method"][: -len(f"_sub{subset}")]
            ),
            None,
        )
        if full:
            rows.append(
                f"| {c['dataset']} | {c['view']} | {full['method']} | {full['acc_fit']['mean']:.3f} |"
                f" {c['acc_fit']['mean']:.3f} | {full['ll_test']['mean']:.2f} | {c['ll_test']['mean']:.2f} |"
            )
    if not rows:
        return []
    return [
        f"### All points or a {subset}-point subset (the models' training N)",
        "",
        (
            f"| dataset | view | model | accuracy, all N | accuracy, {subset} points | held-out LL, all N |"
            f" held-out LL, {subset} points |"
        ),
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def build(results: str, scale: str):
    saved = load_json(os.path.join(results, "real_data.json"))  # an evaluation-only study of shipped models
    return Part(sections=real_data_section(saved, "real_data.png")) if saved and scale == "cpu" else None
