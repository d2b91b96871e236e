"""Each backbone's own options: a frozen dataclass per backbone, checked against the shared model fields.

A leaf module (it imports no other model module): ``ModelConfig`` (models/config.py) builds and checks
``backbone_options`` from ``BACKBONE_OPTIONS`` here, the backbone files import ``ModelConfig``, and the registry
(models/backbones.py) pairs each backbone's module with its options class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

from tgmm_jax.validation import check_fields, check_int, check_ints


@dataclasses.dataclass(frozen=True)
class BackboneOptions:
    """No options; subclasses add fields (frozen, hashable: the model is a static argument of jit) and checks."""

    def validate(self, width: int, num_heads: int) -> None:
        """Raises ValueError naming the field when these options do not fit the model's ``width`` and
        ``num_heads`` (ModelConfig's shared fields)."""

    def check_num_points(self, num_points: int) -> None:
        """Raises ValueError when the backbone cannot read tasks of ``num_points`` points."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], backbone: str) -> Self:
        check_fields(
            d,
            (f.name for f in dataclasses.fields(cls)),
            f"ModelConfig.backbone_options of backbone {backbone!r}",
            hint=" (changed the backbone alone? build the group with model_group(size, backbone=...))",
        )
        return cls(**d)


_WHERE = "ModelConfig.backbone_options"


@dataclasses.dataclass(frozen=True)
class TransformerOptions(BackboneOptions):
    """The `set` backbone: no options of its own; the heads must split the width."""

    def validate(self, width: int, num_heads: int) -> None:
        if width % num_heads:
            raise ValueError(f"ModelConfig.width={width} is not divisible by num_heads={num_heads}")


@dataclasses.dataclass(frozen=True)
class Gpt2Options(TransformerOptions):
    """The `gpt2` backbone: a learned position table of ``max_positions`` rows bounds the number of points."""

    max_positions: int = 4096

    def validate(self, width: int, num_heads: int) -> None:
        check_ints(self, ("max_positions",), _WHERE)
        super().validate(width, num_heads)

    def check_num_points(self, num_points: int) -> None:
        if num_points > self.max_positions:
            raise ValueError(
                f"backbone_options.max_positions={self.max_positions} is smaller than the number of points {num_points}"
            )


@dataclasses.dataclass(frozen=True)
class Mamba2Options(BackboneOptions):
    """Defaults are the official Mamba2 config: 8 heads of 64 (= 4 x 128 at the paper width), state 16, 2 groups."""

    heads: int = 8
    head_dim: int | None = None  # None: expand * width // heads (64 for the paper size)
    state: int = 16
    groups: int = 2
    expand: int = 4
    conv: int = 4
    chunk: int = 64  # chunk length of the SSD scan (a speed knob; the result does not depend on it)

    def resolved_head_dim(self, width: int) -> int:
        return self.expand * width // self.heads if self.head_dim is None else self.head_dim

    def validate(self, width: int, num_heads: int) -> None:
        check_ints(self, ("heads", "state", "groups", "expand", "conv", "chunk"), _WHERE)
        check_int(self.head_dim, f"{_WHERE}.head_dim", 1, optional=True)
        inner = self.expand * width
        if self.head_dim is None:
            if inner % self.heads:
                raise ValueError(f"{_WHERE}.heads={self.heads} does not divide expand * width = {inner}")
        elif self.heads * self.head_dim != inner:
            raise ValueError(
                f"{_WHERE}.head_dim: heads * head_dim = {self.heads * self.head_dim} must equal expand * width = {inner}"
            )
        if self.heads % self.groups:
            raise ValueError(f"{_WHERE}.groups={self.groups} does not divide heads={self.heads}")


# Backbone name -> its options class; models/backbones.py pairs each with its module (a test checks the names).
BACKBONE_OPTIONS: dict[str, type[BackboneOptions]] = {
    "gpt2": Gpt2Options,
    "set": TransformerOptions,
    "mamba2": Mamba2Options,
}
