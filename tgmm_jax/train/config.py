"""Training configuration: the typed ``TrainConfig`` (with ``OptimConfig``, ``EvalConfig``, a ``TaskSpec`` and a
``ModelConfig``), and the ``ConfigDict`` the command line edits, built from the same dataclasses.

The dataclasses are the schema: ``default_config()`` is their defaults as a ConfigDict (so that
``--config.field=value`` can set any field), and ``TrainConfig.from_config`` turns the edited ConfigDict back into
the typed config, once, at the command-line boundary. Unknown fields and invalid values fail there with a message
naming them.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from tgmm_jax.losses import OBJECTIVES
from tgmm_jax.masking import max_rate
from tgmm_jax.models import MODEL_SIZES, ModelConfig
from tgmm_jax.models.config import reseeded
from tgmm_jax.tasks import TaskSpec, candidates_per_round
from tgmm_jax.validation import check_bool, check_choice, check_fields, check_int, check_number, is_int

SCHEDULES = ("constant", "cosine")
DEFAULT_EVAL_BASELINES = ("em", "em_kmeanspp", "spectral")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with an optional schedule and clipping (``config.optim.*``); the paper's: constant LR, no warmup,
    no clipping."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_steps: int = 0  # at most total_steps
    grad_clip_norm: float = 0.0  # 0 = off

    def __post_init__(self):
        check_number(self.learning_rate, "config.optim.learning_rate", 0.0, low_open=True)
        check_number(self.weight_decay, "config.optim.weight_decay", 0.0)
        check_number(self.b1, "config.optim.b1", 0.0, 1.0)
        check_number(self.b2, "config.optim.b2", 0.0, 1.0)
        check_number(self.eps, "config.optim.eps", 0.0, low_open=True)
        check_number(self.grad_clip_norm, "config.optim.grad_clip_norm", 0.0)
        check_choice(self.schedule, "config.optim.schedule", SCHEDULES)
        check_int(self.warmup_steps, "config.optim.warmup_steps", 0)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The periodic evaluation (``config.eval.*``): the model and the named baselines on the same fresh tasks."""

    tasks_per_k: int = 128  # fresh tasks per K per evaluation, as the official protocol's rounds
    n: int | None = None  # points per evaluation task; None = task.n_max
    baselines: tuple[str, ...] = DEFAULT_EVAL_BASELINES  # names of methods handed to the trainer
    fresh_tasks: bool = True  # new tasks every round, as the official protocol (tail mean = 10 x 128 tasks)
    # clustering read-out: evaluate with these slot seedings (ModelConfig.slot_init); None = as trained
    slot_init: str | None = None

    def __post_init__(self):
        check_int(self.tasks_per_k, "config.eval.tasks_per_k", 1)
        check_int(self.n, "config.eval.n", 1, optional=True)
        check_bool(self.fresh_tasks, "config.eval.fresh_tasks")
        names = (self.baselines,) if isinstance(self.baselines, str) else self.baselines
        if not isinstance(names, (tuple, list)) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"config.eval.baselines must be a tuple of method names, got {self.baselines!r}")
        object.__setattr__(self, "baselines", tuple(names))
        if self.slot_init is not None and not isinstance(self.slot_init, str):
            raise ValueError(f"config.eval.slot_init must be None or a string, got {self.slot_init!r}")


def _default_task() -> TaskSpec:
    return TaskSpec(dim=8)


