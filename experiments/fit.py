"""Fits a Gaussian mixture to a file of points with the pretrained TGMM; prints the parameters as JSON.

    python -m experiments.fit --data=points.npy --n_components=3
    python -m experiments.fit --data=points.csv --n_components=auto --refine=em

``--data``: a .npy array [n_samples, n_features] or a comma-separated .csv (one row per sample, a header
row is skipped). The JSON goes to stdout; a short summary to stderr.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import app, flags

from tgmm_jax.estimator import TGMMEstimator

_DATA = flags.DEFINE_string("data", None, "Points file: .npy or .csv, [n_samples, n_features].")
_K = flags.DEFINE_string("n_components", "3", "K (in the checkpoint's trained set) or 'auto' (lowest BIC).")
_REFINE = flags.DEFINE_enum("refine", "none", ["none", "em"], "EM steps after the network's estimate.")
_EM_STEPS = flags.DEFINE_integer("em_steps", 5, "EM steps when --refine=em.")
_RESTARTS = flags.DEFINE_integer("n_restarts", 0, "Extra k-means++ EM runs when --refine=em.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "pretrained", "'pretrained', a shipped name, or a path.")
_STANDARDIZE = flags.DEFINE_bool("standardize", False, "Rescale the data to the training scale first.")
_SEED = flags.DEFINE_integer("seed", 0, "random_state (restarts).")
flags.mark_flags_as_required(["data"])


def load_points(path: str) -> np.ndarray:
    """A .npy array or a comma-separated .csv (an optional header row is skipped), as float64."""
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if path.endswith(".csv"):
        try:
            return np.loadtxt(path, delimiter=",", ndmin=2)
        except ValueError:
            return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)
    raise ValueError(f"--data must be a .npy or .csv file, got {path!r}")


def fit_file(path: str, n_components="3", **params) -> dict:
    """Fits the points in ``path``; returns the JSON-ready result (parameters, BIC, AIC, log-likelihood)."""
    X = load_points(path)
    k = n_components if n_components == "auto" else int(n_components)
    est = TGMMEstimator(k, **params).fit(X)
    return {
        "data": path,
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "checkpoint": str(est.checkpoint_name_),
        "n_components": est.n_components_,
        "weights": est.weights_.tolist(),
        "means": est.means_.tolist(),
        "covariance_type": est.covariance_type_,
        "covariances": est.covariances_.tolist(),
        "mean_log_likelihood": est.lower_bound_,
        "bic": float(est.bic(X)),
        "aic": float(est.aic(X)),
        "bic_by_k": {str(kk): v for kk, v in est.bic_by_k_.items()},
        "converged": est.converged_,
        "n_iter": est.n_iter_,
        "labels_count": np.bincount(est.predict(X), minlength=est.n_components_).tolist(),
    }


def summary(result: dict) -> str:
    head = (
        f"{result['n_samples']} points in d={result['n_features']}: K={result['n_components']} "
        f"({result['checkpoint']}), mean log-likelihood {result['mean_log_likelihood']:.4f}, "
        f"BIC {result['bic']:.1f}"
    )
    lines = [head]
    for k, (w, m, n) in enumerate(zip(result["weights"], result["means"], result["labels_count"])):
        mean = ", ".join(f"{x:.3f}" for x in m[:6]) + (", ..." if len(m) > 6 else "")
        lines.append(f"  component {k}: weight {w:.3f}, {n} points, mean [{mean}]")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        result = fit_file(
            _DATA.value,
            _K.value,
            checkpoint=_CHECKPOINT.value,
            refine=_REFINE.value,
            em_steps=_EM_STEPS.value,
            n_restarts=_RESTARTS.value,
            standardize=_STANDARDIZE.value,
            random_state=_SEED.value,
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print(json.dumps(result, indent=1))
    print(summary(result), file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
