"""Spectral baseline against population moments, a NumPy + tensorly pipeline, and its own two tensor forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from tensorly.decomposition import SymmetricCP

from baselines import get_baseline, spectral
from baselines.spectral import SpectralConfig, tensor_power_method, whitened_moments
from benchmarks.references import numpy_whitened_tensor, tensorly_decompose
from tests.baseline_helpers import FAST_COMPILE, aligned_l2_means, fast_jit, make_tasks
from tgmm_jax.metrics import applicable

jax.config.update("jax_numpy_rank_promotion", "raise")  # also set by tests/conftest.py
fit_spectral = fast_jit(spectral.fit_spectral, static_argnames="config")


def _numpy_tensorly_spectral(x, k, seed):
    """The official pipeline: NumPy moments + tensorly SymmetricCP (L = 10, 10 x 3 power updates)."""
    t, unwhiten = numpy_whitened_tensor(x, k)
    np.random.seed(seed)  # tensorly draws its restarts from NumPy's global generator
    return tensorly_decompose(t, unwhiten, k)


@pytest.mark.slow
def test_recovers_parameters_from_population_size_samples():
    task = make_tasks(0, [4] * 6, 8, 50_000)
    est, info = fit_spectral(jax.random.key(0), task)
    l2 = aligned_l2_means(est.means, task)
    assert l2.max() < 0.05, l2
    assert bool(jnp.all(info["valid"]))
    np.testing.assert_allclose(np.asarray(info["sigma2"]), 1.0, atol=0.05)
    # weights: ascending (tensorly's order: largest lambda = smallest weight first), close to the truth
    np.testing.assert_allclose(np.sort(np.asarray(est.weights), -1), np.asarray(task.weights), atol=0.02)


@pytest.mark.slow
def test_whitened_tensor_eigenpairs_agree_with_tensorly():
    task = make_tasks(1, [3, 4] * 6, 8, 128)
    moments = fast_jit(whitened_moments, static_argnames="k_max")
    power = fast_jit(tensor_power_method, static_argnames=("config", "implicit"))
    m = moments(task.points, task.point_mask, task.num_components, k_max=4)
    lams, vecs = power(jax.random.key(0), m, SpectralConfig(), implicit=False)
    tensors = np.asarray(m.tensor_BxKxKxK, np.float64)
    agree = 0
    for b in range(tensors.shape[0]):
        k = int(task.num_components[b])
        np.random.seed(b)
        lam_ref, vec_ref = SymmetricCP(rank=k, n_repeat=10, n_iteration=10).fit_transform(
            tensors[b, :k, :k, :k]
        )
        ours_v = np.asarray(vecs[b, :k, :k])
        cost = ((ours_v[:, None, :] - vec_ref.T[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        if cost[rows, cols].max() < 1e-4:
            agree += 1
            np.testing.assert_allclose(np.asarray(lams[b, :k])[rows], lam_ref[cols], rtol=1e-3)
        assert np.all(np.asarray(vecs[b, k:]) == 0) and np.all(np.asarray(lams[b, k:]) == 0)
    # Both are randomised; on these tasks they find the same eigenpairs (almost) always.
    assert agree >= tensors.shape[0] - 1


@pytest.mark.slow
def test_estimates_agree_with_numpy_tensorly_pipeline_and_implicit_form():
    task = make_tasks(2, [2, 3, 4, 5] * 4, 8, 128)
    est, _ = fit_spectral(jax.random.key(1), task)
    est_implicit, _ = fit_spectral(jax.random.key(1), task, SpectralConfig(tensor_form="implicit"))
    # The implicit form applies the same tensor to the same restarts: same answer up to float32 rounding.
    np.testing.assert_allclose(np.asarray(est_implicit.means), np.asarray(est.means), atol=2e-3)
    close = 0
    for b in range(task.points.shape[0]):
        k = int(task.num_components[b])
        w_ref, mu_ref = _numpy_tensorly_spectral(np.asarray(task.points[b], np.float64), k, b)
        ours = np.asarray(est.means[b, :k])
        cost = ((ours[:, None, :] - mu_ref[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        if cost[rows, cols].max() / task.means.shape[-1] < 1e-3:
            close += 1
            np.testing.assert_allclose(np.asarray(est.weights[b, :k])[rows], w_ref[cols], atol=1e-3)
    assert close >= task.points.shape[0] - 2


_MEANS_2D = [
    np.array([[4.0, 1.0], [-1.0, 4.0]]),
    np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]]),
    np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, 0.0], [0.0, -4.0]]),
    np.array([[4.0, 1.0], [-1.0, 4.0]]),
]


@pytest.mark.slow
def test_k_above_d_is_flagged_not_answered_and_compiles_once():
    chex.clear_trace_counter()  # the counter is per function and global; other tests trace it too
    traced = jax.jit(
        chex.assert_max_traces(spectral._fit_spectral, n=1),
        static_argnames="config",
        compiler_options=FAST_COMPILE,
    )
    for seed in range(2):  # two batches of one shape: no retrace
        # D = 2: only K = 2 applies (its means orthogonal, so that the whitening is well conditioned)
        task = make_tasks(seed, [2, 3, 4, 2], 2, 64, n_min=40, means=_MEANS_2D)
        est, info = traced(jax.random.key(seed), task, SpectralConfig())
        valid = np.asarray(info["valid"])
        np.testing.assert_array_equal(valid, [True, False, False, True])
        real = np.asarray(task.component_mask)
        w, mu = np.asarray(est.weights), np.asarray(est.means)
        assert np.all(np.isnan(w[~valid][real[~valid]])) and np.all(np.isnan(mu[~valid][real[~valid]]))
        assert np.all(np.isfinite(w[valid])) and np.all(np.isfinite(mu[valid]))
        np.testing.assert_array_equal(np.asarray(applicable(est, task)), valid)


def _numpy_lambda_k_z(x, k):
    """lambda_K / (2 sigma^2 / sqrt(N)) in float64 from the module docstring (an independent reference)."""
    n, d = x.shape
    xc = x - x.mean(0)
    sigma2 = np.linalg.eigvalsh(xc.T @ xc / n)[0]
    lam_k = np.linalg.eigvalsh(x.T @ x / n - sigma2 * np.eye(d))[d - k]
    return lam_k / (2 * sigma2 / np.sqrt(n))


def _collinear_means(rng, num_tasks, k, dim):
    """K means on one line through the origin (M2 has rank 1), at least 3 apart along it."""
    out = []
    for _ in range(num_tasks):
        direction = rng.normal(size=dim)
        while True:
            t = rng.uniform(-5, 5, size=k)
            if np.min(np.diff(np.sort(t))) > 3:
                break
        out.append(t[:, None] * direction / np.linalg.norm(direction))
    return out


@pytest.mark.slow
def test_collinear_means_at_k_equals_d_are_flagged_not_applicable():
    # Before the whitening check, spectral answered these with l2 errors up to ~1e7.
    rng = np.random.default_rng(0)
    task = make_tasks(3, [2] * 64, 2, 128, means=_collinear_means(rng, 64, 2, 2))
    est, info = fit_spectral(jax.random.key(0), task)
    assert not np.any(np.asarray(info["valid"]))
    assert not np.any(np.asarray(applicable(est, task)))  # scored as not applicable
    assert np.all(np.isnan(np.asarray(est.means)))
    assert np.all(np.asarray(info["lambda_k_z"]) <= spectral.WHITENING_MIN_Z)


@pytest.mark.slow
def test_whitening_check_matches_numpy_and_is_scale_free():
    task = make_tasks(4, [1, 2, 3, 2, 3, 2], 3, 96, n_min=50)
    m = fast_jit(whitened_moments, static_argnames="k_max")(
        task.points, task.point_mask, task.num_components, k_max=3
    )
    for b, k in enumerate(np.asarray(task.num_components)):
        x = np.asarray(task.points[b], np.float64)[np.asarray(task.point_mask[b])]
        np.testing.assert_allclose(float(m.lambda_k_z_B[b]), _numpy_lambda_k_z(x, k), rtol=2e-3)
    _, info = fit_spectral(jax.random.key(0), task)
    _, info_x100 = fit_spectral(jax.random.key(0), task.replace(points=task.points * 100.0))
    np.testing.assert_allclose(np.asarray(info_x100["lambda_k_z"]), np.asarray(info["lambda_k_z"]), rtol=2e-3)


@pytest.mark.parametrize(
    "dim, ks",
    [
        (3, [1, 2]),
        (5, [2, 3]),
        (8, [2, 3, 4]),  # K < D: well-separated means in U[-5, 5]^D with the cosine filter
        (2, [2]),  # K = D with (nearly) orthogonal means: a well-conditioned whitening
        (4, [4]),
    ],
)
@pytest.mark.slow
def test_well_separated_tasks_are_answered(dim, ks):
    rng = np.random.default_rng(dim)
    means = None
    if ks == [dim]:  # a random rotation of 4 e_1..4 e_D, tilted a little
        means = [4 * np.linalg.qr(rng.normal(size=(dim, dim)))[0] + 0.3 * rng.normal(size=(dim, dim))] * 200
    task = make_tasks(dim, ks * (200 // len(ks)), dim, 128, means=means)
    _, info = fit_spectral(jax.random.key(1), task)
    assert np.mean(~np.asarray(info["valid"])) < 0.02, np.sort(np.asarray(info["lambda_k_z"]))[:10]


@pytest.mark.slow
def test_algorithm_1_tasks_at_d8_are_rarely_flagged():
    # The sampler's law (tests.baseline_helpers), d = 8, N = 128: lambda_K is far above the noise floor.
    task = make_tasks(5, [2, 3, 4, 5] * 100, 8, 128)
    _, info = fit_spectral(jax.random.key(2), task)
    assert np.mean(~np.asarray(info["valid"])) < 0.02


def test_anisotropic_and_bad_settings_raise():
    with pytest.raises(ValueError, match="does not apply to the anisotropic"):
        get_baseline("spectral", variant="anisotropic")
    with pytest.raises(ValueError, match="tensor_form"):
        SpectralConfig(tensor_form="dense")
    with pytest.raises(ValueError, match="n_restarts"):
        SpectralConfig(n_restarts=0)
    with pytest.raises(ValueError, match="unknown setting"):
        get_baseline("spectral", n_repeat=5)
