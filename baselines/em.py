"""Batched EM for Gaussian mixtures: unit known variance (the paper's setting) or learned diagonal variances.

Every task of a padded ``GMMTask`` batch is fitted with its own K (``component_mask``) on its own real
points (``point_mask``), with ``n_init`` restarts; the restart with the best log-likelihood wins (judged,
as sklearn does, at its last E-step). One iteration is sklearn's: E-step (whose log-sum-exp gives the mean
log-likelihood of the current parameters), M-step; a fit stops when |change of that mean log-likelihood|
< tol, or after ``max_iter`` iterations, and then stops changing.

``tol`` defaults to 1e-5 nats per point: the official code's 1e-7 is below the float32 resolution of a
mean log-likelihood of order -10..-200, so it could not trigger.

Speed: most fits converge within a few iterations and a few take up to ``max_iter``. Phase 1 runs
every fit for at most ``chunk_steps`` iterations, a chunk of tasks at a time with the n_init restarts
folded into one matmul per task (the cheapest layout per fit), and a chunk stops early once all its fits
have converged. Phase 2 takes the fits still running, in rounds: each gathers a cache-sized group of
them (``group_size``), runs it for ``steps_per_round`` iterations (or to the end, once one group holds
them all) and scatters it back. The work is close to the sum of the fits' own iteration counts instead
of the batch size times the slowest fit's count.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
from flax import struct

from baselines import draws, inits
from baselines.chunking import default_chunk_size, map_task_chunks
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.mixture import averaging, fused
from tgmm_jax.mixture.fused import ChunkData, FitState
from tgmm_jax.tasks import VARIANTS, GMMTask

_STEPS_PER_TRIP = 2


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown mixture variant {variant!r}; choose one of {VARIANTS}")


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EMConfig:
    """Static settings of the EM baseline (hashable: one compilation per config and shape)."""

    variant: str = "isotropic"  # 'isotropic': unit variance, known; 'anisotropic': diagonal, learned
    init: str = "official"  # 'official' | 'kmeans++' | 'random_points'
    n_init: int = 1
    max_iter: int = 100
    tol: float = 1e-5
    chunk_size: int | None = None  # tasks per phase-1 chunk; None: sized for the cache
    group_size: int | None = None  # fits per phase-2 group; None: sized for the cache
    chunk_steps: int = 4  # phase-1 iterations
    steps_per_round: int = 4  # phase-2 iterations between regroupings
    # 'best': the restart of highest likelihood; 'average': the restarts' likelihood-weighted average
    # (tgmm_jax.mixture.averaging), a parameter-free hedge over local optima
    combine: str = "best"

    def __post_init__(self):
        check_variant(self.variant)
        inits.check_init(self.init)
        _check_int("n_init", self.n_init, 1)
        _check_int("max_iter", self.max_iter, 1)
        _check_int("steps_per_round", self.steps_per_round, 1)
        _check_int("chunk_steps", self.chunk_steps, 0)
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        for name in ("chunk_size", "group_size"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.combine not in ("best", "average"):
            raise ValueError(f"combine must be 'best' or 'average', got {self.combine!r}")

    @property
    def learn_variances(self) -> bool:
        return self.variant == "anisotropic"


@struct.dataclass
class Progress:
    """Per-fit loop bookkeeping, leaves shaped like the fits ([C, R] or [F, 1])."""

    last_ll: jax.Array  # reduced mean log-likelihood at the fit's last E-step (-inf before the first)
    n_iter: jax.Array
    converged: jax.Array

    @staticmethod
    def start(shape, dtype) -> Progress:
        return Progress(jnp.full(shape, -jnp.inf, dtype), jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool))

    def running(self, max_iter: int) -> jax.Array:
        return ~self.converged & (self.n_iter < max_iter)


def _freeze(stopped_CxR, old, new):
    """``new`` where a fit is running, ``old`` where it has stopped."""

    def pick(o, n):
        return jnp.where(stopped_CxR.reshape(stopped_CxR.shape + (1,) * (n.ndim - 2)), o, n)

    return jax.tree.map(pick, old, new)


def em_steps(
    data: ChunkData, state: FitState, progress: Progress, component_mask_CxK, *, steps, max_iter, tol
):
    """Up to ``steps`` EM iterations on C tasks x R fits; each fit stops on its own (tol or max_iter)."""
    learn_variances = state.variances_CxRxKxD is not None

    def cond(carry):
        t, _, p = carry
        return (t < steps) & jnp.any(p.running(max_iter))

    def one_step(state, p):
        resp, ll_CxR = fused.e_step(data, state, component_mask_CxK)
        new_state = fused.m_step(data, resp, learn_variances)
        stopped = ~p.running(max_iter)
        converged = jnp.abs(ll_CxR - p.last_ll) < tol  # last_ll = -inf before the first step: never
        p = Progress(
            last_ll=jnp.where(stopped, p.last_ll, ll_CxR),
            n_iter=p.n_iter + (~stopped).astype(jnp.int32),
            converged=p.converged | (~stopped & converged),
        )
        return _freeze(stopped, state, new_state), p

    def body(carry):
        # Two iterations per trip: each trip of an XLA:CPU while loop has a fixed cost (a host sync on its
        # condition and a round of kernel launches) that is as large as a small group's iteration.
        t, state, p = carry
        for _ in range(_STEPS_PER_TRIP):
            state, p = one_step(state, p)
        return t + _STEPS_PER_TRIP, state, p

    _, state, progress = jax.lax.while_loop(cond, body, (jnp.int32(0), state, progress))
    return state, progress


def _gather(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def _pack(state: FitState, progress: Progress) -> jax.Array:
    """All per-fit numbers in one float32 row per fit: [F, P] (n_iter and the flag are exact as floats).

    Why: the rounds gather and scatter fits by index; one array means one gather and one scatter kernel
    instead of one per field, which matters for compile time on CPU (each kernel costs ~50 ms to build).
    """
    num_fits = progress.n_iter.shape[0]
    fields = [state.weights_CxRxK, state.means_CxRxKxD, state.variances_CxRxKxD]
    parts = [a.reshape(num_fits, -1) for a in fields if a is not None]
    for a in (progress.last_ll, progress.n_iter, progress.converged):
        parts.append(a.reshape(num_fits, 1).astype(jnp.float32))
    return jnp.concatenate(parts, axis=-1)


def _unpack(packed_FxP: jax.Array, k: int, d: int, learn_variances: bool) -> tuple[FitState, Progress]:
    num_fits = packed_FxP.shape[0]
    sizes = [k, k * d] + ([k * d] if learn_variances else []) + [1, 1, 1]
    cols = jnp.split(packed_FxP, list(itertools.accumulate(sizes))[:-1], axis=-1)
    weights = cols[0].reshape(num_fits, 1, k)
    means = cols[1].reshape(num_fits, 1, k, d)
    variances = cols[2].reshape(num_fits, 1, k, d) if learn_variances else None
    last_ll, n_iter, converged = cols[-3], cols[-2].astype(jnp.int32), cols[-1] > 0.5
    return FitState(weights, means, variances), Progress(last_ll, n_iter, converged)


def _rounds(
    task: GMMTask, packed_FxP, fits_per_task, *, k, d, learn_variances, max_iter, tol, group, steps, until
):
    """Rounds on groups of ``group`` running fits while more than ``until`` fits are running.

    When one group holds all the running fits (only possible in the last level, until = 0), the round
    runs them to the end: regrouping could not make the group any smaller.
    """
    num_fits = packed_FxP.shape[0]

    def running_F(packed_FxP):
        return _unpack(packed_FxP, k, d, learn_variances)[1].running(max_iter)[:, 0]

    def body(packed_FxP):
        running = running_F(packed_FxP)
        round_steps = jnp.where(jnp.sum(running) > group, steps, max_iter) if until == 0 else steps
        idx_S = jnp.nonzero(running, size=group, fill_value=num_fits)[0]
        live_Sx1 = (idx_S < num_fits)[:, None]
        task_S = jnp.minimum(idx_S, num_fits - 1) // fits_per_task
        data = fused.prepare_chunk(task.points[task_S], task.point_mask[task_S], learn_variances)
        state, p = _unpack(packed_FxP.at[idx_S].get(mode="clip"), k, d, learn_variances)
        # Empty slots of the group are marked converged: they neither run nor get written back.
        p = Progress(p.last_ll, p.n_iter, p.converged | ~live_Sx1)
        state, p = em_steps(
            data, state, p, task.component_mask[task_S], steps=round_steps, max_iter=max_iter, tol=tol
        )
        return packed_FxP.at[idx_S].set(_pack(state, p), mode="drop")

    return jax.lax.while_loop(lambda c: jnp.sum(running_F(c)) > until, body, packed_FxP)


def run_em(task: GMMTask, state_F, progress_F, fits_per_task: int, *, max_iter, tol, group, steps):
    """EM on F fits (leaves [F, 1, ...]; fit f belongs to task f // fits_per_task) until none is running.

    Each round gathers up to ``group`` running fits (the first ones by index), runs them for ``steps``
    iterations, or to the end when they are all the fits still running, and scatters them back. The
    last few fits (often the slowest ones) go on in groups 16x smaller: a step costs the same for a
    full group as for an almost empty one.
    """
    num_fits = progress_F.n_iter.shape[0]
    group = min(group, num_fits)
    small = max(group // 16, 1)
    k, d = state_F.means_CxRxKxD.shape[-2:]
    kw = dict(
        k=k,
        d=d,
        learn_variances=state_F.variances_CxRxKxD is not None,
        max_iter=max_iter,
        tol=tol,
        steps=steps,
    )
    packed_FxP = _pack(state_F, progress_F)
    if small < group:
        packed_FxP = _rounds(task, packed_FxP, fits_per_task, group=group, until=small, **kw)
    packed_FxP = _rounds(task, packed_FxP, fits_per_task, group=small, until=0, **kw)
    return _unpack(packed_FxP, k, d, kw["learn_variances"])


def _chunk_sizes(task: GMMTask, config: EMConfig, fits_per_task: int) -> tuple[int, int]:
    """(tasks per phase-1 chunk, fits per phase-2 group) whose working sets fit the cache budget.

    Both get 4x the L2 budget: larger chunks and groups amortise the fixed cost of each step (a dozen
    kernel launches) and of each regrouping better than they lose to cache misses (measured).
    """
    batch, n, d = task.points.shape
    feats = 2 * d if config.learn_variances else d
    k = task.component_mask.shape[-1]
    chunk = config.chunk_size or default_chunk_size(batch, n * (2 * feats + 3 * fits_per_task * k) // 4)
    group = config.group_size or default_chunk_size(batch * fits_per_task, n * (2 * feats + 3 * k) // 4)
    return chunk, group


def _fit(
    task: GMMTask, init_chunk, config: EMConfig, fits_per_task: int, extra=None, max_iter=None, tol=None
):
    """Phase 1 on chunks of tasks, phase 2 on the fits still running, then the best restart per task.

    ``init_chunk(extra_C, data, task_C)`` returns the initial FitState of a chunk ([C, R, K, ...]).
    ``max_iter`` and ``tol`` (possibly traced) replace the config's values when given.
    """
    max_iter = config.max_iter if max_iter is None else max_iter
    tol = config.tol if tol is None else tol
    batch = task.points.shape[0]
    chunk, group = _chunk_sizes(task, config, fits_per_task)
    learn_variances = config.learn_variances

    def phase1(args):
        extra_C, task_C = args
        data = fused.prepare_chunk(task_C.points, task_C.point_mask, learn_variances)
        state = init_chunk(extra_C, data, task_C)
        progress = Progress.start(state.weights_CxRxK.shape[:2], data.feats_CxNxF.dtype)
        mask_CxK = task_C.component_mask
        state, progress = em_steps(
            data, state, progress, mask_CxK, steps=config.chunk_steps, max_iter=max_iter, tol=tol
        )
        offset_C = fused.log_likelihood_offset(data, learn_variances)
        return state, progress, data.centre_CxD, offset_C

    state, progress, centre_BxD, offset_B = map_task_chunks(phase1, (extra, task), batch, chunk)
    flat = functools.partial(jax.tree.map, lambda a: a.reshape((batch * fits_per_task, 1) + a.shape[2:]))
    state, progress = run_em(
        task,
        flat(state),
        flat(progress),
        fits_per_task,
        max_iter=max_iter,
        tol=tol,
        group=group,
        steps=config.steps_per_round,
    )

    score_BxR = progress.last_ll.reshape(batch, fits_per_task)
    score_BxR = jnp.where(jnp.isnan(score_BxR), -jnp.inf, score_BxR)
    if learn_variances:
        # A component holding less than two points' worth of responsibility sits on one point with its
        # variance at the floor: a likelihood singularity that "wins" on log-likelihood but estimates
        # nothing. Such restarts lose to any non-degenerate one (info['degenerate'] reports the rest).
        n_Bx1 = jnp.sum(task.point_mask, axis=-1, keepdims=True).astype(score_BxR.dtype)
        weights_BxRxK = state.weights_CxRxK.reshape(batch, fits_per_task, -1)
        tiny_BxRxK = task.component_mask[:, None, :] & (weights_BxRxK * n_Bx1[..., None] < 2.0)
        degenerate_BxR = jnp.any(tiny_BxRxK, axis=-1)
        any_ok_Bx1 = jnp.any(~degenerate_BxR, axis=-1, keepdims=True)
        score_BxR = jnp.where(degenerate_BxR & any_ok_Bx1, -jnp.inf, score_BxR)
    best_B = jnp.arange(batch) * fits_per_task + jnp.argmax(score_BxR, axis=-1)
    best = _gather(state, best_B)
    mask_BxK = task.component_mask
    weights, means, scales = fused.final_estimates(best, centre_BxD, mask_BxK)
    if config.combine == "average":
        # every restart (degenerate ones excluded, as above) weighted by its total log-likelihood
        per_fit = functools.partial(jax.tree.map, lambda a: a.reshape((batch, fits_per_task) + a.shape[2:]))
        fits = per_fit(state)
        n_B = jnp.sum(task.point_mask, axis=-1).astype(score_BxR.dtype)
        total_BxR = (score_BxR + offset_B[:, None]) * n_B[:, None]
        weights, means, variances, _ = averaging.likelihood_weighted_average(
            fits.weights_CxRxK,
            fits.means_CxRxKxD + centre_BxD[:, None, None, :],
            fits.variances_CxRxKxD,
            total_BxR,
            mask_BxK,
        )
        means = jnp.where(mask_BxK[..., None], means, 0.0)
        scales = None if variances is None else jnp.where(mask_BxK[..., None], jnp.sqrt(variances), 1.0)
    # As sklearn's lower_bound_: the log-likelihood at the kept fit's last E-step, i.e. of the parameters
    # before its last M-step (for a converged fit, within tol of the returned parameters').
    loglik = progress.last_ll[best_B, 0] + offset_B
    params = MixtureParams(weights, means, scales, mask_BxK)
    finite = fused.finite_estimates(weights, means, scales)
    info = dict(
        n_iter=progress.n_iter[best_B, 0],
        converged=progress.converged[best_B, 0],
        loglik=loglik,
        valid=finite,
    )
    if learn_variances:
        info["degenerate"] = degenerate_BxR.reshape(-1)[best_B]
    return params, info


def _fit_em(key: jax.Array, task: GMMTask, config: EMConfig = EMConfig()) -> tuple[MixtureParams, dict]:
    """Fits every task of the batch. Returns (MixtureParams [B, K_max, ...], info of [B] arrays:
    n_iter, converged, loglik (mean per real point, at the last E-step), valid)."""

    def init_chunk(seeds_C, data, task_C):
        return inits.initial_state(config.init, seeds_C, data, task_C, config.n_init, config.learn_variances)

    seeds_B = draws.task_seeds(key, task.points.shape[0])
    return _fit(task, init_chunk, config, config.n_init, seeds_B)


def _fit_em_from(
    task: GMMTask, init: MixtureParams, max_iter=100, tol=1e-5, *, variant: str = "isotropic"
) -> tuple[MixtureParams, dict]:
    """EM from given initial parameters (weights [B, K], means [B, K, D], scales [B, K, D] or None).

    ``max_iter`` and ``tol`` are traced: changing them does not recompile.
    """
    for name, value in (("max_iter", max_iter), ("tol", tol)):
        if isinstance(value, (int, float)) and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    config = EMConfig(variant=variant)
    weights = jnp.where(task.component_mask, init.weights, 0.0)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    variances = None
    if config.learn_variances:
        variances = jnp.ones_like(init.means) if init.scales is None else jnp.square(init.scales)

    def init_chunk(extra_C, data, task_C):
        w_CxK, mu_CxKxD, var_CxKxD = extra_C
        # EM state lives in coordinates centred on each task's mean of real points (see tgmm_jax.mixture.fused).
        mu_CxKxD = mu_CxKxD - data.centre_CxD[:, None, :]
        return FitState(w_CxK[:, None], mu_CxKxD[:, None], None if var_CxKxD is None else var_CxKxD[:, None])

    return _fit(task, init_chunk, config, 1, (weights, init.means, variances), max_iter=max_iter, tol=tol)


fit_em = jax.jit(_fit_em, static_argnames=("config",))
fit_em_from = jax.jit(_fit_em_from, static_argnames=("variant",))
