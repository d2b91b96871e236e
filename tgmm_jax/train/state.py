"""Train state, optimizer and the jitted train step (the batch is sampled inside the step)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct, traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from tgmm_jax import losses
from tgmm_jax.models import ModelConfig, make_model
from tgmm_jax.tasks import TaskSpec, noise_variances, sample_tasks
from tgmm_jax.train import config as config_lib
from tgmm_jax.train import masked, sharding, target_pool

# The step key's stream for the missing-value masks (distinct from the task sampler's use of the key itself).
_MASK_STREAM = 0x6D61736B
# Per-step scalars accumulated in the state between log steps (window sums; exact across resume).
_NONFINITE = "nonfinite_steps"


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of completed steps
    params: dict
    opt_state: optax.OptState
    metric_sums: dict  # name -> float32 scalar, summed over the current log window
    window_steps: jax.Array  # int32: steps in the current log window


def make_optimizer(
    optim: config_lib.OptimConfig | ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
    """AdamW with an optional warmup/cosine schedule and optional global-norm clipping (both off by default)."""
    lr = optim.learning_rate
    if optim.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, optim.warmup_steps, total_steps, end_value=0.0)
    elif optim.warmup_steps:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, optim.warmup_steps), optax.constant_schedule(lr)],
            [optim.warmup_steps],
        )
    else:
        schedule = lr
    adamw = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
    if optim.grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), adamw)
    return adamw


def sample_global_batch(key: jax.Array, spec: TaskSpec, tasks_per_k: int, mesh):
    """The step's tasks, sharded over 'data' so each device samples and processes its own slice."""
    task = sample_tasks(key, spec, tasks_per_k)
    return jax.lax.with_sharding_constraint(task, sharding.batch_sharded(mesh))


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the step minimises (config fields ``objective``, ``lik_weight``, ``resp_weight``)."""

    name: str
    lik_weight: float = 1.0
    resp_weight: float = 0.0

    @classmethod
    def from_config(cls, config: config_lib.TrainConfig | ml_collections.ConfigDict) -> Objective:
        return cls(config.objective, config.lik_weight, config.resp_weight)


def in_noise_units(task):
    """(the task in its own noise units, the noise variances a noise-conditioned model is told).

    Points, means and scales are divided by each task's noise standard deviation (the root mean square of its
    real components' scales), so the loss compares estimates on one footing whatever the task's units; the model
    is exactly scale-equivariant, so this is the same problem. Even-indexed tasks are told their variance (1 in
    these units), odd-indexed ones are not (NaN): training sees known and unknown noise equally often.
    """
    mask_BxK = task.component_mask
    inv_sigma_B = jax.lax.rsqrt(jnp.maximum(noise_variances(task), 1e-30))
    scaled = task.replace(
        points=task.points * inv_sigma_B[:, None, None],
        means=task.means * inv_sigma_B[:, None, None],
        scales=jnp.where(mask_BxK[..., None], task.scales * inv_sigma_B[:, None, None], 1.0),
    )
    return scaled, jnp.where(noise_told(task.points.shape[0]), 1.0, jnp.nan)


def noise_told(batch_size: int) -> jax.Array:
    """[B] bool: the tasks a noise-conditioned model is told the noise variance of (the even-indexed ones)."""
    return jnp.arange(batch_size) % 2 == 0


def batch_task(batch):
    """The ``GMMTask`` of a step's batch (a task, a ``target_pool.PoolBatch`` or a ``masked.MaskedBatch``)."""
    return batch.task if isinstance(batch, (target_pool.PoolBatch, masked.MaskedBatch)) else batch


def _loss_fn(model, objective: Objective):
    conditioned = model.config.noise == "conditioned"

    def loss_fn(params, batch):
        task = batch_task(batch)
        label_probs = None
        if isinstance(batch, target_pool.PoolBatch):
            # distillation: the reference estimate replaces the true weights and means of the tasks whose
            # noise the model is told (the reference assumes it known); the others keep their true parameters.
            # A pool with responsibilities also replaces those tasks' labels by the reference's soft labels.
            use_B = noise_told(task.points.shape[0]) if conditioned else jnp.ones(task.points.shape[0], bool)
            label_probs = target_pool.soft_labels(batch, use_B)
            task = target_pool.distilled(batch, use_B)
        kwargs = {}
        if isinstance(batch, masked.MaskedBatch) and model.config.readin_mask:
            kwargs["observed"] = batch.observed
        if conditioned:
            task, kwargs["noise_variance"] = in_noise_units(task)
        # train=True: with config.official_pooling_mask_bug the official training-time mask is reproduced
        out = model.apply(
            {"params": params}, task.points, task.point_mask, task.num_components, train=True, **kwargs
        )
        return losses.compute_loss(
            objective.name,
            out,
            task,
            lik_weight=objective.lik_weight,
            resp_weight=objective.resp_weight,
            label_probs_BxNxK=label_probs,
        )

    return loss_fn


