"""E and M steps of a padded Gaussian mixture for the isotropic, spherical and diagonal covariance types.

Arrays carry any leading batch dims ``...``: points [..., N, D] with a point mask [..., N] (True = real; padded
points never contribute) and ``gmm.MixtureParams`` (weights [..., K], means [..., K, D], scales [..., K, D]
standard deviations or None for unit variance, component_mask [..., K]). A spherical mixture stores its one
standard deviation per component in every dimension of ``scales``.

The E-step (``e_step``) takes the log-joint of ``gmm.log_joint`` (the package's one log-density kernel) to
responsibilities and the log-likelihood. The M-step is scikit-learn's (``GaussianMixture``, its
``covariance_type`` of the same name): weights = mean responsibility, means = responsibility-weighted means,
variances = responsibility-weighted squared deviations (per dimension for ``"diag"``, averaged over dimensions
for ``"spherical"``) plus ``VARIANCE_REG``. The statistics are sums (``statistics``), so a caller can add them
over blocks of points (``tgmm_jax.streaming``).
A component with no mass keeps weight 0 and moves to the origin: callers run the steps on centred points.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tgmm_jax import gmm
from tgmm_jax.gmm import MixtureParams

COVARIANCE_TYPES = ("isotropic", "spherical", "diag")
VARIANCE_REG = 1e-6  # added to every estimated variance (sklearn's reg_covar default)
_TINY = 1e-30
_HI = jax.lax.Precision.HIGHEST


@struct.dataclass
class Statistics:
    """Sums over the real points of a block: responsibility mass [..., K], sum_n r_nk x_n [..., K, D],
    sum_n r_nk x_n^2 [..., K, D] (per dimension), and sum_n log p(x_n) [...] under the mixture that gave r."""

    mass: jax.Array
    first: jax.Array
    second: jax.Array
    log_likelihood: jax.Array

    def __add__(self, other: Statistics) -> Statistics:
        return jax.tree.map(jnp.add, self, other)


def _check_type(covariance_type: str) -> None:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")


def e_step(log_joint_NxK: jax.Array, point_mask_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The E-step from log pi_k + log p(x_n | z = k) [..., N, K]: (responsibilities [..., N, K], zero outside
    ``point_mask_N``, and sum over the masked points of log p(x_n) [...]). Every E-step of the package but the
    fused chunk form (``fused``) is this one: ``statistics``, ``missing.statistics``, ``tgmm_jax.streaming``."""
    mask_N = point_mask_N.astype(bool)
    log_p_N = jax.nn.logsumexp(log_joint_NxK, axis=-1)
    resp_NxK = jnp.exp(log_joint_NxK - log_p_N[..., None]) * mask_N[..., None]
    return resp_NxK, jnp.sum(jnp.where(mask_N, log_p_N, 0.0), axis=-1)