def _default_model() -> ModelConfig:
    return ModelConfig.from_dict(MODEL_SIZES["paper"])


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run, checked on construction (each field, then the fields against each other).

    Defaults are the paper's recipe (docs/official_differences.md §4) at d=8; config files start from
    ``default_config()`` and change what differs.
    """

    seed: int = 42
    total_steps: int = 100_000
    tasks_per_k: int = 64  # training tasks per K per step
    log_every: int = 100
    eval_every: int = 1000  # 0 = no periodic evaluation
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    objective: str = "est"
    lik_weight: float = 1.0
    # weight of the clustering read-out's responsibility cross-entropy (readout='cluster')
    resp_weight: float = 0.0
    # data dimensions to cycle through per step (a dimension-free model); () = task.dim only
    train_dims: tuple[int, ...] = ()
    grad_accum_steps: int = 1  # micro-batches per step (divides tasks_per_k); the same gradient, less memory
    tensorboard: bool = True
    # a run's first step starts from these parameters (a workdir, an exported directory or a shipped name) with
    # a fresh optimizer and schedule, e.g. a curriculum stage; "" = a random initialisation. Resume wins.
    init_from: str = ""
    # a directory of fixed training tasks with reference estimates (``tgmm_jax.train.target_pool``; built by
    # ``experiments.distill_pool``): steps draw their tasks from it and regress the known-noise tasks' weights
    # and means on the reference (distillation); "" = fresh tasks from the sampler every step.
    target_pool: str = ""
    # training with missing values: each task's coordinates are masked completely at random at a rate drawn
    # uniformly from [0, missing_rate_max] per task (``tgmm_jax.train.masked``), the missing ones filled from
    # each point's nearest neighbours as the estimator fills them; a model with ``model.readin_mask`` is told the
    # mask. 0 = complete points.
    missing_rate_max: float = 0.0
    task: TaskSpec = dataclasses.field(default_factory=_default_task)
    model: ModelConfig = dataclasses.field(default_factory=_default_model)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self):
        check_int(self.seed, "config.seed", 0)
        for name in ("total_steps", "tasks_per_k", "log_every", "checkpoint_every", "keep_checkpoints"):
            check_int(getattr(self, name), f"config.{name}", 1)
        check_int(self.eval_every, "config.eval_every", 0)
        check_int(self.grad_accum_steps, "config.grad_accum_steps", 1)
        if self.tasks_per_k % self.grad_accum_steps:
            raise ValueError(
                f"config.grad_accum_steps={self.grad_accum_steps} must divide config.tasks_per_k="
                f"{self.tasks_per_k} (each micro-batch holds tasks_per_k / grad_accum_steps tasks of every K)"
            )
        check_choice(self.objective, "config.objective", OBJECTIVES)
        check_number(self.lik_weight, "config.lik_weight", 0.0)
        check_number(self.resp_weight, "config.resp_weight", 0.0)
        check_bool(self.tensorboard, "config.tensorboard")
        if not isinstance(self.init_from, str):
            raise ValueError(
                f"config.init_from must be a path or a shipped name (a string), got {self.init_from!r}"
            )
        if not isinstance(self.target_pool, str):
            raise ValueError(
                f"config.target_pool must be a directory path (a string), got {self.target_pool!r}"
            )
        check_number(self.missing_rate_max, "config.missing_rate_max", 0.0, 0.5)
        if self.missing_rate_max and self.target_pool:
            raise ValueError(
                "config.missing_rate_max and config.target_pool cannot be combined (not implemented)"
            )
        dims = self.train_dims
        if isinstance(dims, (int, str)) or not all(is_int(d) and d >= 1 for d in dims):
            raise ValueError(f"config.train_dims must be a tuple of integers >= 1, got {dims!r}")
        object.__setattr__(self, "train_dims", tuple(dims))
        for name, cls in (
            ("task", TaskSpec),
            ("model", ModelConfig),
            ("optim", OptimConfig),
            ("eval", EvalConfig),
        ):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(
                    f"config.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}"
                )
        if self.optim.warmup_steps > self.total_steps:
            raise ValueError(
                f"config.optim.warmup_steps must be an integer in [0, total_steps], got {self.optim.warmup_steps!r}"
            )
        self.eval_model_config()  # eval.slot_init fits the model
        try:
            self.model.backbone_options.check_num_points(max(self.task.n_max, self.eval.n or 0))
        except ValueError as err:
            raise ValueError(f"config.model: {err}") from None
        if self.resp_weight and self.model.readout != "cluster":
            raise ValueError(
                f"config.resp_weight={self.resp_weight} needs responsibilities: set config.model.readout='cluster'"
            )
        for dim_spec in self.train_specs():
            if dim_spec.dim != self.task.dim and not self.model.dimension_free:
                raise ValueError(
                    f"config.train_dims={self.train_dims} needs a dimension-free model "
                    "(config.model.readin='normalized'); this one is fixed to config.task.dim"
                )
            if self.missing_rate_max > max_rate(dim_spec.dim):
                raise ValueError(
                    f"config.missing_rate_max={self.missing_rate_max} exceeds (D - 1) / D = "
                    f"{max_rate(dim_spec.dim):.3f} at D = {dim_spec.dim}: every point keeps one observed coordinate"
                )
            candidates_per_round(dim_spec, dim_spec.mean_shift)  # an impossible (D, K) cell fails here, named

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | TrainConfig) -> TrainConfig:
        """The typed config of a ConfigDict (or a dict of the same fields); a TrainConfig is returned as is."""
        if isinstance(config, TrainConfig):
            return config
        return cls.from_dict(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> TrainConfig:
        """Every field must be given (a saved config is first upgraded: train.restore.upgrade_saved_config)."""
        nested = [
            f"{group}.{f.name}" for group, group_cls in _GROUPS.items() for f in dataclasses.fields(group_cls)
        ]
        _check_group(fields, cls, "config", also=nested)  # a group's field given at the top: "optim.<name>"?
        optim, eval_ = fields["optim"], fields["eval"]
        for group, group_cls in (("optim", OptimConfig), ("eval", EvalConfig)):
            _check_group(fields[group], group_cls, f"config.{group}")
        return cls(
            **{name: fields[name] for name in _TOP_LEVEL_SCALARS},
            task=task_spec_from(fields["task"]),
            model=model_config_from(fields["model"]),
            optim=OptimConfig(**optim),
            eval=EvalConfig(**eval_),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples become lists), as saved in config.json; ``from_dict`` reads it back."""
        fields = {name: getattr(self, name) for name in _TOP_LEVEL_SCALARS}
        fields.update(
            task=dataclasses.asdict(self.task),
            model=self.model.to_dict(),
            optim=dataclasses.asdict(self.optim),
            eval=dataclasses.asdict(self.eval),
        )
        return json.loads(json.dumps(fields))

    def train_specs(self) -> list[TaskSpec]:
        """The task spec of each training step kind: one per entry of ``train_dims`` (step t uses entry
        (t - 1) mod len), or just ``task``."""
        return train_specs(self.task, self)

    def eval_model_config(self) -> ModelConfig:
        return eval_model_config(self.model, self.eval)

    def eval_spec(self) -> TaskSpec:
        return eval_spec_from(self.task, self.eval)


