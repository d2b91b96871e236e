"""Training batches with missing coordinates: tasks masked at random rates, then filled as the estimator fills.

    batch = masked_batch(key, task, rate_max)   # MaskedBatch(task with filled points, observed [B, N, D])

Each task's rate is drawn uniformly from [0, rate_max]; its coordinates are hidden completely at random at that
rate (``tgmm_jax.masking``: every point keeps one), and each hidden value is filled from the point's nearest
neighbours (``tgmm_jax.imputation.nearest_neighbour_fill``, the jit-able twin of the estimator's host fill), so
the network trains on what it reads at inference. True parameters and labels are unchanged. Pure, jit-able.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tgmm_jax import imputation, masking


@struct.dataclass
class MaskedBatch:
    task: object  # GMMTask whose points hold the filled values at the hidden coordinates
    observed: jax.Array  # [B, N, D] bool, True = observed
    rate: jax.Array  # [B] the masking rate each task was drawn with


def masked_batch(key: jax.Array, task, rate_max: float) -> MaskedBatch:
    """The tasks of ``task`` ([B] tasks) with coordinates hidden at per-task rates U(0, rate_max), filled."""
    batch = task.points.shape[0]
    rate_key, mask_key = jax.random.split(key)
    rate_B = jax.random.uniform(rate_key, (batch,), maxval=rate_max)
    keys_B = jax.random.split(mask_key, batch)
    _, observed_BxNxD = jax.vmap(masking.mask_at_random)(keys_B, task.points, rate_B, task.point_mask)
    filled_BxNxD = jax.vmap(imputation.nearest_neighbour_fill)(task.points, observed_BxNxD, task.point_mask)
    filled_BxNxD = jnp.where(task.point_mask[..., None], filled_BxNxD, task.points).astype(task.points.dtype)
    return MaskedBatch(task.replace(points=filled_BxNxD), observed_BxNxD, rate_B)
