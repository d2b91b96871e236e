"""Scoring estimated mixtures against the true ones, task by task.

Alignment is exact: for K_max <= ``MAX_BRUTE_FORCE_K`` every permutation is scored inside jit (the
minimiser of sum_k ||mu_hat_sigma(k) - mu_k||^2 over real components); above that, the Hungarian algorithm
(``hungarian``, O(K^3), also inside jit: no host round trip, so it runs sharded on any device).
``l2_official`` reproduces the official code's inverse-permutation alignment (docs/official_differences.md §7)
and is reported only as a comparison column.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from tgmm_jax import gmm
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.tasks import GMMTask

MAX_BRUTE_FORCE_K = 6
# Cost of matching a padded estimate slot to a real true component: large enough never to be chosen.
_FORBIDDEN = 1e30


def permutations(k: int) -> np.ndarray:
    """All K! permutations of range(K): [K!, K] int32, the identity first."""
    return np.asarray(list(itertools.permutations(range(k))), np.int32).reshape(math.factorial(k), k)


def masked_match_cost(cost_BxKxK: jax.Array, component_mask_BxK: jax.Array) -> jax.Array:
    """cost[b, i = estimated slot, j = true component] restricted to valid matches: a padded slot for a
    real component is forbidden, and padded components cost 0 (they go to padded slots)."""
    real_true = component_mask_BxK[:, None, :]
    cost_BxKxK = jnp.where(real_true & ~component_mask_BxK[:, :, None], _FORBIDDEN, cost_BxKxK)
    return jnp.where(real_true, cost_BxKxK, 0.0)


def best_permutation(cost_BxKxK: jax.Array) -> jax.Array:
    """``index_BxK`` minimising sum_j cost[b, index[b, j], j], scoring all K! permutations inside jit."""
    k = cost_BxKxK.shape[-1]
    if k > MAX_BRUTE_FORCE_K:
        raise ValueError(
            f"brute-force matching scores all K! permutations; K={k} exceeds {MAX_BRUTE_FORCE_K}"
        )
    perms_PxK = jnp.asarray(permutations(k))
    total_BxP = jnp.sum(cost_BxKxK[:, perms_PxK, jnp.arange(k)], axis=-1)  # sum_j cost[b, perms[p, j], j]
    total_BxP = jnp.where(jnp.isnan(total_BxP), jnp.inf, total_BxP)
    return perms_PxK[jnp.argmin(total_BxP, axis=-1)]


def gather_components(components, index_BxK: jax.Array):
    """Reorders every [B, K, ...] leaf of ``components`` (MixtureParams, TGMMOutput, ...) so that slot j
    holds slot ``index_BxK[:, j]``."""
    take = jax.vmap(lambda a, idx: a[idx])
    return jax.tree.map(lambda a: take(a, index_BxK), components)


def hungarian(cost_KxK: jax.Array) -> jax.Array:
    """``index_K`` minimising sum_j cost[index[j], j] (one square cost matrix; ``jax.vmap`` it for a batch).

    The shortest-augmenting-path Hungarian algorithm with row and column potentials (Kuhn-Munkres in the
    O(K^3) form of Jonker and Volgenant; rows are added one at a time, each by a Dijkstra-like search over
    the columns), written with ``lax`` loops so it traces once for every K. Arrays are 1-based with a dummy
    column 0, as in the textbook form. Non-finite costs are treated as forbidden (``_FORBIDDEN``)."""
    k = cost_KxK.shape[-1]
    if cost_KxK.shape != (k, k):
        raise ValueError(f"hungarian needs a square [K, K] cost, got {cost_KxK.shape}")
    dtype = jnp.promote_types(cost_KxK.dtype, jnp.float32)
    cost_KxK = jnp.where(jnp.isfinite(cost_KxK), cost_KxK.astype(dtype), _FORBIDDEN)
    a = jnp.zeros((k + 1, k + 1), dtype).at[1:, 1:].set(cost_KxK)
    cols = jnp.arange(k + 1)
    inf = jnp.asarray(jnp.inf, dtype)

    def add_row(i, carry):
        u, v, p, way = carry
        p = p.at[0].set(i)  # column 0 holds the row being added

        def search(state):  # grow the alternating tree until it reaches a free column
            u, v, p, way, minv, used, j0 = state
            used = used.at[j0].set(True)
            i0 = p[j0]
            reduced = a[i0] - u[i0] - v
            free = ~used & (cols > 0)
            better = free & (reduced < minv)
            minv = jnp.where(better, reduced, minv)
            way = jnp.where(better, j0, way)
            candidates = jnp.where(free, minv, inf)
            j1 = jnp.argmin(candidates)
            delta = candidates[j1]
            # the rows of the tree (distinct: one per used column) rise by delta
            u = u.at[p].add(jnp.where(used, delta, 0.0))
            v = jnp.where(used, v - delta, v)
            minv = jnp.where(used, minv, minv - delta)
            return u, v, p, way, minv, used, j1

        state = (u, v, p, way, jnp.full((k + 1,), inf), jnp.zeros((k + 1,), bool), jnp.int32(0))
        u, v, p, way, _, _, j0 = jax.lax.while_loop(lambda st: st[2][st[6]] != 0, search, state)

        def augment(state):  # flip the path back to column 0
            p, j0 = state
            j1 = way[j0]
            return p.at[j0].set(p[j1]), j1

        p, _ = jax.lax.while_loop(lambda st: st[1] != 0, augment, (p, j0))
        return u, v, p, way

    init = (jnp.zeros((k + 1,), dtype), jnp.zeros((k + 1,), dtype), jnp.zeros((k + 1,), jnp.int32),
            jnp.zeros((k + 1,), jnp.int32))  # fmt: skip
    _, _, p, _ = jax.lax.fori_loop(1, k + 1, add_row, init)
    return (p[1:] - 1).astype(jnp.int32)  # p[j] = the row (1-based) matched to column j


def align_components(est_means_BxKxD, true_means_BxKxD, component_mask_BxK) -> jax.Array:
    """Optimal matching: ``est_index_BxK[b, j]`` = the estimated component matched to true component j.

    Real true components are matched to real estimated slots only (the estimate shares the task's
    component mask); padded slots map to padded slots.
    """
    sq_dist_BxKxK = jnp.sum((est_means_BxKxD[:, :, None, :] - true_means_BxKxD[:, None, :, :]) ** 2, axis=-1)
    return optimal_assignment(masked_match_cost(sq_dist_BxKxK, component_mask_BxK))


def optimal_assignment(cost_BxKxK: jax.Array) -> jax.Array:
    """``index_BxK`` minimising sum_j cost[b, index[b, j], j]: every permutation inside jit for K <=
    ``MAX_BRUTE_FORCE_K``, the Hungarian algorithm (``hungarian``, also inside jit) above it. The indices carry
    no gradient, so the cost is read through ``stop_gradient`` and the call may sit inside ``grad``."""
    if cost_BxKxK.shape[-1] <= MAX_BRUTE_FORCE_K:
        return best_permutation(cost_BxKxK)
    return jax.vmap(hungarian)(jax.lax.stop_gradient(cost_BxKxK))


def _l2_terms(est: MixtureParams, task: GMMTask) -> tuple[jax.Array, jax.Array]:
    """Per-task (l2_means, l2_weights) of already aligned estimates, over real components only."""
    mask_BxK = task.component_mask
    k_B = jnp.sum(mask_BxK, axis=-1)
    dim = task.means.shape[-1]
    sq_means_BxK = jnp.sum((est.means - task.means) ** 2, axis=-1)
    l2_means = jnp.sum(jnp.where(mask_BxK, sq_means_BxK, 0.0), axis=-1) / (k_B * dim)
    sq_weights_BxK = (est.weights - task.weights) ** 2
    l2_weights = jnp.sum(jnp.where(mask_BxK, sq_weights_BxK, 0.0), axis=-1) / k_B
    return l2_means, l2_weights


def _inverse_permutation(perm_BxK: jax.Array) -> jax.Array:
    return jnp.argsort(perm_BxK, axis=-1).astype(perm_BxK.dtype)


def applicable(estimate: MixtureParams, task: GMMTask) -> jax.Array:
    """True where the estimate's real components are all finite ([B]); False marks 'not applicable'."""
    mask_BxK = task.component_mask
    finite_BxK = jnp.isfinite(estimate.weights) & jnp.all(jnp.isfinite(estimate.means), axis=-1)
    if estimate.scales is not None:
        finite_BxK &= jnp.all(jnp.isfinite(estimate.scales), axis=-1)
    return jnp.all(finite_BxK | ~mask_BxK, axis=-1)


