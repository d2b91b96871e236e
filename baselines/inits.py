"""Initialisations of R fits per task for the EM-type baselines, on centred chunks.

  official       pi = 1/K, mu ~ N(0, I) in the data's coordinates, unit variances
                 (docs/official_differences.md §6).
  kmeans++       greedy k-means++ on the real points, as sklearn's ``kmeans_plusplus``
                 (2 + floor(ln K) candidates per step, the one that lowers the potential most wins).
  random_points  K distinct real points drawn uniformly.
The two data-based inits are the library's seedings (``tgmm_jax.mixture.seeding``: the chosen centres define
a hard partition whose M-step gives the initial weights, means (and variances), as
``sklearn.mixture.GaussianMixture`` does with its k-means++ init); this module draws their randomness.
Randomness comes from per-task seeds (``draws.task_seeds``), so a task's fit does not depend on the chunking
or on the other tasks in the batch.
"""

from __future__ import annotations

import jax.numpy as jnp

from baselines import draws
from tgmm_jax.mixture import seeding
from tgmm_jax.mixture.fused import ChunkData, FitState

INITS = ("official", "kmeans++", "random_points")


def check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown EM initialisation {init!r}; choose one of {INITS}")


def official_init(seeds_C, data: ChunkData, component_mask_CxK, num_fits: int, learn_variances: bool):
    """pi = 1/K, mu ~ N(0, I) in the original coordinates, unit variances."""
    k_max = component_mask_CxK.shape[-1]
    d = data.centre_CxD.shape[-1]
    z = draws.normal(seeds_C, (num_fits, k_max, d))
    means = z - data.centre_CxD[:, None, None, :]
    mask = component_mask_CxK[:, None, :].astype(z.dtype)
    weights = jnp.broadcast_to(mask / jnp.sum(mask, axis=-1, keepdims=True), z.shape[:3])
    variances = jnp.ones_like(z) if learn_variances else None
    return FitState(weights, means, variances)


def initial_state(init: str, seeds_C, data: ChunkData, task_chunk, num_fits: int, learn_variances: bool):
    """R initial fits per task of the chunk, in centred coordinates."""
    check_init(init)
    mask_CxK = task_chunk.component_mask
    if init == "official":
        return official_init(seeds_C, data, mask_CxK, num_fits, learn_variances)
    k_max = mask_CxK.shape[-1]
    if init == "kmeans++":
        u = draws.uniform(seeds_C, (num_fits, k_max, seeding.kmeanspp_trials(k_max)))
        return seeding.kmeanspp_state(u, data, task_chunk.num_components, mask_CxK, learn_variances)
    u = draws.uniform(seeds_C, (num_fits, data.mask_CxN.shape[-1]))
    idx = seeding.random_point_indices(u, data, k_max)
    return seeding.partition_init(data, idx, mask_CxK, learn_variances)
