"""Rebuilding a trained model from a workdir alone: the config saved in the checkpoint + its parameters, as a
``tgmm_jax.trained.Checkpoint`` (the record the exported checkpoints load into too).

Configs saved by older code are upgraded to today's layout (``upgrade_saved_config``) before validation.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from etils import epath

from tgmm_jax.models import ModelConfig, make_model
from tgmm_jax.train import checkpoint, sharding
from tgmm_jax.train import config as config_lib
from tgmm_jax.train import state as state_lib
from tgmm_jax.trained import Checkpoint

# Before the backbone registry (fdeec3c and earlier), the backbone options were flat ModelConfig fields:
# old name -> the option's name, per backbone. History only: new backbones never appear here.
_FLAT_BACKBONE_FIELDS = {
    "gpt2": {"max_positions": "max_positions"},
    "set": {},
    "mamba2": {
        "mamba_heads": "heads",
        "mamba_head_dim": "head_dim",
        "mamba_state": "state",
        "mamba_groups": "groups",
        "mamba_expand": "expand",
        "mamba_conv": "conv",
        "mamba_chunk": "chunk",
    },
}


def upgrade_saved_config(config: dict) -> dict:
    """A saved config dict in today's layout: fields added since get the values that reproduce the older runs,
    and flat ``model.max_positions`` / ``model.mamba_*`` fields become ``model.backbone_options`` (the other
    backbones' flat fields are dropped). The parameter tree did not change."""
    config = {**_ADDED_FIELDS, **config}
    if isinstance(config.get("task"), dict):
        config["task"] = {**_ADDED_TASK_FIELDS, **config["task"]}
    if isinstance(config.get("eval"), dict):
        config["eval"] = {**_ADDED_EVAL_FIELDS, **config["eval"]}
    model = config.get("model")
    if not isinstance(model, dict):
        return config
    if "backbone_options" not in model:
        renames = _FLAT_BACKBONE_FIELDS.get(model.get("backbone"), {})
        flat = {old for fields in _FLAT_BACKBONE_FIELDS.values() for old in fields}
        options = {new: model[old] for old, new in renames.items() if old in model}
        model = {**{n: v for n, v in model.items() if n not in flat}, "backbone_options": options}
    added = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name in _ADDED_MODEL_FIELDS}
    return {**config, "model": {**added, **model}}


# Top-level fields added after checkpoints were first saved, with the value that reproduces the older runs.
_ADDED_FIELDS = {
    "resp_weight": 0.0,
    "train_dims": (),
    "grad_accum_steps": 1,
    "init_from": "",
    "target_pool": "",
    "missing_rate_max": 0.0,
}
# task.* (TaskSpec) fields added since.
_ADDED_TASK_FIELDS = {"cos_filter_max_k": None}
# eval.* fields added since.
_ADDED_EVAL_FIELDS = {"slot_init": None}
# ModelConfig fields added since (their defaults are the earlier behaviour).
_ADDED_MODEL_FIELDS = (
    "readin",
    "project_rank",
    "cluster_iters",
    "slot_attention",
    "em_logits",
    "slot_init",
    "cluster_correction",
    "noise",
    "readin_mask",
)


def abstract_train_state(config: ml_collections.ConfigDict, mesh):
    """Shapes, dtypes and (replicated) shardings of the train state that ``config`` trains."""
    spec, model_config = config_lib.validate_config(config)
    model = make_model(model_config, spec)
    tx = state_lib.make_optimizer(config.optim, config.total_steps)
    init_key = jax.random.key(0)
    objective = state_lib.Objective.from_config(config)
    abstract = jax.eval_shape(
        lambda k: state_lib.init_train_state(k, model, tx, spec, objective, mesh), init_key
    )
    rep = sharding.replicated(mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)


def load_run(workdir: str, step: int | None = None) -> Checkpoint:
    """The model and parameters of ``workdir``'s checkpoint at ``step`` (default: the latest), named ``workdir``
    and carrying its training config, the model as the run's periodic evaluation ran it: a clustering read-out is
    seeded by ``eval.slot_init`` where the config sets it (``config.model.slot_init`` keeps the trained
    seeding)."""
    if not epath.Path(workdir).is_dir():
        raise checkpoint.CheckpointError(f"workdir {workdir} does not exist")
    directory = epath.Path(workdir) / "checkpoints"
    with checkpoint.Checkpoints(directory, read_only=True) as ckpts:
        config = ml_collections.ConfigDict(upgrade_saved_config(ckpts.restore_config(step)))
        spec, model_config = config_lib.validate_config(config)
        mesh = sharding.make_mesh()
        state = ckpts.restore(abstract_train_state(config, mesh), step)
    model_config = config_lib.eval_model_config(model_config, config.eval)
    model = make_model(model_config, spec)
    return Checkpoint(workdir, model_config, spec, model, state.params, int(state.step), config)
