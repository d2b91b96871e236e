"""Batched EM against a float64 NumPy loop and against scikit-learn's GaussianMixture."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from baselines import em
from baselines.em import EMConfig, fit_em_from
from tests.baseline_helpers import (
    FAST_COMPILE,
    aligned_l2_means,
    fast_baseline,
    fast_jit,
    make_tasks,
    numpy_em,
)
from tgmm_jax.gmm import MixtureParams

jax.config.update("jax_numpy_rank_promotion", "raise")  # also set by tests/conftest.py

REG = 1e-6
em_from = fast_jit(fit_em_from, static_argnames="variant")


def _tasks(variant="isotropic", seed=0):
    """24 tasks, K in {2, 3, 4} padded to 4, N in 32..64 padded to 64, D = 5."""
    return make_tasks(seed, [2, 3, 4] * 8, 5, 64, n_min=32, variant=variant)


def _perturbed_init(task, seed, learn):
    rng = np.random.default_rng(seed)
    mask = np.asarray(task.component_mask)
    weights = mask / mask.sum(-1, keepdims=True)
    means = np.asarray(task.means) + 0.8 * rng.normal(size=task.means.shape)
    scales = rng.uniform(0.7, 1.5, size=task.means.shape) if learn else None
    return weights, means, scales


@pytest.mark.parametrize("variant", ["isotropic", "anisotropic"])
@pytest.mark.slow
def test_em_from_init_matches_float64_numpy(variant):
    learn = variant == "anisotropic"
    task = _tasks(variant)
    w0, mu0, s0 = _perturbed_init(task, 1, learn)
    init = MixtureParams(
        jnp.asarray(w0, jnp.float32),
        jnp.asarray(mu0, jnp.float32),
        None if s0 is None else jnp.asarray(s0, jnp.float32),
        task.component_mask,
    )
    est, info = em_from(task, init, variant=variant, max_iter=25, tol=0.0)
    for b in range(task.points.shape[0]):
        k = int(task.num_components[b])
        x = np.asarray(task.points[b], np.float64)[np.asarray(task.point_mask[b])]
        var0 = None if s0 is None else s0[b, :k] ** 2
        w, mu, var, n_iter, last_ll = numpy_em(x, w0[b, :k], mu0[b, :k], var0, 25, 0.0)
        assert int(info["n_iter"][b]) == n_iter == 25
        np.testing.assert_allclose(np.asarray(est.weights[b, :k]), w, atol=1e-4)
        np.testing.assert_allclose(np.asarray(est.means[b, :k]), mu, atol=1e-4)
        if learn:
            np.testing.assert_allclose(np.asarray(est.scales[b, :k]), np.sqrt(var), atol=1e-4)
        assert np.all(np.asarray(est.weights[b, k:]) == 0) and np.all(np.asarray(est.means[b, k:]) == 0)
        # loglik: at the last E-step, as sklearn's lower_bound_
        np.testing.assert_allclose(float(info["loglik"][b]), last_ll, rtol=1e-5)


@pytest.mark.slow
def test_em_early_stopping_matches_numpy_and_freezes_converged_tasks():
    task = _tasks(seed=3)
    w0, mu0, _ = _perturbed_init(task, 2, False)
    init = MixtureParams(
        jnp.asarray(w0, jnp.float32), jnp.asarray(mu0, jnp.float32), None, task.component_mask
    )
    tol = 1e-3  # coarse enough that float32 and float64 stop at the same iteration
    est, info = em_from(task, init, max_iter=100, tol=tol, variant="isotropic")
    agree = 0
    for b in range(task.points.shape[0]):
        k = int(task.num_components[b])
        x = np.asarray(task.points[b], np.float64)[np.asarray(task.point_mask[b])]
        _, mu, _, n_iter, _ = numpy_em(x, w0[b, :k], mu0[b, :k], None, 100, tol)
        if int(info["n_iter"][b]) == n_iter:
            agree += 1
            np.testing.assert_allclose(np.asarray(est.means[b, :k]), mu, atol=1e-4)
    assert agree >= 0.9 * task.points.shape[0]
    assert bool(jnp.all(info["converged"]))


def test_padded_points_and_components_have_no_influence():
    task = _tasks()
    w0, mu0, _ = _perturbed_init(task, 5, False)
    init = MixtureParams(
        jnp.asarray(w0, jnp.float32), jnp.asarray(mu0, jnp.float32), None, task.component_mask
    )
    est, _ = em_from(task, init, max_iter=20, tol=0.0, variant="isotropic")
    # Garbage in padded points (NaN, huge) and in the padded components' initial means.
    pad = ~task.point_mask[..., None]
    garbage = jnp.where(jnp.arange(5)[None, None, :] % 2 == 0, jnp.nan, 1e6)
    noisy_points = jnp.where(pad, garbage, task.points)
    noisy_mu0 = jnp.where(task.component_mask[..., None], init.means, 1e4)
    est2, info2 = em_from(
        task.replace(points=noisy_points),
        init.replace(means=noisy_mu0),
        max_iter=20,
        tol=0.0,
        variant="isotropic",
    )
    np.testing.assert_allclose(np.asarray(est2.means), np.asarray(est.means), atol=1e-5)
    np.testing.assert_allclose(np.asarray(est2.weights), np.asarray(est.weights), atol=1e-6)
    assert bool(jnp.all(info2["valid"]))


def _sklearn_means(task, covariance_type, n_init):
    out = np.zeros(task.means.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for b in range(task.points.shape[0]):
            k = int(task.num_components[b])
            x = np.asarray(task.points[b], np.float64)[np.asarray(task.point_mask[b])]
            gm = GaussianMixture(
                k,
                covariance_type=covariance_type,
                n_init=n_init,
                init_params="k-means++",
                max_iter=100,
                tol=1e-5,
                random_state=b,
            ).fit(x)
            out[b, :k] = gm.means_
    return out


@pytest.mark.parametrize("variant,covariance_type", [("isotropic", "spherical"), ("anisotropic", "diag")])
@pytest.mark.slow
def test_kmeanspp_em_matches_sklearn_quality(variant, covariance_type):
    task = make_tasks(11, [2, 3, 4, 5] * 10, 8, 128, variant=variant)
    est, info = fast_baseline("em_kmeanspp", variant=variant)(jax.random.key(0), task)
    ours = aligned_l2_means(est.means, task).mean()
    ref = aligned_l2_means(_sklearn_means(task, covariance_type, 10), task).mean()
    assert ours <= 1.1 * ref, (ours, ref)
    assert bool(jnp.all(info["valid"])) and bool(jnp.all(info["converged"]))


@pytest.mark.slow
def test_official_em_recovers_two_components_and_compiles_once():
    # chex counts traces of the jitted function: two batches of one shape (different data) must not retrace.
    chex.clear_trace_counter()  # the counter is per function and global; other tests trace it too
    traced = jax.jit(
        chex.assert_max_traces(em._fit_em, n=1), static_argnames="config", compiler_options=FAST_COMPILE
    )
    for seed in range(2):
        task = make_tasks(seed, [2] * 64, 2, 128)
        est, info = traced(jax.random.key(seed), task, EMConfig(init="official"))
        # the oracle level is ~0.016 at N = 128 (docs/official_differences.md §5)
        assert np.median(aligned_l2_means(est.means, task)) < 0.05
        assert int(jnp.max(info["n_iter"])) <= 100


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(init="kmeans"), "initialisation"),
        (dict(n_init=0), "n_init"),
        (dict(max_iter=0), "max_iter"),
        (dict(tol=-1.0), "tol"),
        (dict(variant="full"), "variant"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EMConfig(**kwargs)
