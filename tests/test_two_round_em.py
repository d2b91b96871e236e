"""Dasgupta-Schulman two-round EM: recovery against the known-label oracle, pruning against NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from baselines.two_round_em import TwoRoundConfig, _farthest_first, num_initial_centres
from tests.baseline_helpers import aligned_l2_means, fast_baseline, fast_jit, make_tasks

jax.config.update("jax_numpy_rank_promotion", "raise")  # also set by tests/conftest.py


def _oracle_l2(task):
    """l2 of the estimator that knows the labels: per-component sample means
    (docs/official_differences.md §5)."""
    x, z = np.asarray(task.points, np.float64), np.asarray(task.labels)
    means = np.zeros(task.means.shape)
    for b, k in enumerate(np.asarray(task.num_components)):
        for j in range(k):
            means[b, j] = x[b][z[b] == j].mean(0)
    return aligned_l2_means(means, task)


@pytest.mark.slow
def test_recovers_well_separated_mixtures_near_the_oracle():
    ks = [2, 3, 4, 5] * 8
    task = make_tasks(0, ks, 16, 128, mean_scale=2.0)  # means U[-10, 10]^16: well separated, DS's regime
    est, info = fast_baseline("two_round_em")(jax.random.key(0), task)
    ours, oracle = aligned_l2_means(est.means, task), _oracle_l2(task)
    assert ours.mean() <= 1.5 * oracle.mean() + 0.01, (ours.mean(), oracle.mean())
    expected_l = [math.ceil(4 * k * max(math.log(k), 1.0)) for k in ks]
    np.testing.assert_array_equal(np.asarray(info["num_initial_centres"]), expected_l)
    assert np.all(np.asarray(info["num_survivors"]) >= np.asarray(ks))
    np.testing.assert_allclose(np.asarray(est.weights).sum(-1), 1.0, rtol=1e-5)


def _numpy_farthest_first(means, weights, survivor, k):
    chosen = [int(np.argmax(np.where(survivor, weights, -np.inf)))]
    while len(chosen) < k:
        d = ((means[:, None, :] - means[chosen][None]) ** 2).sum(-1).min(1)
        d = np.where(survivor, d, -np.inf)
        d[chosen] = -np.inf
        chosen.append(int(np.argmax(d)))
    return chosen


@pytest.mark.slow
def test_farthest_first_matches_numpy():
    rng = np.random.default_rng(0)
    c, l, d, k_max = 16, 12, 3, 4
    means = rng.normal(size=(c, l, d)).astype(np.float32)
    weights = rng.uniform(size=(c, l)).astype(np.float32)
    survivor = rng.uniform(size=(c, l)) < 0.7
    survivor[:, :k_max] = True
    ks = rng.integers(1, k_max + 1, size=c).astype(np.int32)
    got = fast_jit(_farthest_first, static_argnums=4)(means, weights, survivor, ks, k_max)
    for b in range(c):
        want = _numpy_farthest_first(means[b], weights[b], survivor[b], ks[b])
        np.testing.assert_array_equal(np.asarray(got[b, : ks[b]]), want)


@pytest.mark.parametrize("variant", ["isotropic", "anisotropic"])
@pytest.mark.slow
def test_few_points_cap_the_initial_centres_and_stay_finite(variant):
    ks = [2, 3, 4, 5] * 4
    task = make_tasks(1, ks, 4, 16, variant=variant)
    n = np.array([k + 1 for k in ks])  # N barely above K
    task = task.replace(point_mask=jnp.asarray(np.arange(16)[None, :] < n[:, None]))
    est, info = fast_baseline("two_round_em", variant=variant)(jax.random.key(0), task)
    np.testing.assert_array_equal(np.asarray(info["num_initial_centres"]), np.minimum(n, 16))
    assert bool(jnp.all(info["valid"]))
    assert np.all(np.isfinite(np.asarray(est.means))) and np.all(np.asarray(est.weights) >= 0)


def test_constants_and_bad_settings():
    assert [num_initial_centres(k, 4.0) for k in (2, 3, 4, 5)] == [8, 14, 23, 33]
    with pytest.raises(ValueError, match="oversampling"):
        TwoRoundConfig(oversampling=0.5)
    with pytest.raises(ValueError, match="prune_fraction"):
        TwoRoundConfig(prune_fraction=2.0)
    with pytest.raises(ValueError, match="variant"):
        TwoRoundConfig(variant="full")