def logged_metric_names(model, spec: TaskSpec, objective: Objective, params) -> tuple[str, ...]:
    """Names of the per-step scalars the step accumulates: the loss terms, grad_norm, nonfinite_steps."""
    dummy = jax.eval_shape(lambda: sample_tasks(jax.random.key(0), spec, 1))
    _, terms = jax.eval_shape(_loss_fn(model, objective), params, dummy)
    return tuple(sorted(terms)) + ("grad_norm", _NONFINITE)


def init_train_state(key, model, tx, spec: TaskSpec, objective: Objective, mesh) -> TrainState:
    """``create_train_state`` with the metric names the step of ``objective`` logs for this model."""
    names = logged_metric_names(model, spec, objective, init_params_shape(key, model, spec))
    return create_train_state(key, model, tx, spec, names, mesh)


def create_train_state(key, model, tx, spec: TaskSpec, metric_names: tuple[str, ...], mesh) -> TrainState:
    """Initialises parameters from ``key``, replicated on the mesh."""

    def init(key):
        dummy = sample_tasks(jax.random.key(0), spec, 1)
        params = model.init(key, dummy.points, dummy.point_mask, dummy.num_components)["params"]
        return TrainState(
            step=jnp.int32(0),
            params=params,
            opt_state=tx.init(params),
            metric_sums={name: jnp.float32(0.0) for name in metric_names},
            window_steps=jnp.int32(0),
        )

    return jax.jit(init, out_shardings=sharding.replicated(mesh))(key)


# Parameter modules a config may add to a warm start's checkpoint: zero-initialised, so the warm-started model
# answers as the checkpoint's at step 0 (ModelConfig.readin_mask's projection of the mask features).
ADDABLE_MODULES = ("mask_proj",)


def _grown_along_k(fresh_shape, given_shape, source_ks, target_ks) -> bool:
    """True when a parameter of shape ``given_shape`` (trained on ``source_ks``) grows to ``fresh_shape`` only
    along axes indexed by K: the task-set position (len(ks)) or the component (max(ks))."""
    if not source_ks or not target_ks or len(fresh_shape) != len(given_shape):
        return False
    grows = {(len(source_ks), len(target_ks)), (max(source_ks), max(target_ks))}
    changed = [(g, f) for g, f in zip(given_shape, fresh_shape) if g != f]
    return bool(changed) and all(pair in grows for pair in changed)


def warm_started(
    state: TrainState, params, init_from: str, tx, mesh, source_ks=None, target_ks=None
) -> TrainState:
    """``state`` at step 0 with ``params`` (those of the checkpoint ``init_from``: the same tree, shapes and
    dtypes as ``state.params``) and a fresh optimizer state for them, replicated on the mesh. Two exceptions:

    * modules of ``ADDABLE_MODULES`` the config adds keep their fresh zero initialisation;
    * with ``source_ks`` (the checkpoint's task set) a prefix of ``target_ks`` (the config's, more Ks), the
      tables indexed by K (task embedding, slots: axes of size len(ks) or max(ks)) grow: the trained block is
      copied and the rows of the new Ks (and the new components' slots) keep their fresh initialisation, so
      the model answers every trained K as the checkpoint did at step 0.
    """
    source_ks = tuple(int(k) for k in source_ks) if source_ks is not None else ()
    target_ks = tuple(int(k) for k in target_ks) if target_ks is not None else ()
    if source_ks and target_ks and source_ks != target_ks and target_ks[: len(source_ks)] != source_ks:
        raise ValueError(
            f"config.init_from={init_from!r} was trained on ks={source_ks}; a warm start may only add Ks after "
            f"them (the config's ks must start with {source_ks}), got ks={target_ks}"
        )
    fresh = traverse_util.flatten_dict(state.params)
    given = traverse_util.flatten_dict(params)
    added = {path for path in fresh if path not in given and any(m in path for m in ADDABLE_MODULES)}
    grown = {
        path
        for path, x in given.items()
        if path in fresh
        and jnp.asarray(x).dtype == fresh[path].dtype
        and _grown_along_k(tuple(fresh[path].shape), tuple(jnp.shape(x)), source_ks, target_ks)
    }
    expected = {path: (tuple(x.shape), x.dtype) for path, x in fresh.items() if path not in added | grown}
    found = {path: (tuple(x.shape), jnp.asarray(x).dtype) for path, x in given.items() if path not in grown}
    if expected != found:
        raise ValueError(
            f"config.init_from={init_from!r} holds parameters of another tree or shape than this config's "
            "model; a warm start keeps the architecture (the config.model fields) unchanged"
        )

    def grow(path):
        block = tuple(slice(0, n) for n in jnp.shape(given[path]))
        return jnp.asarray(fresh[path]).at[block].set(jnp.asarray(given[path]))

    merged = traverse_util.unflatten_dict(
        {**{path: fresh[path] for path in added}, **given, **{path: grow(path) for path in grown}}
    )

    def start(params):
        return state.replace(params=params, opt_state=tx.init(params))

    return jax.jit(start, out_shardings=sharding.replicated(mesh))(merged)


