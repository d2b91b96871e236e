"""Training: configuration, mesh, train state and step, orbax checkpoints, logging, the loop."""

from tgmm_jax.train.config import (
    EvalConfig,
    OptimConfig,
    TrainConfig,
    default_config,
    model_config_from,
    task_spec_from,
    validate_config,
)
from tgmm_jax.train.trainer import train_and_evaluate

__all__ = [
    "EvalConfig",
    "OptimConfig",
    "TrainConfig",
    "default_config",
    "model_config_from",
    "task_spec_from",
    "train_and_evaluate",
    "validate_config",
]
