"""One mixture core: E and M steps and the log-likelihood of padded Gaussian mixtures.

``steps``: per-point log-densities and responsibilities (the E-step), the sufficient statistics of a block of
points, and the M-step for the three covariance types ``COVARIANCE_TYPES``: ``"isotropic"`` (unit variance,
fixed: the paper's model), ``"spherical"`` (one variance per component) and ``"diag"`` (one per component and
dimension), as scikit-learn's ``GaussianMixture`` estimates them.
``fused``: the same E and M steps in fused matmul form on chunks of tasks with R fits each (the batched EM
loop of ``baselines``); ``seeding``: greedy k-means++ and random-point starts on such chunks (the baselines'
initialisations and the estimator's restarts).
``missing``: the same with missing coordinates (exact EM: marginal E-step, expected sufficient statistics).
"""

from tgmm_jax.mixture import missing
from tgmm_jax.mixture.steps import (
    COVARIANCE_TYPES,
    VARIANCE_REG,
    Statistics,
    em_step,
    log_likelihood,
    m_step,
    statistics,
    variance_step,
    variances_of,
)

__all__ = [
    "COVARIANCE_TYPES",
    "VARIANCE_REG",
    "Statistics",
    "em_step",
    "log_likelihood",
    "m_step",
    "missing",
    "statistics",
    "variance_step",
    "variances_of",
]
