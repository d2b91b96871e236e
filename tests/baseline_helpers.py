"""NumPy task batches and NumPy scoring for the baseline tests.

Why not ``sample_tasks`` / ``evaluate_estimates``: the tests of the baselines need many small batches of
different shapes, and compiling the sampler (tens of seconds on a 2-core CPU) or running the metrics
eagerly would dominate their run time. NumPy tasks with the same law as Algorithm 1
(docs/official_differences.md §1) and a
Hungarian-aligned l2 computed with SciPy are also independent references for the JAX code under test.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from baselines import get_baseline
from tgmm_jax.tasks import GMMTask


def _means(rng, k, d, cos_threshold=0.8):
    while True:
        mu = rng.uniform(-5, 5, size=(k, d))
        unit = mu / np.linalg.norm(mu, axis=-1, keepdims=True)
        cos = unit @ unit.T
        np.fill_diagonal(cos, -1)
        if k == 1 or cos.max() < cos_threshold:
            return mu


def make_tasks(
    seed,
    ks,
    dim,
    n_max,
    *,
    n_min=None,
    variant="isotropic",
    k_max=None,
    mean_scale=1.0,
    point_scale=1.0,
    means=None,
) -> GMMTask:
    """One task per entry of ``ks`` (its K), padded to K_max and n_max; N ~ U{n_min..n_max} if n_min given."""
    rng = np.random.default_rng(seed)
    k_max = k_max or max(ks)
    b = len(ks)
    points = np.zeros((b, n_max, dim), np.float32)
    mask = np.zeros((b, n_max), bool)
    labels = np.zeros((b, n_max), np.int32)
    weights = np.zeros((b, k_max), np.float32)
    mus = np.zeros((b, k_max, dim), np.float32)
    scales = np.ones((b, k_max, dim), np.float32)
    for i, k in enumerate(ks):
        w = np.sort(rng.uniform(0.2, 0.8, size=k))
        w /= w.sum()
        mu = (_means(rng, k, dim) if means is None else means[i]) * mean_scale
        sc = (
            np.ones((k, dim))
            if variant == "isotropic"
            else 2 * np.log1p(np.exp(rng.uniform(-5, 5, (k, dim)) / 5))
        )
        n = n_max if n_min is None else int(rng.integers(n_min, n_max + 1))
        z = rng.choice(k, size=n_max, p=w)
        x = (mu[z] + sc[z] * rng.normal(size=(n_max, dim))) * point_scale
        points[i], labels[i], mask[i, :n] = x, z, True
        weights[i, :k], mus[i, :k], scales[i, :k] = w, mu * point_scale, sc * point_scale
    return GMMTask(
        points=jnp.asarray(points),
        point_mask=jnp.asarray(mask),
        labels=jnp.asarray(labels),
        weights=jnp.asarray(weights),
        means=jnp.asarray(mus),
        scales=jnp.asarray(scales),
        component_mask=jnp.asarray(np.arange(k_max)[None, :] < np.asarray(ks)[:, None]),
        num_components=jnp.asarray(np.asarray(ks, np.int32)),
    )


def aligned_l2_means(est_means, task: GMMTask) -> np.ndarray:
    """Per task: min over matchings of 1/(K D) sum_k ||mu_hat - mu||^2 (Hungarian, SciPy)."""
    est, true = np.asarray(est_means, np.float64), np.asarray(task.means, np.float64)
    out = np.zeros(est.shape[0])
    for b, k in enumerate(np.asarray(task.num_components)):
        cost = ((est[b, :k, None, :] - true[b, None, :k, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        out[b] = cost[rows, cols].sum() / (k * est.shape[-1])
    return out


# Tests check numbers, not speed: compiling without LLVM optimisations roughly halves the compile time of
# each program (the arithmetic is the same; XLA does not reassociate floating point at any level).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def fast_jit(fn, **jit_kwargs):
    """``jax.jit`` of the undecorated ``fn`` (a jitted function) with test compile options."""
    return jax.jit(getattr(fn, "__wrapped__", fn), compiler_options=FAST_COMPILE, **jit_kwargs)


def fast_baseline(name, variant="isotropic", **overrides):
    """A registered baseline as ``fn(key, task)``, compiled with the test compile options."""
    partial = get_baseline(name, variant=variant, **overrides)
    fit = fast_jit(partial.func, static_argnames="config")
    return functools.partial(fit, config=partial.keywords["config"])


REG = 1e-6


def numpy_em(x, weights, means, variances, max_iter, tol):
    """Textbook EM in float64 on one task's real points (variances None = unit, known; ``REG`` added to estimated
    variances, as the mixture core's VARIANCE_REG): (weights, means, variances, n_iter, log-likelihood at the
    last E-step). The independent reference of the EM tests."""
    n = x.shape[0]
    prev, n_iter = -np.inf, 0
    for _ in range(max_iter):
        var = np.ones_like(means) if variances is None else variances
        log_p = (
            np.log(weights)[None, :]
            - 0.5 * np.sum((x[:, None, :] - means[None]) ** 2 / var[None], axis=-1)
            - 0.5 * np.sum(np.log(2 * np.pi * var), axis=-1)[None, :]
        )
        lse = logsumexp(log_p, axis=1)
        ll = lse.mean()
        resp = np.exp(log_p - lse[:, None])
        nk = resp.sum(0)
        weights = nk / n
        means = resp.T @ x / nk[:, None]
        if variances is not None:
            variances = resp.T @ (x**2) / nk[:, None] - means**2 + REG
        n_iter += 1
        if abs(ll - prev) < tol:
            break
        prev = ll
    return weights, means, variances, n_iter, ll
