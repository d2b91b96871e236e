"""Filling missing coordinates (NaN) for a reader that needs complete points: the network's start.

    filled_NxD = nearest_neighbour_impute(x_NxD)  # NEIGHBOURS = 5 nearest points

The network was trained on complete points, so with missing values it reads filled ones; exact missing-data
EM (``tgmm_jax.mixture.missing``) then fits the observed coordinates alone, so the filling only sets where the
fit starts. A column's mean puts every incomplete point near the data's centre, between the clusters, where
it looks like a cluster of its own; a point's nearest neighbours, by the coordinates both observe, are most
likely in its own cluster, so their mean keeps it near its cluster's centre.

Distance between points n and m: the mean squared difference over the coordinates both observe (none in
common: no distance). Each missing x[n, j] becomes the mean of x[m, j] over the ``neighbours`` nearest points
m that observe coordinate j (fewer if fewer have a distance to n; the column's observed mean if none does,
or if no point observes j: then 0, there being nothing to read). Host-side NumPy, O(N^2 D) time and O(N^2)
memory: for the estimator's missing-value path (at most ``LARGE_N`` points per dataset). Its jit-able,
vmap-able float32 twin, ``nearest_neighbour_fill``, takes an observed mask and padded points instead of NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NEIGHBOURS = 5  # the default: what the estimator and the K posterior use


def column_mean_impute(x_NxD: np.ndarray) -> np.ndarray:
    """Each NaN replaced by its column's observed mean (0 where a column has no observed value).

    The host, float64 form of ``tgmm_jax.mixture.missing.mean_impute`` (a jit-able one in the arrays' dtype,
    float32 by default, for the batched baselines): this module's callers fill raw data before centring it,
    where float32 would lose a large offset's digits."""
    x_NxD = np.asarray(x_NxD, np.float64)
    observed_NxD = ~np.isnan(x_NxD)
    count_D = observed_NxD.sum(axis=0)
    mean_D = np.where(observed_NxD, x_NxD, 0.0).sum(axis=0) / np.maximum(count_D, 1)
    return np.where(observed_NxD, x_NxD, mean_D)


def pairwise_observed_distances(x_NxD: np.ndarray) -> np.ndarray:
    """[N, N]: the mean squared difference of two points over the coordinates both observe; inf where they
    share none, and on the diagonal."""
    x_NxD = np.asarray(x_NxD, np.float64)
    obs_NxD = (~np.isnan(x_NxD)).astype(np.float64)
    xf_NxD = np.where(obs_NxD > 0, x_NxD, 0.0)
    sq_NxD = xf_NxD**2
    common_NxN = obs_NxD @ obs_NxD.T
    # sum over shared coordinates of x_n^2 + x_m^2 - 2 x_n x_m (x is 0 where missing, so the cross term is shared)
    sq_diff_NxN = sq_NxD @ obs_NxD.T + obs_NxD @ sq_NxD.T - 2.0 * (xf_NxD @ xf_NxD.T)
    dist_NxN = np.maximum(sq_diff_NxN, 0.0) / np.maximum(common_NxN, 1.0)
    dist_NxN[common_NxN == 0] = np.inf
    np.fill_diagonal(dist_NxN, np.inf)
    return dist_NxN


