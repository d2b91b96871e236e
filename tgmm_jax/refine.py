"""Parameter-free EM steps from a given mixture estimate, batched: ``em_refine(points, mask, params, steps)``.

The step is the standard one of ``baselines.em`` (tested equal to ``baselines.em.fit_em_from``):
E-step responsibilities under the current mixture (``gmm.responsibilities``), then weights = mean
responsibility, means = responsibility-weighted means, and, when the estimate has scales, diagonal
variances E[x^2] - mu^2 clipped at 0 plus ``VARIANCE_REG``. A component with no mass keeps weight 0 and
moves to the task's centre, as in ``baselines``. Used to polish a network's estimate (``tgmm+em``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tgmm_jax import gmm
from tgmm_jax.gmm import MixtureParams

VARIANCE_REG = 1e-6  # as sklearn's reg_covar and baselines.mixture_steps
_TINY = 1e-30


def em_step(points_BxNxD: jax.Array, point_mask_BxN: jax.Array, params: MixtureParams) -> MixtureParams:
    """One EM iteration on every task of the batch (padded points and components never contribute)."""
    mask_BxN = point_mask_BxN.astype(bool)
    count_B = jnp.maximum(jnp.sum(mask_BxN, axis=-1), 1).astype(jnp.float32)
    centre_BxD = jnp.sum(points_BxNxD, axis=1) / count_B[:, None]
    x_BxNxD = jnp.where(mask_BxN[..., None], points_BxNxD - centre_BxD[:, None, :], 0.0)
    centred = MixtureParams(
        params.weights, params.means - centre_BxD[:, None, :], params.scales, params.component_mask
    )
    resp_BxNxK = gmm.responsibilities(x_BxNxD, centred) * mask_BxN[..., None]
    mass_BxK = jnp.sum(resp_BxNxK, axis=1)
    inv_mass_BxK = 1.0 / jnp.maximum(mass_BxK, _TINY)
    hi = jax.lax.Precision.HIGHEST
    means_BxKxD = jnp.einsum("bnk,bnd->bkd", resp_BxNxK, x_BxNxD, precision=hi) * inv_mass_BxK[..., None]
    scales = None
    if params.scales is not None:
        second_BxKxD = (
            jnp.einsum("bnk,bnd->bkd", resp_BxNxK, x_BxNxD**2, precision=hi) * inv_mass_BxK[..., None]
        )
        variances_BxKxD = jnp.maximum(second_BxKxD - means_BxKxD**2, 0.0) + VARIANCE_REG
        scales = jnp.where(params.component_mask[..., None], jnp.sqrt(variances_BxKxD), 1.0)
    mask_BxK = params.component_mask
    weights_BxK = jnp.where(mask_BxK, mass_BxK / count_B[:, None], 0.0)
    means_BxKxD = jnp.where(mask_BxK[..., None], means_BxKxD + centre_BxD[:, None, :], 0.0)
    return MixtureParams(weights_BxK, means_BxKxD, scales, mask_BxK)


@functools.partial(jax.jit, static_argnames=("steps",))
def em_refine(
    points_BxNxD: jax.Array, point_mask_BxN: jax.Array, params: MixtureParams, steps: int
) -> MixtureParams:
    """``steps`` EM iterations from ``params`` (weights [B, K], means [B, K, D], scales or None)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    points_BxNxD = jnp.where(point_mask_BxN[..., None], points_BxNxD, 0.0)
    return jax.lax.fori_loop(0, steps, lambda _, p: em_step(points_BxNxD, point_mask_BxN, p), params)
