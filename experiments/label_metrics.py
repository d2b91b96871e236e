"""Clustering scores of fitted mixtures against true labels, for the phase-transition and real-data studies.

Unlike ``tgmm_jax.metrics.evaluate_estimates`` (which matches estimated components to true ones by their
means), these need no true parameters: the estimate's MAP labels are matched to the true classes by the
label permutation that maximises agreement (Hungarian assignment on the confusion matrix), as one scores a
clustering of real data whose class means are not the mixture's parameters.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from tgmm_jax import gmm


def map_labels(points_BxNxD, estimate) -> np.ndarray:
    """argmax_k log pi_k + log N(x_n; mu_k, Sigma_k) under each task's estimate: [B, N] int."""
    return np.asarray(np.argmax(gmm.log_joint(points_BxNxD, estimate), axis=-1))


def best_permutation_accuracy(true_BxN, pred_BxN, mask_BxN=None) -> np.ndarray:
    """Per task, the fraction of (real) points whose predicted label equals the true one under the best
    one-to-one relabelling of the predictions: [B] float64."""
    true_BxN, pred_BxN = np.asarray(true_BxN), np.asarray(pred_BxN)
    if true_BxN.shape != pred_BxN.shape or true_BxN.ndim != 2:
        raise ValueError(f"labels must both be [B, N]; got {true_BxN.shape} and {pred_BxN.shape}")
    mask_BxN = np.ones(true_BxN.shape, bool) if mask_BxN is None else np.asarray(mask_BxN, bool)
    size = int(max(true_BxN.max(), pred_BxN.max())) + 1
    out = np.empty(true_BxN.shape[0])
    for b, (t, p, m) in enumerate(zip(true_BxN, pred_BxN, mask_BxN)):
        confusion = np.zeros((size, size))
        np.add.at(confusion, (p[m], t[m]), 1.0)
        rows, cols = linear_sum_assignment(-confusion)
        out[b] = confusion[rows, cols].sum() / max(m.sum(), 1)
    return out


def stat(values) -> dict:
    """{'mean', 'sem', 'median'} of finite ``values`` (NaN where none), the form ``reporting.format_stat`` reads."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": float("nan"), "sem": float("nan"), "median": float("nan")}
    sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
    return {"mean": float(values.mean()), "sem": float(sem), "median": float(np.median(values))}
