"""Parameter-free EM steps from a given mixture estimate, batched: ``em_refine(points, mask, params, steps)``.

The step is the standard one of ``baselines.em`` (tested equal to ``baselines.em.fit_em_from``), computed by
the mixture core ``tgmm_jax.mixture``: E-step responsibilities under the current mixture, then weights = mean
responsibility, means = responsibility-weighted means, and, when the estimate has scales, diagonal
variances E[x^2] - mu^2 clipped at 0 plus ``VARIANCE_REG`` (the isotropic or "diag" M-step). A component with no mass keeps weight 0 and
moves to the task's centre, as in ``baselines``. Used to polish a network's estimate (``tgmm+em``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tgmm_jax import mixture
from tgmm_jax.gmm import MixtureParams

VARIANCE_REG = mixture.VARIANCE_REG  # as sklearn's reg_covar


def _centred(points_BxNxD: jax.Array, point_mask_BxN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(centre [B, D] of the real points, points minus it with padded points 0 [B, N, D])."""
    mask_BxN = point_mask_BxN.astype(bool)
    count_B = jnp.maximum(jnp.sum(mask_BxN, axis=-1), 1).astype(jnp.float32)
    centre_BxD = jnp.sum(jnp.where(mask_BxN[..., None], points_BxNxD, 0.0), axis=1) / count_B[:, None]
    return centre_BxD, jnp.where(mask_BxN[..., None], points_BxNxD - centre_BxD[:, None, :], 0.0)


def _shift_means(params: MixtureParams, shift_BxD: jax.Array) -> MixtureParams:
    means_BxKxD = jnp.where(params.component_mask[..., None], params.means + shift_BxD[:, None, :], 0.0)
    return params.replace(means=means_BxKxD)


def _centred_em_step(x_BxNxD: jax.Array, mask_BxN: jax.Array, params: MixtureParams) -> MixtureParams:
    """One EM iteration on centred points ``x`` (padded points 0) and a mixture in the same coordinates."""
    count_B = jnp.maximum(jnp.sum(mask_BxN, axis=-1), 1).astype(jnp.float32)
    covariance_type = "isotropic" if params.scales is None else "diag"
    stats = mixture.statistics(x_BxNxD, mask_BxN, params)
    return mixture.m_step(stats, count_B, params.component_mask, covariance_type)


def em_step(points_BxNxD: jax.Array, point_mask_BxN: jax.Array, params: MixtureParams) -> MixtureParams:
    """One EM iteration on every task of the batch (padded points and components never contribute)."""
    centre_BxD, x_BxNxD = _centred(points_BxNxD, point_mask_BxN)
    step = _centred_em_step(x_BxNxD, point_mask_BxN.astype(bool), _shift_means(params, -centre_BxD))
    return _shift_means(step, centre_BxD)


@functools.partial(jax.jit, static_argnames=("steps",))
def em_refine(
    points_BxNxD: jax.Array, point_mask_BxN: jax.Array, params: MixtureParams, steps: int
) -> MixtureParams:
    """``steps`` EM iterations from ``params`` (weights [B, K], means [B, K, D], scales or None)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    # centred once: the EM state lives in coordinates centred on each task's mean (as in baselines)
    centre_BxD, x_BxNxD = _centred(points_BxNxD, point_mask_BxN)
    mask_BxN = point_mask_BxN.astype(bool)
    centred = jax.lax.fori_loop(
        0, steps, lambda _, p: _centred_em_step(x_BxNxD, mask_BxN, p), _shift_means(params, -centre_BxD)
    )
    return _shift_means(centred, centre_BxD) if steps else params
