"""Rebuilding a trained model from a workdir alone: the config saved in the checkpoint + its parameters."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from etils import epath

from tgmm_jax.models import ModelConfig, TGMM, make_model
from tgmm_jax.tasks import TaskSpec
from tgmm_jax.train import checkpoint, config as config_lib, sharding, state as state_lib


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    config: ml_collections.ConfigDict
    spec: TaskSpec
    model_config: ModelConfig
    model: TGMM
    params: dict
    step: int


def abstract_train_state(config: ml_collections.ConfigDict, mesh):
    """Shapes, dtypes and (replicated) shardings of the train state that ``config`` trains."""
    spec, model_config = config_lib.validate_config(config)
    model = make_model(model_config, spec)
    tx = state_lib.make_optimizer(config.optim, config.total_steps)
    init_key = jax.random.key(0)
    params = state_lib.init_params_shape(init_key, model, spec)
    names = state_lib.logged_metric_names(model, spec, config.objective, config.lik_weight, params)
    abstract = jax.eval_shape(lambda k: state_lib.create_train_state(k, model, tx, spec, names, mesh), init_key)
    rep = sharding.replicated(mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)


def load_run(workdir: str, step: int | None = None) -> TrainedRun:
    """The model and parameters of ``workdir``'s checkpoint at ``step`` (default: the latest)."""
    if not epath.Path(workdir).is_dir():
        raise checkpoint.CheckpointError(f"workdir {workdir} does not exist")
    directory = epath.Path(workdir) / "checkpoints"
    with checkpoint.Checkpoints(directory, read_only=True) as ckpts:
        config = ml_collections.ConfigDict(ckpts.restore_config(step))
        spec, model_config = config_lib.validate_config(config)
        mesh = sharding.make_mesh()
        state = ckpts.restore(abstract_train_state(config, mesh), step)
    return TrainedRun(config, spec, model_config, make_model(model_config, spec), state.params, int(state.step))
