"""The one record of a trained model: ``Checkpoint`` (a model, its configs and its parameters).

Every loader returns it: ``pretrained.load_pretrained`` / ``load_exported`` / ``load_checkpoint`` (an exported
directory or a shipped name) and ``train.restore.load_run`` (an orbax training workdir, which also carries the
training config it was saved with).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from tgmm_jax.models import TGMM, ModelConfig, make_model
from tgmm_jax.models.config import reseeded
from tgmm_jax.tasks import TaskSpec


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A model ready to apply: ``model.apply({"params": params}, points, point_mask, num_components)``."""

    name: str  # shipped name, or the path it was loaded from
    model_config: ModelConfig
    spec: TaskSpec
    model: TGMM
    params: Any
    step: int | None = None
    config: ml_collections.ConfigDict | None = None  # the training config (training workdirs only)


def with_slot_init(ckpt: Checkpoint, slot_init: str | None, seed_combine: str | None = None) -> Checkpoint:
    """``ckpt`` with its clustering read-out seeded by ``slot_init`` (ModelConfig.slot_init) instead of the
    trained seeding, and its seedings combined by ``seed_combine`` (ModelConfig.seed_combine); neither has
    parameters, so the weights are unchanged. None or '' keeps the trained one."""
    model_config = reseeded(ckpt.model_config, slot_init, seed_combine)
    if model_config is ckpt.model_config:
        return ckpt
    return dataclasses.replace(ckpt, model_config=model_config, model=make_model(model_config, ckpt.spec))
