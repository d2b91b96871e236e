"""Nearest-neighbour filling of missing coordinates (tgmm_jax/imputation.py) against loops over points."""

import jax.numpy as jnp
import numpy as np
import pytest

from tgmm_jax.imputation import column_mean_impute, nearest_neighbour_impute, pairwise_observed_distances
from tgmm_jax.mixture.missing import mean_impute


def _holes(seed=0, n=40, d=4, rate=0.3):
    rng = np.random.default_rng(seed)
    centres = 6.0 * rng.standard_normal((3, d))
    x = centres[rng.integers(0, 3, n)] + rng.standard_normal((n, d))
    x[rng.random((n, d)) < rate] = np.nan
    x[0] = np.nan
    x[0, 0] = 1.0  # one observed coordinate
    return x


def _brute_force(x, neighbours):
    n, d = x.shape
    obs = ~np.isnan(x)
    out = x.copy()
    for i in range(n):
        for j in range(d):
            if obs[i, j]:
                continue
            cands = []
            for m in range(n):
                common = obs[i] & obs[m]
                if m == i or not obs[m, j] or not common.any():
                    continue
                cands.append((np.mean((x[i, common] - x[m, common]) ** 2), x[m, j]))
            cands.sort(key=lambda c: c[0])
            near = cands[:neighbours]
            out[i, j] = np.mean([v for _, v in near]) if near else np.nanmean(x[:, j])
    return out


@pytest.mark.parametrize("neighbours", [1, 5])
def test_matches_a_loop_over_points(neighbours):
    x = _holes()
    np.testing.assert_allclose(
        nearest_neighbour_impute(x, neighbours), _brute_force(x, neighbours), atol=1e-9
    )


def test_distances_and_fallbacks():
    x = np.array([[0.0, np.nan], [np.nan, 2.0], [3.0, 4.0], [1.0, np.nan]])
    dist = pairwise_observed_distances(x)
    assert np.isinf(dist[0, 1]) and np.isinf(np.diag(dist)).all()  # no shared coordinate; the diagonal
    assert dist[0, 2] == 9.0 and dist[1, 2] == 4.0 and dist[0, 3] == 1.0
    # point 1 shares a coordinate only with point 2; points 0 and 3 have 2 as their only donor of column 1
    np.testing.assert_allclose(nearest_neighbour_impute(x, 2), [[0, 4], [3, 2], [3, 4], [1, 4]])
    # no donor with a distance: the column's observed mean
    y = np.array([[np.nan, 1.0], [2.0, np.nan], [4.0, np.nan]])
    np.testing.assert_allclose(nearest_neighbour_impute(y, 3), [[3.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    np.testing.assert_allclose(column_mean_impute(y), [[3.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    complete = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(nearest_neighbour_impute(complete), complete)
    with pytest.raises(ValueError, match="neighbours must be >= 1"):
        nearest_neighbour_impute(x, 0)
    with pytest.raises(ValueError, match=r"expected points \[N, D\]"):
        nearest_neighbour_impute(x[0])


def test_fills_nearer_the_points_own_cluster_than_the_column_mean():
    rng = np.random.default_rng(3)
    centres = np.array([[-8.0, -8.0, -8.0], [8.0, 8.0, 8.0]])
    labels = rng.integers(0, 2, 200)
    x = centres[labels] + rng.standard_normal((200, 3))
    holes = rng.random(x.shape) < 0.3
    holes[:, 2] &= ~holes[:, :2].all(axis=1)  # every point keeps a coordinate
    x_nan = np.where(holes, np.nan, x)
    err_nn = np.abs(nearest_neighbour_impute(x_nan) - centres[labels])[holes].mean()
    err_mean = np.abs(column_mean_impute(x_nan) - centres[labels])[holes].mean()
    assert err_nn < 1.0 and err_mean > 6.0, (err_nn, err_mean)


def test_column_means_are_the_mixture_cores_mean_impute():
    x = _holes(seed=5)
    got = column_mean_impute(x)
    want = mean_impute(jnp.asarray(x, jnp.float32), jnp.ones(x.shape[0], bool))
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6, atol=1e-6)
