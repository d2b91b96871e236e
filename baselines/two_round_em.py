"""Dasgupta & Schulman two-round EM (UAI 2000; JMLR 8, 2007), batched over padded tasks.

Per task, with its own K:
  1. start from L = ceil(c K max(ln K, 1)) distinct random real points (c = ``oversampling``, default 4),
     weights 1/L. DS take L = O(ln K / w_min); we assume w_min ~ 1/(c K), i.e. the smallest component
     holds at least 1/c of an equal share (the paper's tasks: w_min >= 0.2 / (0.2 + 0.8 (K - 1)) > 1/(4K)).
     L is capped by the task's number of real points. Variances: the known unit variance (isotropic), or
     DS's rule sigma_i^2 = min_j ||mu_i - mu_j||^2 / (2 D) on every coordinate (anisotropic);
  2. one EM round (E-step + M-step) with the L components;
  3. prune: drop centres whose weight is below w_T = 1 / (2 L) (half the starting share; the K heaviest
     always survive), then keep K by farthest-first traversal, starting from the heaviest survivor;
  4. one more EM round from those K centres (their round-1 weights, renormalised) -> the estimate.
The constants (c = 4, w_T = 1/(2L), heaviest-first) are our choices: the paper fixes only their orders.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from baselines import draws, em
from baselines.chunking import default_chunk_size, map_task_chunks
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.mixture import VARIANCE_REG, fused, seeding
from tgmm_jax.mixture.fused import FitState
from tgmm_jax.tasks import GMMTask


@dataclasses.dataclass(frozen=True)
class TwoRoundConfig:
    variant: str = "isotropic"
    oversampling: float = 4.0  # c in L = ceil(c K max(ln K, 1))
    prune_fraction: float = 0.5  # w_T = prune_fraction / L

    def __post_init__(self):
        em.check_variant(self.variant)
        if not (isinstance(self.oversampling, (int, float)) and self.oversampling >= 1):
            raise ValueError(f"oversampling must be a number >= 1, got {self.oversampling!r}")
        if not (isinstance(self.prune_fraction, (int, float)) and 0 <= self.prune_fraction <= 1):
            raise ValueError(f"prune_fraction must lie in [0, 1], got {self.prune_fraction!r}")


def num_initial_centres(k, oversampling: float):
    """L = ceil(c K max(ln K, 1)) (k may be an int or an integer array)."""
    if isinstance(k, int):
        return math.ceil(oversampling * k * max(math.log(k), 1.0))
    kf = k.astype(jnp.float32)
    return jnp.ceil(oversampling * kf * jnp.maximum(jnp.log(kf), 1.0)).astype(jnp.int32)


def _farthest_first(means_CxLxD, weights_CxL, survivor_CxL, num_components_C, k_max: int):
    """Indices [C, K_max] of K centres: the heaviest survivor, then repeatedly the farthest survivor."""
    first_C = jnp.argmax(jnp.where(survivor_CxL, weights_CxL, -jnp.inf), axis=-1)
    take = jax.vmap(lambda a, i: a[i])
    chosen = [first_C]
    dist_CxL = jnp.sum((means_CxLxD - take(means_CxLxD, first_C)[:, None, :]) ** 2, axis=-1)
    dist_CxL = jnp.where(survivor_CxL, dist_CxL, -jnp.inf)
    for j in range(1, k_max):
        nxt_C = jnp.argmax(dist_CxL, axis=-1)
        chosen.append(nxt_C)
        d_new = jnp.sum((means_CxLxD - take(means_CxLxD, nxt_C)[:, None, :]) ** 2, axis=-1)
        active_Cx1 = (j < num_components_C)[:, None]
        dist_CxL = jnp.where(active_Cx1, jnp.minimum(dist_CxL, d_new), dist_CxL)
        dist_CxL = dist_CxL.at[jnp.arange(dist_CxL.shape[0]), nxt_C].set(-jnp.inf)
    return jnp.stack(chosen, axis=-1)


def _two_rounds(args, config: TwoRoundConfig):
    seeds_C, task_C = args
    learn = config.variant == "anisotropic"
    k_max = task_C.component_mask.shape[-1]
    n = task_C.points.shape[1]
    l_max = min(num_initial_centres(k_max, config.oversampling), n)
    data = fused.prepare_chunk(task_C.points, task_C.point_mask, learn)
    l_C = jnp.minimum(
        num_initial_centres(task_C.num_components, config.oversampling), data.num_points_C.astype(jnp.int32)
    )
    l_C = jnp.minimum(l_C, l_max)
    centre_mask_CxL = jnp.arange(l_max)[None, :] < l_C[:, None]

    idx_Cx1xL = seeding.random_point_indices(draws.uniform(seeds_C, (1, n)), data, l_max)
    means_CxLxD = seeding.gather_points(data, idx_Cx1xL)[:, 0]
    weights_CxL = jnp.where(centre_mask_CxL, 1.0 / l_C[:, None], 0.0)
    variances = None
    if learn:
        sq_CxLxL = jnp.sum((means_CxLxD[:, :, None, :] - means_CxLxD[:, None, :, :]) ** 2, axis=-1)
        other_CxLxL = centre_mask_CxL[:, None, :] & ~jnp.eye(l_max, dtype=bool)[None]
        nearest_CxL = jnp.min(jnp.where(other_CxLxL, sq_CxLxL, jnp.inf), axis=-1)
        nearest_CxL = jnp.where(jnp.isfinite(nearest_CxL), nearest_CxL, 1.0)  # a single centre: unit variance
        var_CxL = jnp.maximum(nearest_CxL / (2 * means_CxLxD.shape[-1]), VARIANCE_REG)
        variances = jnp.broadcast_to(var_CxL[..., None], means_CxLxD.shape)[:, None]
    state = FitState(weights_CxL[:, None], means_CxLxD[:, None], variances)

    # Round 1 with L components.
    resp, _ = fused.e_step(data, state, centre_mask_CxL)
    state = fused.m_step(data, resp, learn)
    w1_CxL = state.weights_CxRxK[:, 0]

    # Prune, then farthest-first down to K.
    threshold_C = config.prune_fraction / l_C.astype(w1_CxL.dtype)
    rank_CxL = jnp.argsort(jnp.argsort(-jnp.where(centre_mask_CxL, w1_CxL, -jnp.inf), axis=-1), axis=-1)
    keep_CxL = centre_mask_CxL & (
        (w1_CxL >= threshold_C[:, None]) | (rank_CxL < task_C.num_components[:, None])
    )
    pick_CxK = _farthest_first(state.means_CxRxKxD[:, 0], w1_CxL, keep_CxL, task_C.num_components, k_max)
    take = jax.vmap(lambda a, i: a[i])
    mask_CxK = task_C.component_mask
    w_CxK = jnp.where(mask_CxK, take(w1_CxL, pick_CxK), 0.0)
    w_CxK = w_CxK / jnp.maximum(jnp.sum(w_CxK, axis=-1, keepdims=True), 1e-30)
    # A chosen centre can have (numerically) zero weight; give it a small share so round 2 can use it.
    w_CxK = jnp.where(mask_CxK & (w_CxK <= 0), 1.0 / n, w_CxK)
    var2 = None if not learn else take(state.variances_CxRxKxD[:, 0], pick_CxK)[:, None]
    state = FitState(w_CxK[:, None], take(state.means_CxRxKxD[:, 0], pick_CxK)[:, None], var2)

    # Round 2 with K components.
    resp, _ = fused.e_step(data, state, mask_CxK)
    state = fused.m_step(data, resp, learn)
    _, ll_Cx1 = fused.e_step(data, state, mask_CxK)
    loglik_C = ll_Cx1[:, 0] + fused.log_likelihood_offset(data, learn)
    estimates = fused.final_estimates(state, data.centre_CxD, mask_CxK)
    return estimates, {"loglik": loglik_C, "num_initial_centres": l_C, "num_survivors": jnp.sum(keep_CxL, -1)}


def _fit_two_round_em(key: jax.Array, task: GMMTask, config: TwoRoundConfig = TwoRoundConfig()):
    """Two-round EM on every task. Returns (MixtureParams, info: n_iter (= 2), loglik, valid, ...)."""
    batch, n, d = task.points.shape
    k_max = task.component_mask.shape[-1]
    l_max = min(num_initial_centres(k_max, config.oversampling), n)
    feats = 2 * d if config.variant == "anisotropic" else d
    chunk = default_chunk_size(batch, n * (2 * feats + 3 * l_max))
    seeds_B = draws.task_seeds(key, batch)
    (weights, means, scales), info = map_task_chunks(
        functools.partial(_two_rounds, config=config), (seeds_B, task), batch, chunk
    )
    finite = fused.finite_estimates(weights, means, scales)
    info = dict(info, n_iter=jnp.full((batch,), 2, jnp.int32), valid=finite)
    return MixtureParams(weights, means, scales, task.component_mask), info


fit_two_round_em = jax.jit(_fit_two_round_em, static_argnames=("config",))
