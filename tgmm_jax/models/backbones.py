"""The backbone registry: name -> the backbone's module and its own options (a ``BackboneOptions`` dataclass).

A new backbone is one file (a Linen module ``Module(config)`` mapping tokens [B, N, E] and point_mask [B, N] to
states [B, N, E]), its options dataclass in models/options.py (``BACKBONE_OPTIONS``), and one line here.
ModelConfig checks ``backbone_options`` with the options' ``validate``; train/config.py calls
``check_num_points`` for the task's N.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn

from tgmm_jax.models.gpt2 import TransformerBackbone
from tgmm_jax.models.mamba2 import Mamba2Backbone
from tgmm_jax.models.options import BACKBONE_OPTIONS, BackboneOptions


@dataclasses.dataclass(frozen=True)
class Backbone:
    module: Callable[..., nn.Module]  # module(model_config) -> the backbone; TGMM names it `backbone`
    options: type[BackboneOptions]


BACKBONES: dict[str, Backbone] = {
    "gpt2": Backbone(
        functools.partial(TransformerBackbone, causal=True, positions=True), BACKBONE_OPTIONS["gpt2"]
    ),
    "set": Backbone(
        functools.partial(TransformerBackbone, causal=False, positions=False), BACKBONE_OPTIONS["set"]
    ),
    "mamba2": Backbone(Mamba2Backbone, BACKBONE_OPTIONS["mamba2"]),
}