def nearest_neighbour_impute(x_NxD: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """Each NaN replaced by the mean of that coordinate over the ``neighbours`` nearest points observing it
    (module docstring); complete data comes back unchanged (as float64)."""
    if int(neighbours) < 1:
        raise ValueError(f"neighbours must be >= 1, got {neighbours!r}")
    x_NxD = np.asarray(x_NxD, np.float64)
    if x_NxD.ndim != 2:
        raise ValueError(f"expected points [N, D], got shape {x_NxD.shape}")
    missing_NxD = np.isnan(x_NxD)
    if not missing_NxD.any():
        return x_NxD.copy()
    filled_NxD = column_mean_impute(x_NxD)
    dist_NxN = pairwise_observed_distances(x_NxD)
    for j in np.flatnonzero(missing_NxD.any(axis=0)):
        donors = np.flatnonzero(~missing_NxD[:, j])
        rows = np.flatnonzero(missing_NxD[:, j])
        if donors.size == 0:
            continue
        k = min(int(neighbours), donors.size)
        d_RxM = dist_NxN[np.ix_(rows, donors)]
        nearest_RxK = np.argpartition(d_RxM, k - 1, axis=1)[:, :k]
        near_d_RxK = np.take_along_axis(d_RxM, nearest_RxK, axis=1)
        values_RxK = x_NxD[donors[nearest_RxK], j]
        finite_RxK = np.isfinite(near_d_RxK)
        count_R = finite_RxK.sum(axis=1)
        mean_R = np.where(finite_RxK, values_RxK, 0.0).sum(axis=1) / np.maximum(count_R, 1)
        filled_NxD[rows, j] = np.where(count_R > 0, mean_R, filled_NxD[rows, j])
    return filled_NxD


def nearest_neighbour_fill(
    points_NxD: jax.Array,
    observed_NxD: jax.Array,
    point_mask_N: jax.Array | None = None,
    neighbours: int = NEIGHBOURS,
) -> jax.Array:
    """``nearest_neighbour_impute``'s rule as a pure, jit-able (and vmap-able) float32 function: [N, D].

    ``observed_NxD`` (bool, True = observed) says which values to read; the others may hold anything, NaN
    included, and are never read. Padded points (``point_mask_N`` False) are no one's donors, add nothing to
    the column means, and come back filled as if they observed nothing (finite). ``neighbours`` is a static
    Python int >= 1. Time and memory O(N^2 D).
    """
    neighbours = int(neighbours)
    if neighbours < 1:
        raise ValueError(f"neighbours must be >= 1, got {neighbours!r}")
    n = points_NxD.shape[-2]
    real_N = jnp.ones((n,), bool) if point_mask_N is None else point_mask_N.astype(bool)
    valid_NxD = observed_NxD.astype(bool) & real_N[:, None]
    x_NxD = jnp.where(valid_NxD, points_NxD.astype(jnp.float32), 0.0)  # no NaN past this line
    # Column means over the real points' observed values (0 where none): the fallback.
    count_D = jnp.sum(valid_NxD, axis=0).astype(jnp.float32)
    mean_D = jnp.sum(x_NxD, axis=0) / jnp.maximum(count_D, 1.0)
    # Distances from the differences themselves (no |a|^2 + |b|^2 - 2ab cancellation in float32).
    both_NxMxD = valid_NxD[:, None, :] & valid_NxD[None, :, :]
    diff_NxMxD = jnp.where(both_NxMxD, x_NxD[:, None, :] - x_NxD[None, :, :], 0.0)
    common_NxM = jnp.sum(both_NxMxD, axis=-1)
    dist_NxM = jnp.sum(diff_NxMxD**2, axis=-1) / jnp.maximum(common_NxM, 1).astype(jnp.float32)
    dist_NxM = jnp.where((common_NxM > 0) & ~jnp.eye(n, dtype=bool), dist_NxM, jnp.inf)
    # For column j the donors are the real points observing j; everyone else is at +inf.
    dist_NxDxM = jnp.where(valid_NxD.T[None, :, :], dist_NxM[:, None, :], jnp.inf)
    k = min(neighbours, n)
    neg_d_NxDxK, idx_NxDxK = jax.lax.top_k(-dist_NxDxM, k)
    values_NxDxK = x_NxD.T[jnp.arange(x_NxD.shape[1])[None, :, None], idx_NxDxK]
    finite_NxDxK = jnp.isfinite(neg_d_NxDxK)
    count_NxD = jnp.sum(finite_NxDxK, axis=-1).astype(jnp.float32)
    near_mean_NxD = jnp.sum(jnp.where(finite_NxDxK, values_NxDxK, 0.0), axis=-1) / jnp.maximum(count_NxD, 1.0)
    fill_NxD = jnp.where(count_NxD > 0, near_mean_NxD, mean_D[None, :])
    return jnp.where(valid_NxD, x_NxD, fill_NxD)