_GROUPS = {"task": TaskSpec, "model": ModelConfig, "optim": OptimConfig, "eval": EvalConfig}
_TOP_LEVEL_SCALARS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in _GROUPS)


def _check_group(fields, cls, where: str, also=()) -> None:
    """``fields`` (a dict) names exactly the fields of dataclass ``cls``: unknown ones fail with a "did you mean",
    missing ones fail too."""
    if not isinstance(fields, dict):
        raise ValueError(f"{where} must be a group of fields, got {fields!r}")
    known = [f.name for f in dataclasses.fields(cls)]
    check_fields(fields, known, where, also=also)
    missing = sorted(set(known) - set(fields))
    if missing:
        raise ValueError(f"{where} is missing field(s) {missing}")


def as_train_config(config: ml_collections.ConfigDict | TrainConfig) -> TrainConfig:
    """``TrainConfig.from_config``: the entry points of the library take either and check a ConfigDict once."""
    return TrainConfig.from_config(config)


def validate_config(config: ml_collections.ConfigDict | TrainConfig) -> tuple[TaskSpec, ModelConfig]:
    """Checks every field (``TrainConfig.from_config``); returns the typed task spec and model config."""
    typed = TrainConfig.from_config(config)
    return typed.task, typed.model


def model_group(size: str = "paper", **overrides) -> ml_collections.ConfigDict:
    """A ``model`` config group with every ModelConfig field explicit (size's values + overrides), the
    backbone's options as the group ``model.backbone_options``, e.g. ``model_group('paper', backbone='mamba2')``."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    return _group(ModelConfig.from_dict({**MODEL_SIZES[size], **overrides}).to_dict())


def _group(fields: dict, cls: type | None = None) -> ml_collections.ConfigDict:
    """A ConfigDict of ``fields`` (nested dicts become groups); None becomes a placeholder of the field's type in
    dataclass ``cls`` (int where unknown), so that ``--config.group.field=3`` can set it."""
    group = ml_collections.ConfigDict()
    for name, value in fields.items():
        if isinstance(value, dict):
            group[name] = _group(value)
        else:
            group[name] = config_dict.placeholder(_placeholder_type(cls, name)) if value is None else value
    return group


def _placeholder_type(cls: type | None, name: str) -> type:
    """The type ``T`` of a field annotated ``T | None`` when T is a plain int, float, str or bool, else int."""
    if cls is None:
        return int
    hint = typing.get_type_hints(cls).get(name)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if arg in (int, float, str, bool):
                return arg
    return int


def task_group(**overrides) -> ml_collections.ConfigDict:
    """A ``task`` config group with every TaskSpec field; n_min None means n_max // 2."""
    fields = {f.name: f.default for f in dataclasses.fields(TaskSpec)}
    fields.update(dim=8)
    fields.update(overrides)
    return _group(fields, TaskSpec)