def init_params_shape(key, model, spec: TaskSpec):
    """Abstract parameters (shapes only), for deriving metric names before the real init."""
    dummy = jax.eval_shape(lambda: sample_tasks(jax.random.key(0), spec, 1))
    return jax.eval_shape(
        lambda k, t: model.init(k, t.points, t.point_mask, t.num_components)["params"], key, dummy
    )


def _pool_for(config, spec: TaskSpec, objective: Objective) -> target_pool.TargetPool | None:
    """``config.target_pool``'s pool of ``spec.dim`` (None without one); a pool with responsibilities needs a
    responsibility term to use them."""
    if not config.target_pool:
        return None
    pool = target_pool.load_pool(config.target_pool, spec)
    if pool.batch.target_responsibilities is not None and not objective.resp_weight:
        raise ValueError(
            f"config.target_pool={config.target_pool!r} holds responsibilities (soft labels), but "
            "config.resp_weight is 0, so they would be unused: set resp_weight > 0 or use a pool without them"
        )
    return pool


def make_train_step(
    model,
    tx,
    spec: TaskSpec,
    tasks_per_k: int,
    objective: Objective,
    log_every: int,
    mesh,
    grad_accum_steps: int = 1,
    pool: target_pool.TargetPool | None = None,
    missing_rate_max: float = 0.0,
) -> Callable[[TrainState, jax.Array], TrainState]:
    """The jitted step: sample tasks from fold_in(data_key, step), loss, grads, AdamW, window sums.

    With a ``pool`` the tasks are drawn from it instead (``target_pool.draw_batch``, the same key), and the
    loss regresses on its reference estimates (distillation, ``_loss_fn``).

    With ``missing_rate_max`` > 0 the tasks' coordinates are masked and filled (``masked.masked_batch``, from
    a key folded from the step's), and a model with ``readin_mask`` is told the mask.

    With ``grad_accum_steps`` A > 1 the same global batch is split into A micro-batches (A divides
    tasks_per_k) whose gradients are summed in a ``lax.scan`` with the weights that make the sum the full
    batch's gradient; only one micro-batch's activations are live at a time.
    """

    loss_fn = _loss_fn(model, objective)

    def step_fn(state: TrainState, data_key: jax.Array, pool_batch=None) -> TrainState:
        step_key = jax.random.fold_in(data_key, state.step)
        if pool is None:
            task = sample_global_batch(step_key, spec, tasks_per_k, mesh)
        else:
            drawn = target_pool.draw_batch(pool_batch, step_key, len(pool.ks), pool.per_k, tasks_per_k)
            task = jax.lax.with_sharding_constraint(drawn, sharding.batch_sharded(mesh))
        if missing_rate_max:
            task = masked.masked_batch(jax.random.fold_in(step_key, _MASK_STREAM), task, missing_rate_max)
            task = jax.lax.with_sharding_constraint(task, sharding.batch_sharded(mesh))
        if grad_accum_steps == 1:
            (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, task)
        else:
            terms, grads = _accumulated(loss_fn, state.params, task, grad_accum_steps, objective, mesh)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        scalars = dict(terms, grad_norm=optax.tree.norm(grads))
        scalars[_NONFINITE] = (~jnp.isfinite(terms["loss"])).astype(jnp.float32)
        new_window = state.step % log_every == 0
        sums = {
            name: jnp.where(new_window, 0.0, state.metric_sums[name]) + scalars[name].astype(jnp.float32)
            for name in state.metric_sums
        }
        window_steps = jnp.where(new_window, 0, state.window_steps) + 1
        return TrainState(state.step + 1, params, opt_state, sums, window_steps)

    rep = sharding.replicated(mesh)
    if pool is None:  # the jitted function itself: callers may .lower() it (benchmarks/train_step.py)
        return jax.jit(step_fn, in_shardings=(rep, rep), out_shardings=rep, donate_argnums=0)
    # the pool is an argument, not a closure: a constant of that size would be copied into the compiled program
    jitted = jax.jit(step_fn, in_shardings=(rep, rep, rep), out_shardings=rep, donate_argnums=0)
    if pool.ks != tuple(spec.ks) or pool.dim != spec.dim:
        raise ValueError(
            f"the pool holds d = {pool.dim}, ks = {pool.ks}; this step trains d = {spec.dim}, ks = {spec.ks}"
        )
    pool_batch = jax.device_put(pool.batch, rep)
    return lambda state, data_key: jitted(state, data_key, pool_batch)


