"""Seedings of R fits per task on centred chunks (``fused.ChunkData``): k-means++ and random points.

  kmeans++       greedy k-means++ on the real points, as sklearn's ``kmeans_plusplus``
                 (2 + floor(ln K) candidates per step, the one that lowers the potential most wins).
  random_points  K distinct real points drawn uniformly.
The chosen centres define a hard partition whose M-step gives the initial weights, means (and variances)
(``partition_init``), as ``sklearn.mixture.GaussianMixture`` does with its k-means++ init.
The functions take their uniform draws as arrays [C, ...] (the baselines draw them per task with
``baselines.draws``, the estimator with ``jax.random``), so a task's seeding depends only on its own draws.
Used by the ``baselines`` EM-type fits and by the restarts of ``tgmm_jax.estimator``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tgmm_jax.mixture import fused
from tgmm_jax.mixture.fused import HIGHEST, ChunkData, FitState


def kmeanspp_trials(k_max: int) -> int:
    """Candidates per k-means++ step for up to ``k_max`` components (sklearn's 2 + floor(ln K)): the last
    axis of the draws ``kmeans_plusplus_indices`` takes."""
    return 2 + int(math.log(k_max))


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


def point_distances(data: ChunkData, num_fits: int, k_max: int):
    """``dist(idx_CxRxT) -> [C, R, T, N]``: squared distances from the points to the points ``idx``.

    Every centre the data-based inits look at is one of the task's points. With many restarts it is
    cheaper to form each task's Gram matrix once (N^2 D) and gather rows from it than to multiply
    every fit's candidates with the points (R K (T + 1) N D); the cheaper way is taken.
    """
    x = _points(data)
    n = x.shape[1]
    trials = kmeanspp_trials(k_max)
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


def kmeans_plusplus_indices(u_CxRxKxT, data: ChunkData, num_components_C, dist=None):
    """Indices of the K_max chosen points per fit: [C, R, K_max] (entries >= K of a task are unused).

    ``u_CxRxKxT``: U(0, 1) draws (0 excluded), K_max = its third axis, T = ``kmeanspp_trials(K_max)``.
    ``dist``: ``point_distances(data, R, K_max)`` when the caller already has it.
    """
    _, num_fits, k_max, trials = u_CxRxKxT.shape
    if trials != kmeanspp_trials(k_max):
        raise ValueError(f"k-means++ draws need {kmeanspp_trials(k_max)} trials per step, got {trials}")
    x = _points(data)
    dist = dist or point_distances(data, num_fits, k_max)
    mask_Cx1xN = data.mask_CxN[:, None, :]
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


def random_point_indices(u_CxRxN, data: ChunkData, k_max: int):
    """K_max distinct real points per fit, uniformly (Gumbel top-k of U(0, 1) draws [C, R, N]): [C, R, K_max]."""
    scores = jnp.where(data.mask_CxN[:, None, :] > 0, u_CxRxN, -1.0 - u_CxRxN)  # padded points last
    return jax.lax.top_k(scores, k_max)[1]


def partition_init(
    data: ChunkData, idx_CxRxK, component_mask_CxK, learn_variances: bool, dist=None
) -> FitState:
    """Hard partition around the chosen points, then one M-step (sklearn's init). Empty cells (duplicate
    points) keep their point as mean with a 1/N weight instead of dying at birth."""
    x = _points(data)
    centres = _gather_points(x, idx_CxRxK)
    sq_CxRxKxN = (dist or point_distances(data, idx_CxRxK.shape[1], idx_CxRxK.shape[2]))(idx_CxRxK)
    sq_CxRxKxN = jnp.where(component_mask_CxK[:, None, :, None], sq_CxRxKxN, jnp.inf)
    resp = jax.nn.one_hot(jnp.argmin(sq_CxRxKxN, axis=2), sq_CxRxKxN.shape[2], axis=2, dtype=x.dtype)
    resp = resp * data.mask_CxN[:, None, None, :]
    state = fused.m_step(data, resp, learn_variances)
    empty = jnp.sum(resp, axis=-1) < 0.5
    weights = jnp.where(empty, 1.0 / data.num_points_C[:, None, None], state.weights_CxRxK)
    weights = jnp.where(component_mask_CxK[:, None, :], weights, 0.0)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    means = jnp.where(empty[..., None], centres, state.means_CxRxKxD)
    variances = state.variances_CxRxKxD
    if learn_variances:
        variances = jnp.where(empty[..., None], 1.0, variances)
    return FitState(weights, means, variances)


def kmeanspp_state(u_CxRxKxT, data: ChunkData, num_components_C, component_mask_CxK, learn_variances: bool):
    """R k-means++ starts per task (``kmeans_plusplus_indices``, then ``partition_init``), centred: FitState."""
    _, num_fits, k_max, _ = u_CxRxKxT.shape
    dist = point_distances(data, num_fits, k_max)
    idx = kmeans_plusplus_indices(u_CxRxKxT, data, num_components_C, dist)
    return partition_init(data, idx, component_mask_CxK, learn_variances, dist)
