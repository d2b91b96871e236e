"""Dimension-free read-in geometry: each task centred, projected on its top principal directions, rescaled.

``normalize_tasks(points, point_mask, rank)`` returns, per task,
  centre_BxD      the mean of the real points,
  basis_BxDxR     the top-``rank`` eigenvectors of the real points' covariance (zero columns when D < rank),
                  each signed so that the third moment of the data along it is >= 0,
  scale_B         the square root of the top eigenvalue (floored),
  coords_BxNxR    (x - centre) @ basis / scale, 0 on padded points,
  features_BxF    [log scale, eigenvalues / scale^2 (rank values), log N]: what the coordinates lost.

The centred means of K components span at most K - 1 directions, so any ``rank >= K_max - 1`` keeps the
signal. The coordinates are exactly invariant to translations of the task and (for distinct eigenvalues,
with the data-derived sign) to orthogonal rotations, and do not depend on D beyond the spectrum: one set of
parameters reads tasks of every dimension. Nothing here has parameters or gradients (the input is data).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

_MIN_SCALE = 1e-6


@struct.dataclass
class NormalizedTasks:
    centre_BxD: jax.Array
    basis_BxDxR: jax.Array
    scale_B: jax.Array
    coords_BxNxR: jax.Array
    features_BxF: jax.Array


def normalize_tasks(points_BxNxD: jax.Array, point_mask_BxN: jax.Array, rank: int) -> NormalizedTasks:
    """See the module docstring. Padded points may hold anything; they are zeroed first."""
    points_BxNxD = jax.lax.stop_gradient(jnp.asarray(points_BxNxD, jnp.float32))
    mask_BxN = point_mask_BxN.astype(bool)
    weight_BxN = mask_BxN.astype(jnp.float32)
    count_B = jnp.maximum(jnp.sum(weight_BxN, axis=-1), 1.0)
    points_BxNxD = jnp.where(mask_BxN[..., None], points_BxNxD, 0.0)
    centre_BxD = jnp.sum(points_BxNxD, axis=1) / count_B[:, None]
    centred_BxNxD = jnp.where(mask_BxN[..., None], points_BxNxD - centre_BxD[:, None, :], 0.0)
    hi = jax.lax.Precision.HIGHEST
    cov_BxDxD = (
        jnp.einsum("bnd,bne->bde", centred_BxNxD, centred_BxNxD, precision=hi) / count_B[:, None, None]
    )
    dim = points_BxNxD.shape[-1]
    evals_BxD, evecs_BxDxD = jnp.linalg.eigh(cov_BxDxD)  # ascending
    keep = min(rank, dim)
    evals_BxR = jnp.maximum(evals_BxD[:, ::-1][:, :keep], 0.0)
    basis_BxDxR = evecs_BxDxD[:, :, ::-1][:, :, :keep]
    if keep < rank:  # fewer directions than the rank: zero columns, zero eigenvalues
        evals_BxR = jnp.pad(evals_BxR, ((0, 0), (0, rank - keep)))
        basis_BxDxR = jnp.pad(basis_BxDxR, ((0, 0), (0, 0), (0, rank - keep)))
    coords_BxNxR = jnp.einsum("bnd,bdr->bnr", centred_BxNxD, basis_BxDxR, precision=hi)
    sign_BxR = jnp.where(jnp.sum(coords_BxNxR**3, axis=1) < 0, -1.0, 1.0)
    basis_BxDxR = basis_BxDxR * sign_BxR[:, None, :]
    scale_B = jnp.sqrt(jnp.maximum(evals_BxR[:, 0], _MIN_SCALE**2))
    coords_BxNxR = coords_BxNxR * (sign_BxR / scale_B[:, None])[:, None, :]
    features_BxF = jnp.concatenate(
        [jnp.log(scale_B)[:, None], evals_BxR / jnp.square(scale_B)[:, None], jnp.log(count_B)[:, None]],
        axis=-1,
    )
    return NormalizedTasks(centre_BxD, basis_BxDxR, scale_B, coords_BxNxR, features_BxF)


def mask_features(observed_BxNxD: jax.Array, point_mask_BxN: jax.Array, basis_BxDxR: jax.Array) -> jax.Array:
    """[B, N, 1 + R] per-point features of missing coordinates, 0 on complete and padded points: the share of
    the point's D coordinates that are missing, and for each principal direction r the part of its unit
    loading that rests on them, sum_d missing[n, d] basis[d, r]^2 (in [0, 1]). They do not depend on the
    data's units, translation, point order or D beyond the mask (a rotation mixes coordinates, so with
    missing values it is no longer a symmetry)."""
    missing_BxNxD = (~observed_BxNxD.astype(bool)) & point_mask_BxN.astype(bool)[..., None]
    missing_BxNxD = missing_BxNxD.astype(jnp.float32)
    share_BxNx1 = jnp.mean(missing_BxNxD, axis=-1, keepdims=True)
    loading_BxNxR = jnp.einsum(
        "bnd,bdr->bnr", missing_BxNxD, jnp.square(basis_BxDxR), precision=jax.lax.Precision.HIGHEST
    )
    return jax.lax.stop_gradient(jnp.concatenate([share_BxNx1, loading_BxNxR], axis=-1))
