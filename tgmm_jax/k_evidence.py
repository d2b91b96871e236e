"""Likelihood evidence for the number of components: the best tied-spherical EM fit of every K = 1..K_max.

    loglik_BxK = max_log_likelihood_per_k(points_BxNxD, point_mask_BxN, order_key_BxN, k_max=8)

For each task and each K, ``restarts`` EM runs of a mixture with one shared spherical variance (the task
prior's model: every component has the same isotropic noise, its size unknown) from k-means++ starts, ``steps``
iterations each; the output is the highest mean log-likelihood per point of the R runs, in the units of the
task's own normalised coordinates (centred, divided by the root mean per-coordinate variance). Differences
``loglik[K] - loglik[1]`` are what BIC reads (it adds a penalty per parameter); ``KPosterior`` with
``evidence_restarts > 0`` reads them next to its set features, so it can do at least what a likelihood
criterion does where one works (large N, separated components) and learn the penalty where it fails.

Why a shared variance: with one variance per component a component can sit on a single point and the
likelihood is unbounded (the BIC baseline has to discard such restarts); a shared variance cannot collapse,
and it is the prior's model. The variance is floored at ``VARIANCE_FLOOR`` of the data's (normalised: 1).

Invariances. The points are read in the order of ``order_key_BxN`` (ascending; padded points last) before the
seeding, whose draws come from a fixed key, so the result does not depend on the order of the points when the
key is a function of each point alone (``KPosterior`` uses its first principal coordinate, signed by the
data's third moment: also invariant to rotations and translations). Centring and the normalisation make the
differences between K exactly invariant to x -> c x + b.

The E-step is ``fused``'s layout (one matmul per iteration on the centred points), with the shared variance
dividing the logits; the M-step is ``fused.m_step`` (weights, means) plus the pooled variance
``(mean ||x||^2 - sum_k w_k ||mu_k||^2) / D``, the exact maximiser for a shared spherical variance.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from tgmm_jax.mixture import fused, seeding

VARIANCE_FLOOR = 1e-4  # of the normalised data's per-coordinate variance (1)
_LOG_2PI = math.log(2.0 * math.pi)
_SEED = 20261206  # the seeding's fixed draws


def _tied_e_step(data: fused.ChunkData, state: fused.FitState, var_CxR, comp_CxK):
    """(responsibilities [C, R, K, N], mean log-likelihood per point [C, R]) under a shared variance."""
    mu = state.means_CxRxKxD
    x_dot_mu = jnp.einsum("crkd,cdn->crkn", mu, data.feats_CxFxN, precision=fused.HIGHEST)
    log_w = fused._log_weights(state.weights_CxRxK, comp_CxK[:, None, :])
    inv_var = (1.0 / var_CxR)[..., None, None]
    logits = (x_dot_mu - 0.5 * jnp.sum(mu**2, axis=-1)[..., None]) * inv_var + log_w[..., None]
    resp, lse_CxRxN = fused.softmax_components(logits)
    resp = resp * data.mask_CxN[:, None, None, :]
    mean_lse = (
        jnp.sum(jnp.where(data.mask_CxN[:, None, :] > 0, lse_CxRxN, 0.0), -1) / data.num_points_C[:, None]
    )
    d = mu.shape[-1]
    loglik = mean_lse - 0.5 * data.sq_norm_mean_C[:, None] / var_CxR - 0.5 * d * (_LOG_2PI + jnp.log(var_CxR))
    return resp, loglik


def _tied_variance(data: fused.ChunkData, state: fused.FitState):
    """The shared variance maximising the expected log-likelihood at the M-step's means: [C, R]."""
    d = state.means_CxRxKxD.shape[-1]
    between = jnp.sum(state.weights_CxRxK * jnp.sum(state.means_CxRxKxD**2, -1), -1)
    return jnp.maximum((data.sq_norm_mean_C[:, None] - between) / d, VARIANCE_FLOOR)


