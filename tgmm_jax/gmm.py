"""Mixture math for diagonal Gaussian mixtures with padded components.

All functions take arrays with any number of leading batch dimensions ``...``:
``points [..., N, D]``, ``MixtureParams`` with ``weights [..., K]``, ``means [..., K, D]``,
``scales [..., K, D]`` (standard deviations; ``None`` means unit variance, the paper's isotropic
setting) and ``component_mask [..., K]`` (True = real component). Padded components never receive
probability mass; every reduction over components is a masked log-sum-exp.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

_LOG_2PI = math.log(2.0 * math.pi)


@struct.dataclass
class MixtureParams:
    """Parameters of a (batch of) diagonal Gaussian mixtures, padded to K_max components."""

    weights: jax.Array  # [..., K], sums to 1 over real components
    means: jax.Array  # [..., K, D]
    scales: jax.Array | None  # [..., K, D] standard deviations, or None for unit variance
    component_mask: jax.Array  # [..., K] bool

    @property
    def num_components(self) -> jax.Array:
        return jnp.sum(self.component_mask, axis=-1)


def component_log_density(
    points_NxD: jax.Array, params: MixtureParams, observed_NxD: jax.Array | None = None
) -> jax.Array:
    """log N(x_n; mu_k, diag(scale_k^2)) for every point and component: [..., N, K].

    ``observed_NxD`` (bool [..., N, D], True = observed; None: every coordinate) restricts each point's density
    to its observed coordinates (the marginal, exact for diagonal covariances): the missing ones may hold
    anything, even NaN, and a point with none observed gets 0 (density 1). This is the one Gaussian log-density
    kernel of the package; ``mixture.missing`` and the E-step of ``mixture.steps`` build on it.

    Points and means are centred on the mixture's mean first (the density is translation invariant),
    so the expanded quadratic form keeps its precision for mixtures far from the origin; the centre
    depends on the parameters only, so padded points cannot change the values of real ones.
    """
    real_w_K = jnp.where(params.component_mask, params.weights, 0.0)
    real_w_K = real_w_K / jnp.maximum(jnp.sum(real_w_K, axis=-1, keepdims=True), 1e-30)
    masked_mu_KxD = jnp.where(params.component_mask[..., None], params.means, 0.0)
    hi = jax.lax.Precision.HIGHEST
    centre_D = jax.lax.stop_gradient(jnp.einsum("...k,...kd->...d", real_w_K, masked_mu_KxD, precision=hi))
    mu_KxD = params.means - centre_D[..., None, :]
    if observed_NxD is not None:
        return _observed_log_density(points_NxD - centre_D[..., None, :], mu_KxD, params.scales, observed_NxD)
    x_NxD = points_NxD - centre_D[..., None, :]
    dim = points_NxD.shape[-1]
    if params.scales is None:
        sq_NxK = (
            jnp.sum(x_NxD**2, axis=-1)[..., :, None]
            - 2.0 * jnp.einsum("...nd,...kd->...nk", x_NxD, mu_KxD, precision=hi)
            + jnp.sum(mu_KxD**2, axis=-1)[..., None, :]
        )
        log_det_K = jnp.zeros(params.means.shape[:-1], points_NxD.dtype)
    else:
        inv_var_KxD = 1.0 / jnp.square(params.scales)
        sq_NxK = (
            jnp.einsum("...nd,...kd->...nk", x_NxD**2, inv_var_KxD, precision=hi)
            - 2.0 * jnp.einsum("...nd,...kd->...nk", x_NxD, mu_KxD * inv_var_KxD, precision=hi)
            + jnp.sum(mu_KxD**2 * inv_var_KxD, axis=-1)[..., None, :]
        )
        log_det_K = 2.0 * jnp.sum(jnp.log(params.scales), axis=-1)
    sq_NxK = jnp.maximum(sq_NxK, 0.0)  # the expansion can round slightly below zero
    return -0.5 * (sq_NxK + dim * _LOG_2PI + log_det_K[..., None, :])


def _observed_log_density(x_NxD, mu_KxD, scales_KxD, observed_NxD) -> jax.Array:
    """``component_log_density`` over the observed coordinates of centred points and means: the sums over
    dimensions become products with the observed mask, so each point sums its own |O_n| terms."""
    hi = jax.lax.Precision.HIGHEST
    obs_NxD = observed_NxD.astype(bool)
    o_NxD = obs_NxD.astype(mu_KxD.dtype)
    x_NxD = jnp.where(obs_NxD, x_NxD, 0.0)
    num_obs_Nx1 = jnp.sum(o_NxD, axis=-1, keepdims=True)
    if scales_KxD is None:
        # unit variance: no matmul with a constant operand (ones), which XLA:CPU's YNNPACK fusion miscompiles
        # (jaxlib 0.10.2; see tgmm_jax.estimator._unit_as_none)
        sq_NxK = (
            jnp.sum(x_NxD**2, axis=-1)[..., :, None]
            - 2.0 * jnp.einsum("...nd,...kd->...nk", x_NxD, mu_KxD, precision=hi)
            + jnp.einsum("...nd,...kd->...nk", o_NxD, mu_KxD**2, precision=hi)
        )
        return -0.5 * (jnp.maximum(sq_NxK, 0.0) + num_obs_Nx1 * _LOG_2PI)
    inv_var_KxD = 1.0 / jnp.square(scales_KxD)
    sq_NxK = (
        jnp.einsum("...nd,...kd->...nk", x_NxD**2, inv_var_KxD, precision=hi)
        - 2.0 * jnp.einsum("...nd,...kd->...nk", x_NxD, mu_KxD * inv_var_KxD, precision=hi)
        + jnp.einsum("...nd,...kd->...nk", o_NxD, mu_KxD**2 * inv_var_KxD, precision=hi)
    )
    sq_NxK = jnp.maximum(sq_NxK, 0.0)  # the expansion can round slightly below zero
    log_det_NxK = -jnp.einsum("...nd,...kd->...nk", o_NxD, jnp.log(inv_var_KxD), precision=hi)
    return -0.5 * (sq_NxK + log_det_NxK + num_obs_Nx1 * _LOG_2PI)


def log_weights(params: MixtureParams) -> jax.Array:
    """log pi_k with -inf on padded components: [..., K]."""
    safe = jnp.where(params.component_mask, params.weights, 1.0)
    return jnp.where(params.component_mask, jnp.log(safe), -jnp.inf)


def log_joint(
    points_NxD: jax.Array, params: MixtureParams, observed_NxD: jax.Array | None = None
) -> jax.Array:
    """log pi_k + log N(x_n; mu_k, Sigma_k): [..., N, K], -inf on padded components (over the observed
    coordinates only where ``observed_NxD`` is given, as ``component_log_density``)."""
    return log_weights(params)[..., None, :] + component_log_density(points_NxD, params, observed_NxD)


def point_log_density(points_NxD: jax.Array, params: MixtureParams) -> jax.Array:
    """log p(x_n | params) = logsumexp_k log_joint: [..., N]."""
    return jax.nn.logsumexp(log_joint(points_NxD, params), axis=-1)


def responsibilities(points_NxD: jax.Array, params: MixtureParams) -> jax.Array:
    """Posterior p(z_n = k | x_n): [..., N, K], exactly 0 on padded components."""
    return jax.nn.softmax(log_joint(points_NxD, params), axis=-1)


def mean_log_likelihood(points_NxD: jax.Array, point_mask_N: jax.Array, params: MixtureParams) -> jax.Array:
    """Average over real points of log p(x_n | params): [...].

    This is the correct mixture log-likelihood (log-sum-exp over components, mean over points), not the
    official code's log-sum-exp over points (docs/official_differences.md §7).
    """
    log_p_N = point_log_density(points_NxD, params)
    log_p_N = jnp.where(point_mask_N, log_p_N, 0.0)
    return jnp.sum(log_p_N, axis=-1) / jnp.maximum(jnp.sum(point_mask_N, axis=-1), 1)


def sample_points(key: jax.Array, params: MixtureParams, num_points: int) -> tuple[jax.Array, jax.Array]:
    """Draws ``num_points`` points from one mixture (no batch dims): (points [N, D], labels [N])."""
    if params.means.ndim != 2:
        raise ValueError(f"sample_points expects one mixture (means [K, D]); got means {params.means.shape}")
    label_key, noise_key = jax.random.split(key)
    labels_N = jax.random.categorical(label_key, log_weights(params), shape=(num_points,))
    noise_NxD = jax.random.normal(noise_key, (num_points, params.means.shape[-1]), params.means.dtype)
    scales_KxD = jnp.ones_like(params.means) if params.scales is None else params.scales
    points_NxD = params.means[labels_N] + scales_KxD[labels_N] * noise_NxD
    return points_NxD, labels_N.astype(jnp.int32)
