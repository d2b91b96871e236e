"""Training configuration: the default ``ConfigDict``, its validation, and builders of the typed pieces.

Top-level fields: ``seed``, ``total_steps``, ``tasks_per_k``, ``log_every``, ``eval_every`` (0 = off),
``checkpoint_every``, ``keep_checkpoints``, ``objective``, ``lik_weight``, ``grad_accum_steps``,
``tensorboard``; groups ``task.*`` (a TaskSpec), ``model.*`` (a ModelConfig), ``optim.*`` and ``eval.*``.
Unknown fields and invalid values fail at start with a message naming them.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
from ml_collections import config_dict

from tgmm_jax.losses import OBJECTIVES
from tgmm_jax.models import MODEL_SIZES, ModelConfig
from tgmm_jax.models.config import reseeded
from tgmm_jax.tasks import TaskSpec, candidates_per_round

SCHEDULES = ("constant", "cosine")
DEFAULT_EVAL_BASELINES = ("em", "em_kmeanspp", "spectral")


def model_group(size: str = "paper", **overrides) -> ml_collections.ConfigDict:
    """A ``model`` config group with every ModelConfig field explicit (size's values + overrides), the
    backbone's options as the group ``model.backbone_options``, e.g. ``model_group('paper', backbone='mamba2')``."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    return _group(ModelConfig.from_dict({**MODEL_SIZES[size], **overrides}).to_dict())


def _group(fields: dict) -> ml_collections.ConfigDict:
    """A ConfigDict of ``fields`` (nested dicts become groups); None becomes an int placeholder, so that
    ``--config.group.field=3`` can set it."""
    group = ml_collections.ConfigDict()
    for name, value in fields.items():
        if isinstance(value, dict):
            group[name] = _group(value)
        else:
            group[name] = config_dict.placeholder(int) if value is None else value
    return group


def task_group(**overrides) -> ml_collections.ConfigDict:
    """A ``task`` config group with every TaskSpec field; n_min None means n_max // 2."""
    fields = {f.name: f.default for f in dataclasses.fields(TaskSpec)}
    fields.update(dim=8)
    fields.update(overrides)
    return _group(fields)


def default_config() -> ml_collections.ConfigDict:
    """The paper's recipe (docs/official_differences.md §4) at d=8; config files start from this and change
    what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 42
    c.total_steps = 100_000
    c.tasks_per_k = 64
    c.log_every = 100
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.objective = "est"
    c.lik_weight = 1.0
    # weight of the clustering read-out's responsibility cross-entropy (readout='cluster')
    c.resp_weight = 0.0
    c.train_dims = ()  # data dimensions to cycle through per step (a dimension-free model); () = task.dim only
    c.grad_accum_steps = 1  # micro-batches per step (divides tasks_per_k); the same gradient, less memory
    c.tensorboard = True
    c.task = task_group()
    c.model = model_group("paper")
    c.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-3,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            schedule="constant",  # the paper: constant LR, no warmup, no clipping
            warmup_steps=0,
            grad_clip_norm=0.0,  # 0 = off
        )
    )
    c.eval = ml_collections.ConfigDict(
        dict(
            tasks_per_k=128,  # fresh tasks per K per evaluation, as the official protocol's rounds
            n=config_dict.placeholder(int),  # points per evaluation task; None = task.n_max
            baselines=DEFAULT_EVAL_BASELINES,
            fresh_tasks=True,  # new tasks every round, as the official protocol (tail mean = 10 x 128 tasks)
            # clustering read-out: evaluate with these slot seedings (ModelConfig.slot_init); None = as trained
            slot_init=config_dict.placeholder(str),
        )
    )
    return c


_TOP_LEVEL = {
    "seed",
    "total_steps",
    "tasks_per_k",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "objective",
    "lik_weight",
    "resp_weight",
    "train_dims",
    "grad_accum_steps",
    "tensorboard",
    "task",
    "model",
    "optim",
    "eval",
}
_OPTIM = {"learning_rate", "weight_decay", "b1", "b2", "eps", "schedule", "warmup_steps", "grad_clip_norm"}
_EVAL = {"tasks_per_k", "n", "baselines", "fresh_tasks", "slot_init"}


def _int_at_least(config, name, low):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"config.{name} must be an integer >= {low}, got {value!r}")


def _number(value, name, low=0.0, high=math.inf, low_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise ValueError(
            f"config.{name} must be a number in {'(' if low_open else '['}{low}, {high}], got {value!r}"
        )


def task_spec_from(task: ml_collections.ConfigDict) -> TaskSpec:
    fields = task.to_dict()
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown config.task field(s) {unknown}; known: {sorted(known)}")
    try:
        return TaskSpec(**fields)
    except ValueError as e:
        raise ValueError(f"config.task: {e}") from None


def model_config_from(model: ml_collections.ConfigDict) -> ModelConfig:
    try:
        return ModelConfig.from_dict(model.to_dict())
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None


def validate_config(config: ml_collections.ConfigDict) -> tuple[TaskSpec, ModelConfig]:
    """Checks every field; returns the typed task spec and model config. Raises ValueError naming the field."""
    unknown = sorted(set(config.keys()) - _TOP_LEVEL)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known: {sorted(_TOP_LEVEL)}")
    missing = sorted(_TOP_LEVEL - set(config.keys()))
    if missing:
        raise ValueError(f"config is missing field(s) {missing}")
    _int_at_least(config, "seed", 0)
    for name, low in (
        ("total_steps", 1),
        ("tasks_per_k", 1),
        ("log_every", 1),
        ("eval_every", 0),
        ("checkpoint_every", 1),
        ("keep_checkpoints", 1),
        ("grad_accum_steps", 1),
    ):
        _int_at_least(config, name, low)
    if config.tasks_per_k % config.grad_accum_steps:
        raise ValueError(
            f"config.grad_accum_steps={config.grad_accum_steps} must divide config.tasks_per_k="
            f"{config.tasks_per_k} (each micro-batch holds tasks_per_k / grad_accum_steps tasks of every K)"
        )
    if config.objective not in OBJECTIVES:
        raise ValueError(f"config.objective must be one of {OBJECTIVES}, got {config.objective!r}")
    _number(config.lik_weight, "lik_weight")
    _number(config.resp_weight, "resp_weight")
    if not isinstance(config.tensorboard, bool):
        raise ValueError(f"config.tensorboard must be a bool, got {config.tensorboard!r}")

    for group, known in (("optim", _OPTIM), ("eval", _EVAL)):
        extra = sorted(set(config[group].keys()) - known)
        if extra:
            raise ValueError(f"unknown config.{group} field(s) {extra}; known: {sorted(known)}")
    o = config.optim
    _number(o.learning_rate, "optim.learning_rate", low_open=True)
    _number(o.weight_decay, "optim.weight_decay")
    _number(o.b1, "optim.b1", high=1.0)
    _number(o.b2, "optim.b2", high=1.0)
    _number(o.eps, "optim.eps", low_open=True)
    _number(o.grad_clip_norm, "optim.grad_clip_norm")
    if o.schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
    if (
        isinstance(o.warmup_steps, bool)
        or not isinstance(o.warmup_steps, int)
        or not 0 <= o.warmup_steps <= config.total_steps
    ):
        raise ValueError(
            f"config.optim.warmup_steps must be an integer in [0, total_steps], got {o.warmup_steps!r}"
        )

    e = config.eval
    if isinstance(e.tasks_per_k, bool) or not isinstance(e.tasks_per_k, int) or e.tasks_per_k < 1:
        raise ValueError(f"config.eval.tasks_per_k must be an integer >= 1, got {e.tasks_per_k!r}")
    if e.n is not None and (isinstance(e.n, bool) or not isinstance(e.n, int) or e.n < 1):
        raise ValueError(f"config.eval.n must be None or an integer >= 1, got {e.n!r}")
    if not isinstance(e.fresh_tasks, bool):
        raise ValueError(f"config.eval.fresh_tasks must be a bool, got {e.fresh_tasks!r}")
    if not all(isinstance(name, str) for name in eval_baseline_names(e)):
        raise ValueError(f"config.eval.baselines must be a tuple of method names, got {e.baselines!r}")

    spec = task_spec_from(config.task)
    model_config = model_config_from(config.model)
    eval_model_config(model_config, e)
    try:
        model_config.backbone_options.check_num_points(max(spec.n_max, e.n or 0))
    except ValueError as err:
        raise ValueError(f"config.model: {err}") from None
    if config.resp_weight and model_config.readout != "cluster":
        raise ValueError(
            f"config.resp_weight={config.resp_weight} needs responsibilities: set config.model.readout='cluster'"
        )
    for dim_spec in train_specs(spec, config):
        if dim_spec.dim != spec.dim and not model_config.dimension_free:
            raise ValueError(
                f"config.train_dims={tuple(config.train_dims)} needs a dimension-free model "
                "(config.model.readin='normalized'); this one is fixed to config.task.dim"
            )
        candidates_per_round(dim_spec, dim_spec.mean_shift)  # an impossible (D, K) cell fails here, named
    return spec, model_config


def train_specs(spec: TaskSpec, config: ml_collections.ConfigDict) -> list[TaskSpec]:
    """The task spec of each training step kind: one per entry of ``train_dims`` (step t uses entry
    (t - 1) mod len), or just ``spec``."""
    dims = config.train_dims
    if isinstance(dims, (int, str)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims
    ):
        raise ValueError(f"config.train_dims must be a tuple of integers >= 1, got {dims!r}")
    return [dataclasses.replace(spec, dim=d) for d in dims] or [spec]


def eval_model_config(model_config: ModelConfig, eval_config: ml_collections.ConfigDict) -> ModelConfig:
    """The model config the periodic evaluation runs: ``model_config`` seeded by ``eval.slot_init`` if set."""
    try:
        return reseeded(model_config, eval_config.get("slot_init"))
    except ValueError as err:
        raise ValueError(f"config.eval.slot_init: {err}") from None


def eval_baseline_names(eval_config: ml_collections.ConfigDict) -> tuple:
    names = eval_config.baselines
    return (names,) if isinstance(names, str) else tuple(names)


def check_eval_baselines(eval_config: ml_collections.ConfigDict, available) -> None:
    """Every name in ``eval.baselines`` must be among the methods handed to the trainer (``available``)."""
    missing = [name for name in eval_baseline_names(eval_config) if name not in available]
    if missing:
        raise ValueError(
            f"config.eval.baselines names {missing}, but the trainer was handed methods for {sorted(available)}: "
            "pass baselines={name: method} (experiments/methods.py builds them from the baselines registry) "
            "or drop those names"
        )


def eval_spec_from(spec: TaskSpec, eval_config: ml_collections.ConfigDict) -> TaskSpec:
    """Evaluation tasks: the training family at a fixed N (eval.n, default n_max), no length mask."""
    n = eval_config.n or spec.n_max
    return dataclasses.replace(spec, n_max=n, n_min=n, variable_n=False)