def best_fits(points_BxNxD, point_mask_BxN, order_key_BxN, k_max: int, restarts: int, steps: int):
    """The fits behind ``max_log_likelihood_per_k``, in the task's normalised coordinates: a dict of the
    normalised points ``x_BxNxD`` (in the canonical order) and their ``mask_BxN``, and per (task, K) the best
    restart's ``weights_BxKxK``, ``means_BxKxKxD``, shared ``variance_BxK`` and ``loglik_BxK`` (mean per point;
    the second axis is K - 1, the third the components, zero beyond K), and each task's ``spread_B`` (the
    root mean per-coordinate variance the points were divided by; 0 for a task without spread)."""
    if restarts < 1 or steps < 0:
        raise ValueError(f"need restarts >= 1 and steps >= 0, got restarts={restarts}, steps={steps}")
    points_BxNxD = jax.lax.stop_gradient(jnp.asarray(points_BxNxD, jnp.float32))
    mask_BxN = point_mask_BxN.astype(bool)
    b, _, d = points_BxNxD.shape
    # read the points in a canonical order: padded ones last, then ascending key
    key_BxN = jnp.where(mask_BxN, jax.lax.stop_gradient(order_key_BxN), jnp.inf)
    order_BxN = jnp.argsort(key_BxN, axis=-1)
    points_BxNxD = jnp.take_along_axis(points_BxNxD, order_BxN[..., None], axis=1)
    mask_BxN = jnp.take_along_axis(mask_BxN, order_BxN, axis=1)
    points_BxNxD = jnp.where(mask_BxN[..., None], points_BxNxD, 0.0)
    # centred, unit mean per-coordinate variance
    count_B = jnp.maximum(jnp.sum(mask_BxN, -1), 1).astype(jnp.float32)
    centre_BxD = jnp.sum(points_BxNxD, 1) / count_B[:, None]
    x_BxNxD = jnp.where(mask_BxN[..., None], points_BxNxD - centre_BxD[:, None], 0.0)
    spread_B = jnp.sqrt(jnp.sum(x_BxNxD**2, axis=(1, 2)) / (count_B * d))
    x_BxNxD = x_BxNxD / jnp.where(spread_B > 0, spread_B, 1.0)[:, None, None]
    # one chunk row per (task, K)
    c = b * k_max
    x_CxNxD = jnp.repeat(x_BxNxD, k_max, axis=0)
    mask_CxN = jnp.repeat(mask_BxN, k_max, axis=0)
    k_C = jnp.tile(jnp.arange(1, k_max + 1), b)
    comp_CxK = jnp.arange(k_max)[None, :] < k_C[:, None]
    data = fused.prepare_chunk(x_CxNxD, mask_CxN, learn_variances=False)
    shape = (restarts, k_max, seeding.kmeanspp_trials(k_max))
    u = jax.random.uniform(jax.random.PRNGKey(_SEED), shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny)
    start = seeding.kmeanspp_state(
        jnp.broadcast_to(u, (c, *shape)), data, k_C, comp_CxK, learn_variances=False
    )

    def em(_, carry):
        state, var_CxR = carry
        resp, _ = _tied_e_step(data, state, var_CxR, comp_CxK)
        state = fused.m_step(data, resp, learn_variances=False)
        return state, _tied_variance(data, state)

    state, var_CxR = jax.lax.fori_loop(0, steps, em, (start, _tied_variance(data, start)))
    _, loglik_CxR = _tied_e_step(data, state, var_CxR, comp_CxK)
    loglik_CxR = jnp.where(jnp.isnan(loglik_CxR), -jnp.inf, loglik_CxR)
    best_C = jnp.argmax(loglik_CxR, axis=-1)

    def pick(a_CxR):
        return jnp.take_along_axis(a_CxR, best_C.reshape((c, 1) + (1,) * (a_CxR.ndim - 2)), axis=1)[:, 0]

    weights = jnp.where(comp_CxK, pick(state.weights_CxRxK), 0.0)
    means = jnp.where(comp_CxK[..., None], pick(state.means_CxRxKxD), 0.0)
    return {
        "x_BxNxD": x_BxNxD,
        "mask_BxN": mask_BxN,
        "weights_BxKxK": weights.reshape(b, k_max, k_max),
        "means_BxKxKxD": means.reshape(b, k_max, k_max, d),
        "variance_BxK": pick(var_CxR).reshape(b, k_max),
        "loglik_BxK": pick(loglik_CxR).reshape(b, k_max),
        "spread_B": spread_B,
    }


@functools.partial(jax.jit, static_argnames=("k_max", "restarts", "steps"))
def max_log_likelihood_per_k(
    points_BxNxD: jax.Array,
    point_mask_BxN: jax.Array,
    order_key_BxN: jax.Array,
    k_max: int = 8,
    restarts: int = 4,
    steps: int = 30,
) -> jax.Array:
    """The highest mean log-likelihood per point over ``restarts`` tied-spherical EM fits, for K = 1..k_max:
    [B, k_max], in the task's normalised coordinates (module docstring). Padded points may hold anything."""
    return best_fits(points_BxNxD, point_mask_BxN, order_key_BxN, k_max, restarts, steps)["loglik_BxK"]
