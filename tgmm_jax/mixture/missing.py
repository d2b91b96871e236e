"""Exact EM for padded Gaussian mixtures with missing coordinates (isotropic, spherical and diagonal types).

Arrays follow ``steps``: points [..., N, D] with a point mask [..., N] and ``gmm.MixtureParams``; in addition
each coordinate is observed or missing. Missing coordinates are NaN in ``points`` (the default), or are given
by ``observed`` [..., N, D] (True = observed), in which case a missing coordinate may hold anything. Missing
at random is assumed: the mechanism is ignorable and EM maximises the likelihood of the observed coordinates.

**E-step.** With diagonal covariances the observed coordinates O_n of x_n are, given z_n = k, independent
Gaussians, so the marginal is exact and only the observed coordinates enter:
    log p(x_{n,O} | z = k) = -1/2 sum_{j in O_n} [(x_nj - mu_kj)^2 / v_kj + log v_kj + log 2 pi]
(|O_n| terms of log 2 pi): ``gmm.component_log_density`` with the observed mask. r_nk = p(z_n = k | x_{n,O})
and log p(x_{n,O}) follow by a log-sum-exp over k (``steps.e_step``).

**M-step** (expected sufficient statistics). Given z = k the missing coordinates have the conditional law of
their component, so under the current (mu, v): E[x_nj | x_{n,O}, z = k] = mu_kj and
E[x_nj^2 | x_{n,O}, z = k] = mu_kj^2 + v_kj for j missing (x_nj and x_nj^2 where observed). The expected
complete-data log-likelihood sum_n sum_k r_nk E[log pi_k N(x_n; mu'_k, v'_k)] is the complete-data one with x
and x^2 replaced by these, so its maximiser is the complete-data M-step (``steps.m_step``) applied to
    mass_k = sum_n r_nk,  first_kj = sum_n r_nk E[x_nj],  second_kj = sum_n r_nk E[x_nj^2]:
  * means:     mu'_kj = first_kj / mass_k;
  * diagonal:  v'_kj = second_kj / mass_k - mu'_kj^2
             = 1/mass_k sum_n r_nk [o_nj (x_nj - mu'_kj)^2 + (1 - o_nj)(v_kj + (mu_kj - mu'_kj)^2)];
  * spherical: maximising -1/2 sum_n r_nk [D log s + E||x_n - mu'_k||^2 / s] over s gives
               s'_k = 1/(D mass_k) sum_n r_nk E||x_n - mu'_k||^2 = mean_j (second_kj / mass_k - mu'_kj^2):
    every one of the D coordinates of every point counts, an observed one with (x_nj - mu'_kj)^2 and a
    missing one with v_k + (mu_kj - mu'_kj)^2 (just v_k at a fixed point, where mu' = mu).
Each estimated variance gets ``VARIANCE_REG`` as in ``steps``; the v_kj of the missing terms already holds the
previous step's, so a fixed point carries VARIANCE_REG / (1 - missing fraction) instead (negligible).
Weights are mass_k / count as without missing values. Each EM step cannot decrease the observed-data
log-likelihood (``log_likelihood``).

**Points with no observed coordinate** carry no information: their likelihood is sum_k pi_k = 1 whatever the
parameters. ``responsibilities`` gives them the prior weights (their exact posterior), but ``statistics``
leaves them out like padded points (nor are they counted in ``count`` or in the mean log-likelihood), so
they never move the weights, means or variances. Keeping them in the M-step would be a valid EM too, with
the same fixed points, only damped (each would pull every mean towards its current value).

Everything is a pure function of arrays, jit-able and vmap-able; the points should be roughly centred
(as for ``steps``: the variances come from E[x^2] - mu^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tgmm_jax import gmm
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.mixture.steps import (
    Statistics,
    _check_type,
    e_step,
    held_means_variances,
    m_step,
    weighted_sums,
)

_HI = jax.lax.Precision.HIGHEST


def observed_of(points_NxD: jax.Array, observed_NxD: jax.Array | None = None) -> jax.Array:
    """The observed mask [..., N, D] (bool): ``observed_NxD`` when given, else where ``points_NxD`` is not NaN."""
    if observed_NxD is None:
        return ~jnp.isnan(points_NxD)
    if observed_NxD.shape != points_NxD.shape:
        raise ValueError(f"observed mask {observed_NxD.shape} does not match points {points_NxD.shape}")
    return observed_NxD.astype(bool)


def informative_points(point_mask_N: jax.Array, observed_NxD: jax.Array) -> jax.Array:
    """Real points with at least one observed coordinate: [..., N] bool."""
    return point_mask_N.astype(bool) & jnp.any(observed_NxD, axis=-1)


def _variances(params: MixtureParams) -> jax.Array:
    if params.scales is None:
        return jnp.ones_like(params.means)
    return jnp.square(params.scales)


def component_log_density(
    points_NxD: jax.Array, params: MixtureParams, observed_NxD: jax.Array | None = None
) -> jax.Array:
    """log N(x_{n,O}; mu_{k,O}, diag v_{k,O}) over each point's observed coordinates only: [..., N, K]
    (``gmm.component_log_density`` with the observed mask). A point with no observed coordinate gets 0."""
    return gmm.component_log_density(points_NxD, params, observed_of(points_NxD, observed_NxD))


def log_joint(
    points_NxD: jax.Array, params: MixtureParams, observed_NxD: jax.Array | None = None
) -> jax.Array:
    """log pi_k + log p(x_{n,O} | z = k): [..., N, K], -inf on padded components."""
    return gmm.log_joint(points_NxD, params, observed_of(points_NxD, observed_NxD))


def responsibilities(
    points_NxD: jax.Array, params: MixtureParams, observed_NxD: jax.Array | None = None
) -> jax.Array:
    """p(z_n = k | x_{n,O}): [..., N, K]; the prior weights for a point with no observed coordinate."""
    return jax.nn.softmax(log_joint(points_NxD, params, observed_NxD), axis=-1)


def statistics(
    points_NxD: jax.Array,
    point_mask_N: jax.Array,
    params: MixtureParams,
    observed_NxD: jax.Array | None = None,
) -> Statistics:
    """The E-step and the expected sufficient statistics (``steps.Statistics``) over the informative points:
    mass_k = sum r_nk, first = sum r_nk E[x_n], second = sum r_nk E[x_n^2] (per dimension; a missing coordinate
    contributes mu_kj and mu_kj^2 + v_kj), and log_likelihood = sum_n log p(x_{n,O})."""
    obs_NxD = observed_of(points_NxD, observed_NxD)
    keep_N = informative_points(point_mask_N, obs_NxD)
    obs_NxD = obs_NxD & keep_N[..., None]
    resp_NxK, loglik = e_step(log_joint(points_NxD, params, obs_NxD), keep_N)
    mass_K, first_KxD, second_KxD = weighted_sums(resp_NxK, jnp.where(obs_NxD, points_NxD, 0.0))
    miss_NxD = (keep_N[..., None] & ~obs_NxD).astype(params.means.dtype)
    mu_KxD = params.means
    resp_miss_KxD = jnp.einsum("...nk,...nd->...kd", resp_NxK, miss_NxD, precision=_HI)
    return Statistics(
        mass=mass_K,
        first=first_KxD + resp_miss_KxD * mu_KxD,
        second=second_KxD + resp_miss_KxD * (mu_KxD**2 + _variances(params)),
        log_likelihood=loglik,
    )


def count(point_mask_N: jax.Array, observed_NxD: jax.Array, dtype=jnp.float32) -> jax.Array:
    """The number of informative points (real, at least one coordinate observed): [...]."""
    return jnp.sum(informative_points(point_mask_N, observed_NxD), axis=-1).astype(dtype)


def em_step(
    points_NxD: jax.Array,
    point_mask_N: jax.Array,
    params: MixtureParams,
    covariance_type: str,
    observed_NxD: jax.Array | None = None,
) -> MixtureParams:
    """One exact EM iteration with missing coordinates: ``statistics`` under ``params``, then ``steps.m_step``."""
    _check_type(covariance_type)
    obs_NxD = observed_of(points_NxD, observed_NxD)
    stats = statistics(points_NxD, point_mask_N, params, obs_NxD)
    num = count(point_mask_N, obs_NxD, params.means.dtype)
    return m_step(stats, num, params.component_mask, covariance_type)


def variance_step(
    points_NxD: jax.Array,
    point_mask_N: jax.Array,
    params: MixtureParams,
    covariance_type: str,
    observed_NxD: jax.Array | None = None,
) -> MixtureParams:
    """``steps.variance_step`` with missing coordinates: the expected sufficient statistics under ``params`` (a
    missing coordinate contributes mu and mu^2 + v), then the squared deviations from the held means."""
    stats = statistics(points_NxD, point_mask_N, params, observed_NxD)
    return held_means_variances(stats, params, covariance_type)


def log_likelihood(
    points_NxD: jax.Array,
    point_mask_N: jax.Array,
    params: MixtureParams,
    observed_NxD: jax.Array | None = None,
) -> jax.Array:
    """Mean over the informative points of the observed-data log-likelihood log p(x_{n,O} | params): [...]."""
    obs_NxD = observed_of(points_NxD, observed_NxD)
    stats = statistics(points_NxD, point_mask_N, params, obs_NxD)
    return stats.log_likelihood / jnp.maximum(count(point_mask_N, obs_NxD, stats.mass.dtype), 1.0)


def mean_impute(
    points_NxD: jax.Array, point_mask_N: jax.Array, observed_NxD: jax.Array | None = None
) -> jax.Array:
    """Each missing coordinate replaced by the mean of that dimension's observed values over the real points
    (0 where a dimension has none): [..., N, D], no NaN left on real points."""
    obs_NxD = observed_of(points_NxD, observed_NxD) & point_mask_N.astype(bool)[..., None]
    x_NxD = jnp.where(obs_NxD, points_NxD, 0.0)
    n_D = jnp.sum(obs_NxD, axis=-2).astype(x_NxD.dtype)
    mean_D = jnp.sum(x_NxD, axis=-2) / jnp.maximum(n_D, 1.0)
    return jnp.where(obs_NxD, points_NxD, mean_D[..., None, :])
