"""One mixture core: E and M steps and the log-likelihood of padded Gaussian mixtures.

``steps``: the E-step (``e_step``: responsibilities and log-likelihood from the log-joint of
``gmm.log_joint``, the one Gaussian log-density kernel), the sufficient statistics of a block of points, and
the M-step for the three covariance types ``COVARIANCE_TYPES``: ``"isotropic"`` (unit variance, fixed: the
paper's model), ``"spherical"`` (one variance per component) and ``"diag"`` (one per component and
dimension), as scikit-learn's ``GaussianMixture`` estimates them.
``missing``: the same with missing coordinates (exact EM: the kernel's marginal over the observed coordinates,
``steps.e_step``, expected sufficient statistics, ``steps.m_step``). ``tgmm_jax.streaming`` accumulates
``steps.e_step`` over blocks of points.
``fused``: the E-step in a second arithmetic form, for speed on chunks of tasks with R fits each (the batched
EM loop of ``baselines``; its docstring says why it is a second form); its M-step is ``steps.moments``.
``seeding``: greedy k-means++ and random-point starts on such chunks (the baselines' initialisations and the
estimator's restarts).
"""

from tgmm_jax.mixture import missing
from tgmm_jax.mixture.steps import (
    COVARIANCE_TYPES,
    VARIANCE_REG,
    Statistics,
    e_step,
    em_step,
    held_means_variances,
    log_likelihood,
    m_step,
    statistics,
    variance_step,
    variances_of,
    weighted_sums,
)

__all__ = [
    "COVARIANCE_TYPES",
    "VARIANCE_REG",
    "Statistics",
    "e_step",
    "em_step",
    "held_means_variances",
    "log_likelihood",
    "m_step",
    "missing",
    "statistics",
    "variance_step",
    "variances_of",
    "weighted_sums",
]
