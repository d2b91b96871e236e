"""Metrics against independent references: SciPy's Hungarian solver, SciPy logsumexp, brute-force loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from tgmm_jax.gmm import MixtureParams
from tgmm_jax.metrics import align_components, evaluate_estimates, permutations
from tgmm_jax.tasks import GMMTask, TaskSpec, sample_tasks


@pytest.fixture(scope="module")
def task():
    return sample_tasks(jax.random.key(0), TaskSpec(dim=3, n_max=32, variable_n=True), 25)


def _noisy_shuffled_estimate(task, key, noise=1.5):
    """Estimates with noise and a random order of the real components per task."""
    k_key, n_key, w_key = jax.random.split(key, 3)
    _, k_max, _ = task.means.shape
    perms = []
    for i, k in enumerate(np.asarray(task.num_components)):
        p = np.asarray(jax.random.permutation(jax.random.fold_in(k_key, i), k))
        perms.append(np.concatenate([p, np.arange(k, k_max)]))
    perms = jnp.asarray(np.stack(perms))
    take = jax.vmap(lambda a, idx: a[idx])
    means = take(task.means, perms) + noise * jax.random.normal(n_key, task.means.shape)
    w = take(task.weights, perms) * jnp.exp(0.3 * jax.random.normal(w_key, task.weights.shape))
    w = w / jnp.sum(w, -1, keepdims=True)
    return MixtureParams(w, means, None, task.component_mask)


def _reference(est, task):
    """Per-task metrics with SciPy's linear_sum_assignment and float64 loops."""
    out = {
        name: [] for name in ("l2_means", "l2_weights", "l2_official", "cluster_acc", "loglik", "loglik_true")
    }
    for b in range(task.means.shape[0]):
        k = int(task.num_components[b])
        d = task.means.shape[-1]
        mu_hat = np.asarray(est.means[b, :k], np.float64)
        w_hat = np.asarray(est.weights[b, :k], np.float64)
        mu = np.asarray(task.means[b, :k], np.float64)
        w = np.asarray(task.weights[b, :k], np.float64)
        cost = ((mu_hat[:, None, :] - mu[None, :, :]) ** 2).sum(-1) / d  # rows: estimates, cols: truth
        rows, cols = linear_sum_assignment(cost)
        est_for_true = np.empty(k, int)
        est_for_true[cols] = rows
        out["l2_means"].append(((mu_hat[est_for_true] - mu) ** 2).mean())
        out["l2_weights"].append(((w_hat[est_for_true] - w) ** 2).mean())
        # the official code: mu_est[perm] with perm = col_ind (the inverse of the correct reordering)
        out["l2_official"].append(((mu_hat[cols] - mu) ** 2).mean() + ((w_hat[cols] - w) ** 2).mean())
        n = int(task.point_mask[b].sum())
        x = np.asarray(task.points[b, :n], np.float64)

        def log_joint(means, weights, x=x, d=d):
            sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
            return np.log(weights)[None] - 0.5 * sq - 0.5 * d * np.log(2 * np.pi)

        lj_hat = log_joint(mu_hat[est_for_true], w_hat[est_for_true])
        out["cluster_acc"].append((lj_hat.argmax(-1) == np.asarray(task.labels[b, :n])).mean())
        out["loglik"].append(logsumexp(log_joint(mu_hat, w_hat), axis=-1).mean())
        out["loglik_true"].append(logsumexp(log_joint(mu, w), axis=-1).mean())
    return {name: np.asarray(v) for name, v in out.items()}


@pytest.mark.slow
def test_evaluate_matches_scipy_reference(task):
    est = _noisy_shuffled_estimate(task, jax.random.key(1))
    got = jax.jit(evaluate_estimates)(est, task)
    ref = _reference(est, task)
    for name, want in ref.items():
        np.testing.assert_allclose(np.asarray(got[name]), want, rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got["l2"], ref["l2_means"] + ref["l2_weights"], rtol=1e-4)
    np.testing.assert_allclose(got["oracle_gap"], ref["loglik_true"] - ref["loglik"], rtol=1e-3, atol=1e-4)
    assert bool(jnp.all(got["applicable"]))
    # the shuffles make the official alignment wrong on many K >= 3 tasks
    k3plus = np.asarray(task.num_components) >= 3
    assert (
        np.mean(ref["l2_official"][k3plus] > ref["l2_means"][k3plus] + ref["l2_weights"][k3plus] + 1e-3) > 0.3
    )


