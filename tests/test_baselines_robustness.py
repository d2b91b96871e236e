"""Every registered baseline on adversarial tasks: finite answers (or a flag), one compilation per shape."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from baselines import BASELINES, NAMES, applies_to, get_baseline, spectral
from tests.baseline_helpers import FAST_COMPILE, fast_baseline, make_tasks

jax.config.update("jax_numpy_rank_promotion", "raise")  # also set by tests/conftest.py


def _adversarial_tasks(seed, num_tasks, dim, n_max):
    """A mix of hard cases, each task from one family, padded to K_max = 5 and n_max points."""
    rng = np.random.default_rng(seed)
    ks = list(rng.integers(1, 6, size=num_tasks))
    task = make_tasks(seed, ks, dim, n_max)
    points, mask = np.array(task.points), np.array(task.point_mask)
    family = np.arange(num_tasks) % 6
    for b in range(num_tasks):
        k = ks[b]
        if family[b] == 0:  # components on top of each other
            centre = rng.uniform(-5, 5, size=dim)
            points[b] = centre + 0.01 * (points[b] - points[b].mean(0)) + rng.normal(size=(n_max, dim))
        elif family[b] == 1:  # points scaled x100
            points[b] *= 100.0
        elif family[b] == 2:  # N barely above K
            mask[b] = np.arange(n_max) < k + 1
        elif family[b] == 3:  # duplicated points: only two distinct values
            points[b] = np.where(np.arange(n_max)[:, None] % 2 == 0, points[b, 0], points[b, 1])
        elif family[b] == 4:  # far from the origin
            points[b] += 1e4
        # family 5: plain Algorithm-1 tasks
    points = np.where(mask[..., None], points, np.nan)  # padding holds NaN: it must never leak
    return task.replace(points=jnp.asarray(points, jnp.float32), point_mask=jnp.asarray(mask))


def _check_finite(name, est, info, task):
    real = np.asarray(task.component_mask)
    valid = np.asarray(info["valid"])
    w, mu = np.asarray(est.weights), np.asarray(est.means)
    assert np.all(np.isfinite(w[valid][real[valid]])), name
    assert np.all(np.isfinite(mu[valid][real[valid]])), name
    np.testing.assert_allclose(w[valid].sum(-1), 1.0, rtol=1e-4, err_msg=name)
    assert np.all(w[~real] == 0), name
    if est.scales is not None:
        assert np.all(np.isfinite(np.asarray(est.scales)[valid])), name
    return valid


def _expected_valid(name, info):
    """Every task, or for spectral those whose lambda_K clears its noise floor (baselines.spectral)."""
    if name == "spectral":
        return np.asarray(info["lambda_k_z"]) > spectral.WHITENING_MIN_Z
    return np.ones_like(np.asarray(info["valid"]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_2000_adversarial_tasks_finite_and_traced_once(name):
    chex.clear_trace_counter()  # the counter is per function and global; other tests trace it too
    fn = BASELINES[name]
    traced = jax.jit(
        chex.assert_max_traces(fn.func.__wrapped__, n=1),
        static_argnames="config",
        compiler_options=FAST_COMPILE,
    )
    for seed in range(2):  # 2 x 1000 tasks of one shape: the second call must not retrace
        task = _adversarial_tasks(seed, 1000, 6, 16)
        est, info = traced(jax.random.key(seed), task, config=fn.keywords["config"])
        valid = _check_finite(name, est, info, task)
        # K <= 5 < D = 6: every task applies, except where spectral finds its whitening ill-conditioned
        np.testing.assert_array_equal(valid, _expected_valid(name, info), err_msg=name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_dimension_128(name):
    task = _adversarial_tasks(7, 36, 128, 32)
    # OpenBLAS's threads (LAPACK eigh of 128 x 128 matrices) spin for seconds on a busy 2-core machine.
    with threadpool_limits(1):
        est, info = fast_baseline(name)(jax.random.key(0), task)
    np.testing.assert_array_equal(
        _check_finite(name, est, info, task), _expected_valid(name, info), err_msg=name
    )


def test_registry_names_variants_and_errors():
    assert tuple(BASELINES) == ("em", "em_kmeanspp", "spectral", "two_round_em", "gradient_em", "em_seeded")
    assert [applies_to(n, "anisotropic") for n in NAMES] == [True, True, False, True, True, True]
    assert get_baseline("em_kmeanspp", variant="anisotropic", n_init=3).keywords["config"].n_init == 3
    assert BASELINES["em"].keywords["config"].init == "official"
    assert BASELINES["em_kmeanspp"].keywords["config"].n_init == 10
    with pytest.raises(ValueError, match="unknown baseline"):
        get_baseline("kmeans")
    with pytest.raises(ValueError, match="unknown variant"):
        get_baseline("em", variant="full")
    with pytest.raises(ValueError, match="unknown setting"):
        get_baseline("em", n_restarts=3)
    with pytest.raises(ValueError, match="n_init"):
        get_baseline("em", n_init=0)
