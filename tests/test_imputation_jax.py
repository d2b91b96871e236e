"""The jit-able nearest-neighbour filling (tgmm_jax.imputation.nearest_neighbour_fill) against its host
NumPy reference, nearest_neighbour_impute (float32 vs float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tgmm_jax.imputation import nearest_neighbour_fill, nearest_neighbour_impute
from tgmm_jax.masking import mask_at_random

TOL = dict(rtol=1e-5, atol=1e-5)
RATES = (0.1, 0.3, 0.5)
DIMS = (2, 3, 8, 32)
N_MAX = 128
NEIGHBOURS = (1, 5)


def _clustered(seed, n, d):
    """Continuous float32 points around 3 centres (no distance ties)."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.standard_normal((3, d))
    return (centres[rng.integers(0, 3, n)] + rng.standard_normal((n, d))).astype(np.float32)


def _reference(x_nan, neighbours):
    return nearest_neighbour_impute(x_nan.astype(np.float64), neighbours)


@jax.jit
def _fill_each(x_nan, observed, point_mask):
    """{neighbours: filled} for every count in NEIGHBOURS: one compile per shape keeps the module fast."""
    return {k: nearest_neighbour_fill(x_nan, observed, point_mask, neighbours=k) for k in NEIGHBOURS}


@pytest.fixture(scope="module")
def masked_by_dim():
    """{D: (points with NaN [rate, N_MAX, D], observed [rate, N_MAX, D])} for every rate in RATES, from
    ``mask_at_random`` in one compile (its bisection for p compiles per D). Points are masked independently,
    so any N rows of these are an N-point draw."""

    @jax.jit
    def draw(points_by_dim):
        rates = jnp.asarray(RATES)
        return {
            d: jax.vmap(lambda rate, key, x=x: mask_at_random(key, x, rate))(
                rates, jax.random.split(jax.random.key(d), len(RATES))
            )
            for d, x in points_by_dim.items()
        }

    drawn = draw({d: jnp.asarray(_clustered(d, N_MAX, d)) for d in DIMS})
    return {d: tuple(np.asarray(a) for a in pair) for d, pair in drawn.items()}


@pytest.mark.parametrize("n", [7, 40, 128])
@pytest.mark.parametrize("d", DIMS)
def test_matches_the_numpy_reference(masked_by_dim, n, d):
    x_nan, observed = (a[:, :n] for a in masked_by_dim[d])
    filled = jax.jit(jax.vmap(_fill_each))(x_nan, observed, np.ones((len(RATES), n), bool))
    for r, rate in enumerate(RATES):
        assert rate * n * d < 2 or np.isnan(x_nan[r]).any()  # the holes are really there
        for neighbours, got in filled.items():
            got = np.asarray(got[r])
            assert got.dtype == np.float32 and got.shape == (n, d)
            np.testing.assert_allclose(got, _reference(x_nan[r], neighbours), **TOL, err_msg=f"{rate=}")
            np.testing.assert_array_equal(got[observed[r]], x_nan[r][observed[r]])


def test_padded_points_are_never_read(masked_by_dim):
    x_nan, observed = (a[1, :40] for a in masked_by_dim[8])
    real = np.random.default_rng(7).random(40) < 0.7
    x_garbage = x_nan.copy()
    x_garbage[~real] = np.nan  # padded rows: NaN even where "observed" ...
    x_garbage[~real, 0] = 1e30  # ... or huge
    for neighbours, got in _fill_each(x_garbage, observed, real).items():
        got = np.asarray(got)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got[real], _reference(x_nan[real], neighbours), **TOL)


def test_column_nobody_observes_and_a_point_sharing_no_coordinate():
    x = _clustered(3, 6, 3)
    observed = np.ones_like(x, bool)
    observed[:, 2] = False  # no point observes column 2: 0
    observed[0, 1] = False  # point 0 observes column 0 only ...
    observed[1:, 0] = False  # ... and no one else does: no distance to anyone
    x_nan = np.where(observed, x, np.nan)
    filled = _fill_each(x_nan, observed, np.ones(6, bool))
    filled[10] = jax.jit(nearest_neighbour_fill, static_argnames="neighbours")(x_nan, observed, neighbours=10)
    for neighbours, got in filled.items():  # 10 > N: as many as there are
        got = np.asarray(got)
        np.testing.assert_allclose(got, _reference(x_nan, neighbours), **TOL)
        np.testing.assert_array_equal(got[:, 2], 0.0)
        np.testing.assert_allclose(got[0, 1], x[1:, 1].mean(), **TOL)  # column mean
        np.testing.assert_allclose(got[1:, 0], x[0, 0], **TOL)  # the only donor has no distance: column mean


def test_complete_data_comes_back_unchanged():
    x = _clustered(4, 40, 8)
    for got in _fill_each(x, np.ones(x.shape, bool), np.ones(40, bool)).values():
        np.testing.assert_array_equal(np.asarray(got), x)


def test_jit_and_vmap_over_tasks_match_each_task(masked_by_dim):
    x_all, observed_all = masked_by_dim[8]
    picks = [(0, slice(0, 40)), (1, slice(40, 80)), (2, slice(80, 120)), (1, slice(88, 128))]  # (rate, rows)
    x_nan = np.stack([x_all[r, rows] for r, rows in picks])
    observed = np.stack([observed_all[r, rows] for r, rows in picks])
    real = np.stack([np.arange(40) < m for m in (40, 31, 17, 25)])
    x_nan[~real] = np.random.default_rng(5).standard_normal((int((~real).sum()), 8))
    batched = jax.jit(jax.vmap(_fill_each))(x_nan, observed, real)
    for i in range(len(picks)):
        for neighbours, got in _fill_each(x_nan[i], observed[i], real[i]).items():
            np.testing.assert_allclose(
                np.asarray(batched[neighbours][i]), np.asarray(got), rtol=1e-6, atol=1e-6
            )
            np.testing.assert_allclose(
                np.asarray(got)[real[i]], _reference(x_nan[i][real[i]], neighbours), **TOL
            )


def test_no_point_mask_means_all_real_and_no_neighbours_is_an_error(masked_by_dim):
    x_nan, observed = (a[1, :40] for a in masked_by_dim[8])
    np.testing.assert_array_equal(
        np.asarray(jax.jit(nearest_neighbour_fill)(x_nan, observed)),
        np.asarray(_fill_each(x_nan, observed, np.ones(40, bool))[5]),
    )
    with pytest.raises(ValueError, match="neighbours must be >= 1"):
        nearest_neighbour_fill(jnp.zeros((3, 2)), jnp.ones((3, 2), bool), neighbours=0)
