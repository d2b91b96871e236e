"""Gradient ascent on the mixture log-likelihood with Adam (the "Adam on the likelihood" baseline).

Parameters per task: weight logits (weights = softmax over the task's real components), means, and for
the anisotropic variant log-variances (variance = exp(s) + 1e-6). The objective is the mean
log-likelihood per real point, so one learning rate suits every N. Adam is elementwise, so tasks are
optimised independently even though they share one optax state. Start: k-means++ (one draw, the same
initialisation as 'em_kmeanspp'), so that the comparison with EM is about the update rule. The learning
rate decays geometrically (``decay`` per step). Each task stops when its gradient is below ``tol``
(max-abs, per parameter), or after ``max_steps`` updates.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from baselines import draws, em, inits
from baselines.chunking import default_chunk_size, map_task_chunks
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.mixture import VARIANCE_REG, fused
from tgmm_jax.mixture.fused import ChunkData, FitState
from tgmm_jax.tasks import GMMTask


@dataclasses.dataclass(frozen=True)
class GradientEMConfig:
    variant: str = "isotropic"
    init: str = "kmeans++"
    learning_rate: float = 0.05
    decay: float = 0.995  # learning rate x decay per step: constant-rate Adam circles the optimum at ~lr
    max_steps: int = 500
    tol: float = 1e-4  # on max |d mean-log-likelihood / d parameter|

    def __post_init__(self):
        em.check_variant(self.variant)
        inits.check_init(self.init)
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a number > 0, got {self.learning_rate!r}")
        if not (isinstance(self.decay, (int, float)) and 0 < self.decay <= 1):
            raise ValueError(f"decay must lie in (0, 1], got {self.decay!r}")
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool) or self.max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1, got {self.max_steps!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")


def _to_state(params: dict, mask_CxK) -> FitState:
    logits = jnp.where(mask_CxK, params["logits"], -jnp.inf)
    variances = None
    if "log_var" in params:
        variances = jnp.exp(params["log_var"])[:, None] + VARIANCE_REG
    return FitState(jax.nn.softmax(logits, axis=-1)[:, None], params["means"][:, None], variances)


def _mean_loglik_C(params: dict, data: ChunkData, mask_CxK) -> jax.Array:
    """Reduced mean log-likelihood per task (constants dropped, as in tgmm_jax.mixture.fused): [C]."""
    log_w_CxK = jax.nn.log_softmax(jnp.where(mask_CxK, params["logits"], -jnp.inf), axis=-1)
    state = _to_state(params, mask_CxK)
    # component_logits with unit weights gives log N only; the weights enter in log space (no log(0)).
    unit = FitState(jnp.ones_like(state.weights_CxRxK), state.means_CxRxKxD, state.variances_CxRxKxD)
    logits_Cx1xKxN = fused.component_logits(data, unit, mask_CxK) + log_w_CxK[:, None, :, None]
    logits_Cx1xKxN = jnp.where(mask_CxK[:, None, :, None], logits_Cx1xKxN, -jnp.inf)
    lse_CxN = jax.nn.logsumexp(logits_Cx1xKxN, axis=2)[:, 0]
    return jnp.sum(jnp.where(data.mask_CxN > 0, lse_CxN, 0.0), axis=-1) / data.num_points_C


def _fit_chunk(args, config: GradientEMConfig):
    seeds_C, task_C = args
    learn = config.variant == "anisotropic"
    mask_CxK = task_C.component_mask
    data = fused.prepare_chunk(task_C.points, task_C.point_mask, learn)
    start = inits.initial_state(config.init, seeds_C, data, task_C, 1, learn)
    w_CxK = start.weights_CxRxK[:, 0]
    params = dict(logits=jnp.log(jnp.maximum(w_CxK, 1e-30)), means=start.means_CxRxKxD[:, 0])
    if learn:
        params["log_var"] = jnp.log(jnp.maximum(start.variances_CxRxKxD[:, 0] - VARIANCE_REG, 1e-12))
    schedule = optax.exponential_decay(config.learning_rate, transition_steps=1, decay_rate=config.decay)
    opt = optax.adam(schedule)

    def objective(p):  # tasks are independent: the gradient of the sum is per task
        return jnp.sum(_mean_loglik_C(p, data, mask_CxK))

    grad_fn = jax.grad(objective)
    batch_c = mask_CxK.shape[0]

    def cond(carry):
        step, _, _, done, _ = carry
        return (step < config.max_steps) & ~jnp.all(done)

    def body(carry):
        step, params, opt_state, done, n_steps = carry
        grads = grad_fn(params)
        updates, new_opt_state = opt.update(jax.tree.map(jnp.negative, grads), opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # Stationarity, not a small change of the log-likelihood: Adam crawls along flat directions,
        # where the log-likelihood changes little per step long before the optimum is reached.
        grad_max_C = functools.reduce(
            jnp.maximum, [jnp.max(jnp.abs(g).reshape(batch_c, -1), axis=-1) for g in jax.tree.leaves(grads)]
        )
        done = done | (grad_max_C < config.tol)

        def keep(old, new):
            if new.ndim == 0:  # Adam's step count, shared: frozen tasks ignore it (their params are frozen)
                return new
            return jnp.where(done.reshape(done.shape + (1,) * (new.ndim - 1)), old, new)

        params = jax.tree.map(keep, params, new_params)
        opt_state = jax.tree.map(keep, opt_state, new_opt_state)
        n_steps = n_steps + (~done).astype(jnp.int32)
        return step + 1, params, opt_state, done, n_steps

    carry = (
        jnp.int32(0),
        params,
        opt.init(params),
        jnp.zeros((batch_c,), bool),
        jnp.zeros((batch_c,), jnp.int32),
    )
    _, params, _, done, n_steps = jax.lax.while_loop(cond, body, carry)
    state = _to_state(params, mask_CxK)
    loglik_C = _mean_loglik_C(params, data, mask_CxK) + fused.log_likelihood_offset(data, learn)
    estimates = fused.final_estimates(state, data.centre_CxD, mask_CxK)
    return estimates, {"n_iter": n_steps, "converged": done, "loglik": loglik_C}


def _fit_gradient_em(key: jax.Array, task: GMMTask, config: GradientEMConfig = GradientEMConfig()):
    """Adam on the log-likelihood for every task. Returns (MixtureParams, info: n_iter, converged, loglik, valid)."""
    batch, n, d = task.points.shape
    k = task.component_mask.shape[-1]
    feats = 2 * d if config.variant == "anisotropic" else d
    # The backward pass keeps a few more [K, N] arrays alive than an EM step: budget 6 instead of 3.
    chunk = default_chunk_size(batch, n * (2 * feats + 6 * k))
    seeds_B = draws.task_seeds(key, batch)
    (weights, means, scales), info = map_task_chunks(
        functools.partial(_fit_chunk, config=config), (seeds_B, task), batch, chunk
    )
    finite = fused.finite_estimates(weights, means, scales)
    return MixtureParams(weights, means, scales, task.component_mask), dict(info, valid=finite)


fit_gradient_em = jax.jit(_fit_gradient_em, static_argnames=("config",))
