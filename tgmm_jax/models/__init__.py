"""TGMM networks: read-in, backbones (gpt2, set, mamba2), per-K read-outs, and their configuration."""

from tgmm_jax.models.backbones import BACKBONES, Backbone
from tgmm_jax.models.config import MODEL_SIZES, READOUTS, ModelConfig, model_config
from tgmm_jax.models.options import BackboneOptions
from tgmm_jax.models.tgmm import TGMM, TGMMOutput, check_num_components, make_model

__all__ = [
    "BACKBONES",
    "MODEL_SIZES",
    "READOUTS",
    "TGMM",
    "Backbone",
    "BackboneOptions",
    "ModelConfig",
    "TGMMOutput",
    "check_num_components",
    "make_model",
    "model_config",
]