def default_config() -> ml_collections.ConfigDict:
    """``TrainConfig()``'s fields as the ConfigDict that config files and the command line edit (the task group
    with n_min None, so that it follows n_max)."""
    defaults = TrainConfig()
    c = _group({name: getattr(defaults, name) for name in _TOP_LEVEL_SCALARS}, TrainConfig)
    c.task = task_group(dim=defaults.task.dim)
    c.model = _group(defaults.model.to_dict())
    c.optim = _group(dataclasses.asdict(defaults.optim), OptimConfig)
    c.eval = _group(dataclasses.asdict(defaults.eval), EvalConfig)
    return c


def task_spec_from(task: ml_collections.ConfigDict | dict) -> TaskSpec:
    fields = task.to_dict() if isinstance(task, ml_collections.ConfigDict) else dict(task)
    check_fields(fields, (f.name for f in dataclasses.fields(TaskSpec)), "config.task")
    try:
        return TaskSpec(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.task: {e}") from None


def model_config_from(model: ml_collections.ConfigDict | dict | ModelConfig) -> ModelConfig:
    if isinstance(model, ModelConfig):
        return model
    try:
        return ModelConfig.from_dict(
            model.to_dict() if isinstance(model, ml_collections.ConfigDict) else model
        )
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None


def train_specs(spec: TaskSpec, config) -> list[TaskSpec]:
    """The task spec of each training step kind: one per entry of ``config.train_dims`` (step t uses entry
    (t - 1) mod len), or just ``spec``."""
    return [dataclasses.replace(spec, dim=d) for d in config.train_dims] or [spec]


def eval_model_config(model_config: ModelConfig, eval_config) -> ModelConfig:
    """The model config the periodic evaluation runs: ``model_config`` seeded by ``eval.slot_init`` if set."""
    try:
        return reseeded(model_config, getattr(eval_config, "slot_init", None))
    except ValueError as err:
        raise ValueError(f"config.eval.slot_init: {err}") from None


def eval_baseline_names(eval_config) -> tuple:
    names = eval_config.baselines
    return (names,) if isinstance(names, str) else tuple(names)


def check_eval_baselines(eval_config, available) -> None:
    """Every name in ``eval.baselines`` must be among the methods handed to the trainer (``available``)."""
    missing = [name for name in eval_baseline_names(eval_config) if name not in available]
    if missing:
        raise ValueError(
            f"config.eval.baselines names {missing}, but the trainer was handed methods for {sorted(available)}: "
            "pass baselines={name: method} (experiments/methods.py builds them from the baselines registry) "
            "or drop those names"
        )


def eval_spec_from(spec: TaskSpec, eval_config) -> TaskSpec:
    """Evaluation tasks: the training family at a fixed N (eval.n, default n_max), no length mask."""
    n = eval_config.n or spec.n_max
    return dataclasses.replace(spec, n_max=n, n_min=n, variable_n=False)