@pytest.mark.slow
def test_alignment_is_exact_on_random_k5_costs():
    """Random (not near-true) K=5 estimates: brute force over 120 permutations == Hungarian optimum."""
    rng = np.random.default_rng(0)
    b, k, d = 200, 5, 4
    est = rng.normal(size=(b, k, d)).astype(np.float32)
    true = rng.normal(size=(b, k, d)).astype(np.float32)
    mask = np.ones((b, k), bool)
    got = np.asarray(align_components(jnp.asarray(est), jnp.asarray(true), jnp.asarray(mask)))
    for i in range(b):
        cost = ((est[i][:, None] - true[i][None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        np.testing.assert_allclose(cost[got[i], np.arange(k)].sum(), cost[rows, cols].sum(), rtol=1e-5)


def test_alignment_ignores_padded_components():
    """K=3 tasks padded to 5: padded estimate slots are never matched to real components."""
    rng = np.random.default_rng(1)
    est = rng.normal(size=(50, 5, 2)).astype(np.float32)
    est[:, 3:] = 0.0  # padded estimate slots sit near the origin, where they would win if allowed
    true = rng.normal(size=(50, 5, 2)).astype(np.float32) * 3
    mask = np.arange(5)[None] < 3
    mask = np.broadcast_to(mask, (50, 5))
    got = np.asarray(align_components(jnp.asarray(est), jnp.asarray(true), jnp.asarray(mask)))
    assert np.all(got[:, :3] < 3) and np.all(np.sort(got[:, 3:], -1) == [3, 4])
    for i in range(50):
        cost = ((est[i, :3][:, None] - true[i, :3][None]) ** 2).sum(-1)
        r, c = linear_sum_assignment(cost)
        np.testing.assert_allclose(cost[got[i, :3], np.arange(3)].sum(), cost[r, c].sum(), rtol=1e-5)


def test_host_fallback_for_large_k():
    rng = np.random.default_rng(2)
    est = jnp.asarray(rng.normal(size=(6, 8, 3)), jnp.float32)
    true = jnp.asarray(rng.normal(size=(6, 8, 3)), jnp.float32)
    mask = jnp.ones((6, 8), bool)
    got = np.asarray(jax.jit(align_components)(est, true, mask))
    for i in range(6):
        cost = np.asarray(((est[i][:, None] - true[i][None]) ** 2).sum(-1))
        r, c = linear_sum_assignment(cost)
        np.testing.assert_allclose(cost[got[i], np.arange(8)].sum(), cost[r, c].sum(), rtol=1e-5)


@pytest.mark.slow
def test_official_alignment_toy_example():
    """docs/official_differences.md §7: truth [A, B, C], estimate [B, C, A]: correct l2 = 0; the official
    code reorders the
    estimate by col_ind = [1, 2, 0] to [C, A, B], i.e. squared errors 400 + 200 + 200 over K d = 6."""
    a, b_, c = np.array([10.0, 0.0]), np.array([0.0, 10.0]), np.array([-10.0, 0.0])
    true_means = np.stack([a, b_, c])[None].astype(np.float32)
    est_means = np.stack([b_, c, a])[None].astype(np.float32)
    w = np.full((1, 3), 1 / 3, np.float32)
    points = jnp.asarray(true_means[:, [0, 1, 2, 0]])
    task = GMMTask(
        points=points,
        point_mask=jnp.ones((1, 4), bool),
        labels=jnp.asarray([[0, 1, 2, 0]]),
        weights=jnp.asarray(w),
        means=jnp.asarray(true_means),
        scales=jnp.ones_like(points[:, :3]),
        component_mask=jnp.ones((1, 3), bool),
        num_components=jnp.asarray([3]),
    )
    est = MixtureParams(jnp.asarray(w), jnp.asarray(est_means), None, task.component_mask)
    got = evaluate_estimates(est, task)
    assert float(got["l2"][0]) < 1e-6
    np.testing.assert_allclose(float(got["l2_official"][0]), 800 / 6, rtol=1e-5)


def test_permutations_table():
    p = permutations(4)
    assert p.shape == (24, 4) and len({tuple(r) for r in p}) == 24
    assert sorted(map(tuple, p)) == sorted(itertools.permutations(range(4)))


@pytest.mark.slow
def test_nan_estimates_are_flagged_not_applicable(task):
    est = _noisy_shuffled_estimate(task, jax.random.key(2))
    bad = est.replace(means=est.means.at[:5].set(jnp.nan), weights=est.weights.at[:5].set(jnp.nan))
    got = evaluate_estimates(bad, task)
    assert not bool(jnp.any(got["applicable"][:5])) and bool(jnp.all(got["applicable"][5:]))
    assert bool(jnp.all(jnp.isnan(got["l2"][:5]))) and bool(jnp.all(jnp.isfinite(got["l2"][5:])))


@pytest.mark.slow
def test_anisotropic_scales_metric_and_shape_errors(task):
    est = task.params().replace(scales=task.scales + 0.5)
    got = evaluate_estimates(est, task)
    np.testing.assert_allclose(got["l2_scales"], 0.25, rtol=1e-5)
    with pytest.raises(ValueError, match="means"):
        evaluate_estimates(est.replace(means=est.means[:, :3]), task)


@pytest.mark.slow
def test_scales_error_matches_brute_force_alignment(task):
    """l2_scales on shuffled noisy estimates: every permutation scored in float64 loops (the means decide)."""
    est = _noisy_shuffled_estimate(task, jax.random.key(7), noise=0.7)
    scales = jnp.exp(0.4 * jax.random.normal(jax.random.key(8), est.means.shape))
    got = np.asarray(evaluate_estimates(est.replace(scales=scales), task)["l2_scales"])
    means, true_means = np.asarray(est.means, np.float64), np.asarray(task.means, np.float64)
    s_hat, s_true = np.asarray(scales, np.float64), np.asarray(task.scales, np.float64)
    for b, k in enumerate(np.asarray(task.num_components)):
        best = min(
            itertools.permutations(range(k)),
            key=lambda p: sum(np.sum((means[b, p[j]] - true_means[b, j]) ** 2) for j in range(k)),
        )
        want = sum(np.sum((s_hat[b, best[j]] - s_true[b, j]) ** 2) for j in range(k)) / (k * means.shape[-1])
        np.testing.assert_allclose(got[b], want, rtol=1e-5)
