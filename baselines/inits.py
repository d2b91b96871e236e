"""Initialisations of R fits per task for the EM-type baselines, on centred chunks.

  official       pi = 1/K, mu ~ N(0, I) in the data's coordinates, unit variances
                 (docs/official_differences.md §6).
  kmeans++       greedy k-means++ on the real points, as sklearn's ``kmeans_plusplus``
                 (2 + floor(ln K) candidates per step, the one that lowers the potential most wins).
  random_points  K distinct real points drawn uniformly.
For the two data-based inits the chosen centres define a hard partition whose M-step gives the initial
weights, means (and variances), as ``sklearn.mixture.GaussianMixture`` does with its k-means++ init.
Randomness comes from per-task seeds (``draws.task_seeds``), so a task's fit does not depend on the chunking
or on the other tasks in the batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from baselines import draws, mixture_steps
from baselines.mixture_steps import HIGHEST, ChunkData, FitState

INITS = ("official", "kmeans++", "random_points")


def check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown EM initialisation {init!r}; choose one of {INITS}")


def gather_points(data: ChunkData, idx_CxRxT: jax.Array) -> jax.Array:
    """The centred points at the given indices: [C, R, T, D]."""
    return _gather_points(_points(data), idx_CxRxT)


def _points(data: ChunkData) -> jax.Array:
    d = data.centre_CxD.shape[-1]
    return data.feats_CxNxF[..., :d]  # centred points, zero on padding


def _sq_dist_to(points_CxNxD: jax.Array, centres_CxRxTxD: jax.Array) -> jax.Array:
    """||x_n - c||^2 = ||x||^2 - 2 x.c + ||c||^2, clipped at 0: [C, R, T, N].

    The expansion (one matmul, as sklearn's ``euclidean_distances``) is 3-4x cheaper on CPU than explicit
    differences; its cancellation error is harmless here since the points are centred per task.
    """
    cross = jnp.einsum("crtd,cnd->crtn", centres_CxRxTxD, points_CxNxD, precision=HIGHEST)
    sq_x_Cx1x1xN = jnp.sum(points_CxNxD**2, axis=-1)[:, None, None, :]
    sq_c_CxRxTx1 = jnp.sum(centres_CxRxTxD**2, axis=-1)[..., None]
    return jnp.maximum(sq_x_Cx1x1xN - 2.0 * cross + sq_c_CxRxTx1, 0.0)


def _point_distances(data: ChunkData, num_fits: int, k_max: int):
    """``dist(idx_CxRxT) -> [C, R, T, N]``: squared distances from the points to the points ``idx``.

    Every centre the data-based inits look at is one of the task's points. With many restarts it is
    cheaper to form each task's Gram matrix once (N^2 D) and gather rows from it than to multiply
    every fit's candidates with the points (R K (T + 1) N D); the cheaper way is taken.
    """
    x = _points(data)
    n = x.shape[1]
    trials = 2 + int(math.log(k_max))
    if n > num_fits * k_max * (trials + 1):
        return lambda idx_CxRxT: _sq_dist_to(x, _gather_points(x, idx_CxRxT))
    gram_CxNxN = jnp.einsum("cnd,cmd->cnm", x, x, precision=HIGHEST)
    sq_CxN = jnp.sum(x**2, axis=-1)

    def dist(idx_CxRxT):
        cross = _gather_points(gram_CxNxN, idx_CxRxT)  # rows of the Gram matrix: [C, R, T, N]
        sq_c = jnp.take_along_axis(sq_CxN[:, None, :], idx_CxRxT.reshape(idx_CxRxT.shape[0], 1, -1), axis=2)
        sq_c_CxRxTx1 = sq_c.reshape(idx_CxRxT.shape)[..., None]
        return jnp.maximum(sq_CxN[:, None, None, :] - 2.0 * cross + sq_c_CxRxTx1, 0.0)

    return dist


def _cumsum_last(a: jax.Array) -> jax.Array:
    """Cumulative sum over the (short) last axis as a matmul with a triangular matrix.

    XLA:CPU lowers ``jnp.cumsum`` to a reduce-window that costs O(N^2) scalar adds per row; the matmul
    does the same arithmetic vectorised, several times faster for N in the hundreds.
    """
    n = a.shape[-1]
    upper_NxN = jnp.triu(jnp.ones((n, n), a.dtype))
    return jnp.einsum("...n,nm->...m", a, upper_NxN, precision=HIGHEST)


def _gather_points(points_CxNxD: jax.Array, idx_CxRxT: jax.Array) -> jax.Array:
    return jax.vmap(lambda p, i: p[i])(points_CxNxD, idx_CxRxT)


def kmeans_plusplus_indices(seeds_C, data: ChunkData, num_components_C, k_max: int, num_fits: int, dist=None):
    """Indices of the K_max chosen points per fit: [C, R, K_max] (entries >= K of a task are unused)."""
    x = _points(data)
    dist = dist or _point_distances(data, num_fits, k_max)
    mask_Cx1xN = data.mask_CxN[:, None, :]
    trials = 2 + int(math.log(k_max))
    u_CxRxKxT = draws.uniform(seeds_C, (num_fits, k_max, trials))
    # trial t of step j is live only if t < 2 + floor(ln K) for the task's own K (sklearn's rule).
    own_trials_C = 2 + jnp.floor(jnp.log(num_components_C.astype(jnp.float32))).astype(jnp.int32)
    trial_live_CxT = jnp.arange(trials)[None, :] < own_trials_C[:, None]

    def pick(u_CxRxT, weights_CxRxN):
        """Indices with probability proportional to weights (inverse CDF; all-zero weights: uniform)."""
        total = jnp.sum(weights_CxRxN, axis=-1, keepdims=True)
        weights_CxRxN = jnp.where(total > 0, weights_CxRxN, mask_Cx1xN)
        cdf = _cumsum_last(weights_CxRxN)
        target = u_CxRxT * cdf[..., -1:]
        idx = jnp.sum(cdf[:, :, None, :] < target[..., None], axis=-1)
        return jnp.minimum(idx, x.shape[1] - 1)

    first_CxR = pick(u_CxRxKxT[:, :, 0, :1], jnp.broadcast_to(mask_Cx1xN, u_CxRxKxT.shape[:2] + x.shape[1:2]))
    closest_CxRxN = dist(first_CxR)[:, :, 0] * mask_Cx1xN
    chosen_CxRxK = jnp.zeros(u_CxRxKxT.shape[:3], jnp.int32).at[:, :, 0].set(first_CxR[..., 0])

    def step(j, carry):  # a loop, not unrolled: keeps the compiled program (and compile time) small
        chosen_CxRxK, closest_CxRxN = carry
        u_CxRxT = jax.lax.dynamic_index_in_dim(u_CxRxKxT, j, axis=2, keepdims=False)
        cand_CxRxT = pick(u_CxRxT, closest_CxRxN)
        dist_CxRxTxN = jnp.minimum(closest_CxRxN[:, :, None], dist(cand_CxRxT))
        dist_CxRxTxN = dist_CxRxTxN * mask_Cx1xN[:, :, None]
        pot_CxRxT = jnp.where(trial_live_CxT[:, None, :], jnp.sum(dist_CxRxTxN, axis=-1), jnp.inf)
        best_CxR = jnp.argmin(pot_CxRxT, axis=-1)
        active_C = j < num_components_C
        pick_CxR = jnp.take_along_axis(cand_CxRxT, best_CxR[..., None], axis=2)[:, :, 0]
        chosen_CxRxK = jax.lax.dynamic_update_index_in_dim(chosen_CxRxK, pick_CxR, j, axis=2)
        best_dist_CxRxN = jnp.take_along_axis(dist_CxRxTxN, best_CxR[..., None, None], axis=2)[:, :, 0]
        return chosen_CxRxK, jnp.where(active_C[:, None, None], best_dist_CxRxN, closest_CxRxN)

    chosen_CxRxK, _ = jax.lax.fori_loop(1, k_max, step, (chosen_CxRxK, closest_CxRxN))
    return chosen_CxRxK


def random_point_indices(seeds_C, data: ChunkData, k_max: int, num_fits: int):
    """K_max distinct real points per fit, uniformly (Gumbel top-k): [C, R, K_max]."""
    n = data.mask_CxN.shape[-1]
    u_CxRxN = draws.uniform(seeds_C, (num_fits, n))
    scores = jnp.where(data.mask_CxN[:, None, :] > 0, u_CxRxN, -1.0 - u_CxRxN)  # padded points last
    return jax.lax.top_k(scores, k_max)[1]


def partition_init(
    data: ChunkData, idx_CxRxK, component_mask_CxK, learn_variances: bool, dist=None
) -> FitState:
    """Hard partition around the chosen points, then one M-step (sklearn's init). Empty cells (duplicate
    points) keep their point as mean with a 1/N weight instead of dying at birth."""
    x = _points(data)
    centres = _gather_points(x, idx_CxRxK)
    sq_CxRxKxN = (dist or _point_distances(data, idx_CxRxK.shape[1], idx_CxRxK.shape[2]))(idx_CxRxK)
    sq_CxRxKxN = jnp.where(component_mask_CxK[:, None, :, None], sq_CxRxKxN, jnp.inf)
    resp = jax.nn.one_hot(jnp.argmin(sq_CxRxKxN, axis=2), sq_CxRxKxN.shape[2], axis=2, dtype=x.dtype)
    resp = resp * data.mask_CxN[:, None, None, :]
    state = mixture_steps.m_step(data, resp, learn_variances)
    empty = jnp.sum(resp, axis=-1) < 0.5
    weights = jnp.where(empty, 1.0 / data.num_points_C[:, None, None], state.weights_CxRxK)
    weights = jnp.where(component_mask_CxK[:, None, :], weights, 0.0)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    means = jnp.where(empty[..., None], centres, state.means_CxRxKxD)
    variances = state.variances_CxRxKxD
    if learn_variances:
        variances = jnp.where(empty[..., None], 1.0, variances)
    return FitState(weights, means, variances)


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
    dist = _point_distances(data, num_fits, k_max)
    if init == "kmeans++":
        idx = kmeans_plusplus_indices(seeds_C, data, task_chunk.num_components, k_max, num_fits, dist)
    else:
        idx = random_point_indices(seeds_C, data, k_max, num_fits)
    return partition_init(data, idx, mask_CxK, learn_variances, dist)
