"""Model configuration: one frozen dataclass, validated on construction, and the named model sizes."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

BACKBONES = ("gpt2", "set", "mamba2")
READOUTS = ("attentive", "naive")
DTYPES = ("float32", "bfloat16")

# Unrolled shallow stacks compile faster; scanned deep ones compile in time independent of depth.
SCAN_ABOVE_LAYERS = 8

# Named sizes: (num_layers, width, num_heads, task_embed_dim). `paper` is the official default (TGMM_NOTES §4).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "width": 32, "num_heads": 2, "task_embed_dim": 16},  # CPU minutes; tests
    "small": {"num_layers": 4, "width": 64, "num_heads": 4, "task_embed_dim": 64},
    "paper": {"num_layers": 12, "width": 128, "num_heads": 4, "task_embed_dim": 128},
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a TGMM network except the task (dim, ks, variant come from the TaskSpec).

    Defaults are the paper's model (GPT-2, 12 layers, width 128, 4 heads, task embedding 128) and the
    official Mamba2 config (8 heads of 64 = 4 x 128, state 16, 2 groups, conv 4).
    """

    backbone: str = "gpt2"
    readout: str = "attentive"
    num_layers: int = 12
    width: int = 128
    num_heads: int = 4
    task_embed_dim: int = 128
    mlp_ratio: int = 4
    dtype: str = "float32"  # compute dtype; parameters are always float32
    official_pooling_mask_bug: bool = False  # True reproduces the official read-out mask (TGMM_NOTES §4)
    max_positions: int = 4096  # size of the gpt2 position table
    scan_layers: bool | None = None  # nn.scan over layers; None: scan when num_layers > SCAN_ABOVE_LAYERS
    mamba_heads: int = 8
    mamba_head_dim: int | None = None  # None: mamba_expand * width // mamba_heads (64 for the paper size)
    mamba_state: int = 16
    mamba_groups: int = 2
    mamba_expand: int = 4
    mamba_conv: int = 4
    mamba_chunk: int = 64  # chunk length of the SSD scan (a speed knob; the result does not depend on it)

    def __post_init__(self):
        _validate(self)

    @property
    def use_scan(self) -> bool:
        return self.num_layers > SCAN_ABOVE_LAYERS if self.scan_layers is None else self.scan_layers

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def resolved_mamba_head_dim(self) -> int:
        if self.mamba_head_dim is None:
            return self.mamba_expand * self.width // self.mamba_heads
        return self.mamba_head_dim

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Builds a config from a dict; unknown field names raise ValueError."""
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_config(size: str = "tiny", **overrides) -> ModelConfig:
    """The named size from MODEL_SIZES with field overrides, e.g. ``model_config('tiny', backbone='set')``."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    return ModelConfig.from_dict({**MODEL_SIZES[size], **overrides})


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _validate(c: ModelConfig) -> None:
    def choice(name, options):
        if getattr(c, name) not in options:
            raise ValueError(f"ModelConfig.{name} must be one of {options}, got {getattr(c, name)!r}")

    choice("backbone", BACKBONES)
    choice("readout", READOUTS)
    choice("dtype", DTYPES)
    for name in (
        "num_layers",
        "width",
        "num_heads",
        "task_embed_dim",
        "mlp_ratio",
        "max_positions",
        "mamba_heads",
        "mamba_state",
        "mamba_groups",
        "mamba_expand",
        "mamba_conv",
        "mamba_chunk",
    ):
        value = getattr(c, name)
        if not _is_int(value) or value < 1:
            raise ValueError(f"ModelConfig.{name} must be an integer >= 1, got {value!r}")
    if c.scan_layers is not None and type(c.scan_layers) is not bool:
        raise ValueError(f"ModelConfig.scan_layers must be None or a bool, got {c.scan_layers!r}")
    if type(c.official_pooling_mask_bug) is not bool:
        raise ValueError(
            f"ModelConfig.official_pooling_mask_bug must be a bool, got {c.official_pooling_mask_bug!r}"
        )
    if c.backbone in ("gpt2", "set") and c.width % c.num_heads:
        raise ValueError(f"ModelConfig.width={c.width} is not divisible by num_heads={c.num_heads}")
    if c.backbone == "mamba2":
        inner = c.mamba_expand * c.width
        if c.mamba_head_dim is None:
            if inner % c.mamba_heads:
                raise ValueError(
                    f"ModelConfig.mamba_heads={c.mamba_heads} does not divide mamba_expand * width = {inner}"
                )
        elif not _is_int(c.mamba_head_dim) or c.mamba_head_dim < 1:
            raise ValueError(
                f"ModelConfig.mamba_head_dim must be None or an integer >= 1, got {c.mamba_head_dim!r}"
            )
        elif c.mamba_heads * c.mamba_head_dim != inner:
            raise ValueError(
                f"ModelConfig.mamba_head_dim: mamba_heads * mamba_head_dim = {c.mamba_heads * c.mamba_head_dim} "
                f"must equal mamba_expand * width = {inner}"
            )
        if c.mamba_heads % c.mamba_groups:
            raise ValueError(
                f"ModelConfig.mamba_groups={c.mamba_groups} does not divide mamba_heads={c.mamba_heads}"
            )