def weighted_sums(resp_NxK: jax.Array, x_NxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum_n r_nk [..., K], sum_n r_nk x_n [..., K, D], sum_n r_nk x_n^2 [..., K, D])."""
    return (
        jnp.sum(resp_NxK, axis=-2),
        jnp.einsum("...nk,...nd->...kd", resp_NxK, x_NxD, precision=_HI),
        jnp.einsum("...nk,...nd->...kd", resp_NxK, x_NxD**2, precision=_HI),
    )


def statistics(points_NxD: jax.Array, point_mask_N: jax.Array, params: MixtureParams) -> Statistics:
    """The E-step on the real points and the sums an M-step needs (``Statistics``)."""
    mask_N = point_mask_N.astype(bool)
    x_NxD = jnp.where(mask_N[..., None], points_NxD, 0.0)
    resp_NxK, loglik = e_step(gmm.log_joint(x_NxD, params), mask_N)
    return Statistics(*weighted_sums(resp_NxK, x_NxD), log_likelihood=loglik)


def variances_of(sq_dev_KxD: jax.Array, covariance_type: str) -> jax.Array | None:
    """Per-dimension mean squared deviations [..., K, D] -> the variances of ``covariance_type`` (plus
    ``VARIANCE_REG``), broadcast to [..., K, D]; None for ``"isotropic"`` (unit variance)."""
    _check_type(covariance_type)
    if covariance_type == "isotropic":
        return None
    sq_dev_KxD = jnp.maximum(sq_dev_KxD, 0.0)  # E[x^2] - mu^2 can round slightly below zero
    if covariance_type == "spherical":
        sq_dev_KxD = jnp.broadcast_to(jnp.mean(sq_dev_KxD, axis=-1, keepdims=True), sq_dev_KxD.shape)
    return sq_dev_KxD + VARIANCE_REG


def _scales(variances_KxD, component_mask_K):
    if variances_KxD is None:
        return None
    return jnp.where(component_mask_K[..., None], jnp.sqrt(variances_KxD), 1.0)


def moments(mass_K, first_KxD, second_KxD, count, covariance_type: str):
    """The M-step of sums over real points, unmasked: (weights = mass / count [..., K], means [..., K, D],
    variances of ``covariance_type`` [..., K, D] or None for ``"isotropic"``). ``count`` (at least 1) has the
    batch dims of ``mass_K`` without K; ``second_KxD`` may be None for ``"isotropic"``. A component with no
    mass gets weight 0 and mean 0. Shared by ``m_step`` and the fused chunk form (``fused.m_step``)."""
    _check_type(covariance_type)
    inv_mass_KxD = (1.0 / jnp.maximum(mass_K, _TINY))[..., None]
    means_KxD = first_KxD * inv_mass_KxD
    variances = None
    if covariance_type != "isotropic":
        variances = variances_of(second_KxD * inv_mass_KxD - means_KxD**2, covariance_type)
    return mass_K / count[..., None], means_KxD, variances


def m_step(stats: Statistics, count, component_mask_K: jax.Array, covariance_type: str) -> MixtureParams:
    """The mixture maximising the expected log-likelihood of ``stats`` (over ``count`` real points: [...] or a
    scalar for every task)."""
    count = jnp.broadcast_to(jnp.maximum(jnp.asarray(count, stats.mass.dtype), 1), stats.mass.shape[:-1])
    weights_K, means_KxD, variances = moments(stats.mass, stats.first, stats.second, count, covariance_type)
    weights_K = jnp.where(component_mask_K, weights_K, 0.0)
    means_KxD = jnp.where(component_mask_K[..., None], means_KxD, 0.0)
    return MixtureParams(weights_K, means_KxD, _scales(variances, component_mask_K), component_mask_K)


def em_step(points_NxD, point_mask_N, params: MixtureParams, covariance_type: str) -> MixtureParams:
    """One EM iteration (E-step under ``params``, then ``m_step``)."""
    count = jnp.sum(point_mask_N.astype(bool), axis=-1).astype(points_NxD.dtype)
    return m_step(statistics(points_NxD, point_mask_N, params), count, params.component_mask, covariance_type)


def variance_step(points_NxD, point_mask_N, params: MixtureParams, covariance_type: str) -> MixtureParams:
    """The variances' M-step with the weights and means held: responsibilities under ``params``, then the
    weighted squared deviations from the given means. Used to give a means-only estimate its variances."""
    return held_means_variances(statistics(points_NxD, point_mask_N, params), params, covariance_type)


def held_means_variances(stats: Statistics, params: MixtureParams, covariance_type: str) -> MixtureParams:
    """``params`` with the variances of ``covariance_type`` that maximise the expected log-likelihood of
    ``stats`` around its own (held) means: sum_n r_nk (x_n - mu_k)^2 / mass_k from the sums of ``stats``."""
    inv_mass_KxD = (1.0 / jnp.maximum(stats.mass, _TINY))[..., None]
    mu_KxD = params.means
    sq_dev_KxD = (stats.second - 2.0 * mu_KxD * stats.first) * inv_mass_KxD + mu_KxD**2
    variances = variances_of(sq_dev_KxD, covariance_type)
    return params.replace(scales=_scales(variances, params.component_mask))


def log_likelihood(points_NxD, point_mask_N, params: MixtureParams) -> jax.Array:
    """Mean over the real points of log p(x_n | params): [...] (``gmm.mean_log_likelihood``)."""
    return gmm.mean_log_likelihood(points_NxD, point_mask_N.astype(bool), params)