# Loss terms that are means over the batch's real points (losses.responsibility_loss) rather than over its
# tasks, with the Objective field that weighs them in the loss. A micro-batch's value of such a term counts
# by its share of the batch's real points, not by 1 / A.
_POINT_MEAN_TERMS = {"resp_ce": "resp_weight"}


def micro_batches(task, num: int, mesh):
    """[B, ...] -> [num, B / num, ...]: micro-batch m holds tasks m, m + num, m + 2 num, ... (tasks_per_k / num
    of every K when num divides tasks_per_k), sharded over 'data' as the batch is, so no task changes device
    when num divides each device's share."""

    def split(x):
        return x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)

    return jax.lax.with_sharding_constraint(
        jax.tree.map(split, task), NamedSharding(mesh, PartitionSpec(None, "data"))
    )


def _accumulated(loss_fn, params, task, num: int, objective: Objective, mesh):
    """(terms, grads) of the whole batch, from ``num`` micro-batches in a scan: task-mean terms average the
    micro-batch values, point-mean terms weigh them by point counts (exact with variable N too)."""
    micro = micro_batches(task, num, mesh)
    points_A = jnp.sum(batch_task(micro).point_mask, axis=(1, 2)).astype(jnp.float32)
    point_share_A = points_A / jnp.maximum(jnp.sum(points_A), 1.0)

    def micro_loss(params, micro_task, point_share):
        loss, terms = loss_fn(params, micro_task)
        # The loss is linear in its terms: a point-mean term's weight moves from 1 / A to its point share.
        scaled = loss / num
        for name, coef in _POINT_MEAN_TERMS.items():
            if name in terms:
                scaled = scaled + getattr(objective, coef) * terms[name] * (point_share - 1.0 / num)
        weighted = {n: v * (point_share if n in _POINT_MEAN_TERMS else 1.0 / num) for n, v in terms.items()}
        return scaled, dict(weighted, loss=scaled)

    grad_fn = jax.grad(micro_loss, has_aux=True)

    def body(carry, xs):
        grads, terms = grad_fn(params, *xs)
        return jax.tree.map(jnp.add, carry, (terms, grads)), None

    terms0 = jax.eval_shape(lambda: micro_loss(params, jax.tree.map(lambda x: x[0], micro), 0.0)[1])
    zeros = (
        jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), terms0),
        jax.tree.map(jnp.zeros_like, params),
    )
    (terms, grads), _ = jax.lax.scan(body, zeros, (micro, point_share_A))
    return terms, grads


@dataclasses.dataclass(frozen=True)
class Training:
    """What a training config builds: its model, optimizer, objective, initial state, keys and steps."""

    spec: TaskSpec
    model_config: ModelConfig
    model: object  # the flax module of make_model
    tx: optax.GradientTransformation
    objective: Objective
    state: TrainState  # freshly initialised, replicated on the mesh
    step_fns: tuple  # one jitted step per training dimension (config.train_dims); step t uses (t - 1) mod len
    data_key: jax.Array  # the steps' data key, replicated on the mesh
    eval_key: jax.Array


def build_training(config: config_lib.TrainConfig | ml_collections.ConfigDict, mesh) -> Training:
    """The trainer's setup from ``config`` (a ConfigDict is checked here), shared with the benchmarks that time
    its step."""
    config = config_lib.as_train_config(config)
    spec, model_config = config.task, config.model
    model = make_model(model_config, spec)
    init_key, data_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
    tx = make_optimizer(config.optim, config.total_steps)
    objective = Objective.from_config(config)
    state = init_train_state(init_key, model, tx, spec, objective, mesh)
    step_fns = tuple(
        make_train_step(
            model,
            tx,
            step_spec,
            config.tasks_per_k,
            objective,
            config.log_every,
            mesh,
            config.grad_accum_steps,
            _pool_for(config, step_spec, objective),
            config.missing_rate_max,
        )
        for step_spec in config.train_specs()
    )
    data_key = sharding.replicate(data_key, mesh)
    return Training(spec, model_config, model, tx, objective, state, step_fns, data_key, eval_key)
