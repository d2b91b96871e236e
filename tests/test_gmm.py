"""Mixture math against SciPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from tgmm_jax import gmm
from tgmm_jax.gmm import MixtureParams


def _random_mixture(rng, b, k, d, n, k_real, scales=True, offset=0.0):
    weights = rng.dirichlet(np.ones(k), size=b).astype(np.float32)
    mask = np.arange(k)[None, :] < np.asarray(k_real)[:, None]
    weights = np.where(mask, weights, 0)
    weights /= weights.sum(-1, keepdims=True)
    means = (rng.normal(size=(b, k, d)) * 3 + offset).astype(np.float32)
    sc = rng.uniform(0.5, 2.0, size=(b, k, d)).astype(np.float32) if scales else None
    points = (rng.normal(size=(b, n, d)) * 2 + offset).astype(np.float32)
    return MixtureParams(
        jnp.asarray(weights), jnp.asarray(means), None if sc is None else jnp.asarray(sc), jnp.asarray(mask)
    ), points


def _reference_log_density(points, params, b):
    k_real = int(np.asarray(params.component_mask[b]).sum())
    comps = []
    for k in range(k_real):
        cov = (
            np.ones(points.shape[-1])
            if params.scales is None
            else np.asarray(params.scales[b, k], np.float64) ** 2
        )
        comps.append(
            np.log(float(params.weights[b, k]))
            + stats.multivariate_normal(np.asarray(params.means[b, k], np.float64), np.diag(cov)).logpdf(
                points[b].astype(np.float64)
            )
        )
    return logsumexp(np.stack(comps, -1), axis=-1)


@pytest.mark.parametrize("scales", [False, True])
@pytest.mark.parametrize("offset", [0.0, 300.0])
@pytest.mark.slow
def test_point_log_density_matches_scipy(scales, offset):
    rng = np.random.default_rng(0)
    params, points = _random_mixture(rng, 4, 5, 3, 50, [2, 3, 5, 1], scales, offset)
    got = np.asarray(gmm.point_log_density(jnp.asarray(points), params))
    for b in range(4):
        np.testing.assert_allclose(got[b], _reference_log_density(points, params, b), rtol=2e-5, atol=2e-4)


@pytest.mark.slow
def test_responsibilities_zero_on_padding_and_normalised():
    rng = np.random.default_rng(1)
    params, points = _random_mixture(rng, 3, 4, 2, 20, [2, 4, 3])
    resp = np.asarray(gmm.responsibilities(jnp.asarray(points), params))
    np.testing.assert_allclose(resp.sum(-1), 1.0, rtol=1e-5)
    assert np.all(resp[~np.broadcast_to(np.asarray(params.component_mask)[:, None, :], resp.shape)] == 0)


@pytest.mark.slow
def test_mean_log_likelihood_ignores_padded_points():
    rng = np.random.default_rng(2)
    params, points = _random_mixture(rng, 2, 3, 2, 30, [3, 2])
    mask = np.arange(30)[None, :] < np.array([[10], [30]])
    got = np.asarray(gmm.mean_log_likelihood(jnp.asarray(points), jnp.asarray(mask), params))
    for b in range(2):
        ref = _reference_log_density(points, params, b)[mask[b]].mean()
        np.testing.assert_allclose(got[b], ref, rtol=1e-5)
    # changing padded points changes nothing
    points2 = points.copy()
    points2[0, 10:] = 1e3
    got2 = np.asarray(gmm.mean_log_likelihood(jnp.asarray(points2), jnp.asarray(mask), params))
    np.testing.assert_array_equal(got[0], got2[0])


@pytest.mark.slow
def test_sample_points_moments():
    params = MixtureParams(
        jnp.array([0.25, 0.75, 0.0]),
        jnp.array([[-4.0, 0.0], [3.0, 1.0], [0.0, 0.0]]),
        jnp.array([[0.5, 0.5], [1.5, 1.0], [1.0, 1.0]]),
        jnp.array([True, True, False]),
    )
    x, z = gmm.sample_points(jax.random.key(0), params, 40000)
    x, z = np.asarray(x), np.asarray(z)
    assert set(np.unique(z)) == {0, 1}
    assert abs((z == 0).mean() - 0.25) < 0.01
    np.testing.assert_allclose(x[z == 1].mean(0), [3.0, 1.0], atol=0.03)
    np.testing.assert_allclose(x[z == 1].std(0), [1.5, 1.0], rtol=0.02)
    with pytest.raises(ValueError, match="one mixture"):
        gmm.sample_points(jax.random.key(0), jax.tree.map(lambda a: a[None], params), 4)