def evaluate_estimates(estimate: MixtureParams, task: GMMTask) -> dict[str, jax.Array]:
    """Per-task metrics ([B] each) of an estimate against the task's true mixture.

    l2_means    1/(K D) sum_k ||mu_hat_sigma(k) - mu_k||^2 under the optimal alignment sigma
    l2_weights  1/K sum_k (pi_hat_sigma(k) - pi_k)^2
    l2          l2_means + l2_weights (the paper's l2-error)
    l2_scales   1/(K D) sum_k ||s_hat_sigma(k) - s_k||^2 (only when the estimate has scales)
    cluster_acc fraction of real points whose MAP component under the estimate is the true one
    loglik      mean log-likelihood per real point under the estimate
    loglik_true the same under the true parameters; oracle_gap = loglik_true - loglik
    l2_official l2 under the official code's inverse-permutation alignment (comparison only, buggy for K >= 3)
    applicable  False where the estimate has non-finite parameters (e.g. spectral with K > D)
    """
    if estimate.means.shape != task.means.shape:
        raise ValueError(f"estimate means {estimate.means.shape} do not match task means {task.means.shape}")
    if estimate.weights.shape != task.weights.shape:
        raise ValueError(
            f"estimate weights {estimate.weights.shape} do not match task weights {task.weights.shape}"
        )
    est = MixtureParams(estimate.weights, estimate.means, estimate.scales, task.component_mask)
    est_index_BxK = align_components(est.means, task.means, task.component_mask)
    aligned = gather_components(est, est_index_BxK)
    l2_means, l2_weights = _l2_terms(aligned, task)
    official = gather_components(est, _inverse_permutation(est_index_BxK))
    off_means, off_weights = _l2_terms(official, task)

    labels_hat_BxN = jnp.argmax(gmm.log_joint(task.points, aligned), axis=-1)
    correct_BxN = (labels_hat_BxN == task.labels) & task.point_mask
    cluster_acc = jnp.sum(correct_BxN, axis=-1) / jnp.sum(task.point_mask, axis=-1)

    loglik = gmm.mean_log_likelihood(task.points, task.point_mask, est)
    loglik_true = gmm.mean_log_likelihood(task.points, task.point_mask, task.params())
    out = dict(
        l2=l2_means + l2_weights,
        l2_means=l2_means,
        l2_weights=l2_weights,
        cluster_acc=cluster_acc,
        loglik=loglik,
        loglik_true=loglik_true,
        oracle_gap=loglik_true - loglik,
        l2_official=off_means + off_weights,
        applicable=applicable(estimate, task),
    )
    if estimate.scales is not None:
        k_B = jnp.sum(task.component_mask, axis=-1)
        sq_BxK = jnp.sum((aligned.scales - task.scales) ** 2, axis=-1)
        out["l2_scales"] = jnp.sum(jnp.where(task.component_mask, sq_BxK, 0.0), axis=-1) / (
            k_B * task.means.shape[-1]
        )
    return out
