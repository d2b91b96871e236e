"""tgmm_jax.masking: MCAR coordinates at a given rate, never a whole point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tgmm_jax import masking
from tgmm_jax.tasks import GMMTask

jax.config.update("jax_numpy_rank_promotion", "raise")

_mask = jax.jit(masking.mask_at_random)


@pytest.mark.parametrize("dim", [2, 3, 8])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_masked_fraction_is_the_rate_and_every_point_keeps_a_coordinate(dim, rate):
    """Binomial test of the masked count against ``rate``. The coordinates of one point are not independent
    (a point that lost all gets one back), which makes the count less dispersed than a binomial: the test is
    conservative."""
    n = 20_000
    points = jnp.asarray(np.random.default_rng(dim).normal(size=(4, n // 4, dim)), jnp.float32)
    masked, observed = _mask(jax.random.key(int(100 * rate) + dim), points, rate)
    observed = np.asarray(observed)
    assert np.all(observed.any(axis=-1))  # at least one observed coordinate per point
    np.testing.assert_array_equal(np.isnan(np.asarray(masked)), ~observed)
    np.testing.assert_array_equal(np.asarray(masked)[observed], np.asarray(points)[observed])
    hidden = int((~observed).sum())
    p_value = stats.binomtest(hidden, observed.size, rate).pvalue
    assert p_value > 1e-3, (hidden / observed.size, rate, p_value)
    if rate == 0.5 and dim == 2:  # the maximum for D = 2: exactly one missing coordinate per point
        assert np.all((~observed).sum(axis=-1) == 1)


@pytest.mark.slow
def test_no_masking_at_rate_zero_padded_points_untouched_and_bad_rates_refused():
    rng = np.random.default_rng(0)
    b, n, k, d = 4, 64, 3, 3
    task = GMMTask(
        points=jnp.asarray(rng.normal(size=(b, n, d)), jnp.float32),
        point_mask=jnp.asarray(np.arange(n)[None, :] < rng.integers(16, n, (b, 1))),
        labels=jnp.zeros((b, n), jnp.int32),
        weights=jnp.full((b, k), 1 / k),
        means=jnp.asarray(rng.normal(size=(b, k, d)), jnp.float32),
        scales=jnp.ones((b, k, d)),
        component_mask=jnp.ones((b, k), bool),
        num_components=jnp.full((b,), k, jnp.int32),
    )
    masked_task, observed = jax.jit(masking.mask_task)(jax.random.key(1), task, 0.4)
    observed = np.asarray(observed)
    pad = ~np.asarray(task.point_mask)
    assert pad.any()
    assert observed[pad].all()  # padded points are never masked
    real = observed[~pad]
    assert real.any(axis=-1).all()
    assert 0.3 < 1 - real.mean() < 0.5
    np.testing.assert_array_equal(np.asarray(masked_task.means), np.asarray(task.means))

    masked, observed = _mask(jax.random.key(2), task.points, 0.0)
    assert np.asarray(observed).all()
    np.testing.assert_array_equal(np.asarray(masked), np.asarray(task.points))
    # a traced rate works; p solves p - p^D / D = rate
    p = jax.jit(masking.coordinate_probability, static_argnums=1)(jnp.float32(0.3), 3)
    np.testing.assert_allclose(float(p - p**3 / 3), 0.3, rtol=1e-6)
    for bad in (-0.1, 0.7):  # (D - 1) / D = 2 / 3 for D = 3
        with pytest.raises(ValueError, match="rate must be in"):
            masking.mask_at_random(jax.random.key(0), task.points, bad)
