"""The base of a backbone's own options: a frozen dataclass that checks itself against the shared ModelConfig.

Each backbone file (gpt2.py, mamba2.py) subclasses ``BackboneOptions`` with its fields and checks; the registry
(models/backbones.py) pairs it with the backbone's module. ModelConfig holds one instance as ``backbone_options``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

import numpy as np

if TYPE_CHECKING:
    from tgmm_jax.models.config import ModelConfig


def is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_positive_ints(obj, names, where: str) -> None:
    """Every ``obj.<name>`` is an integer >= 1, else ValueError naming ``where.<name>``."""
    for name in names:
        value = getattr(obj, name)
        if not is_int(value) or value < 1:
            raise ValueError(f"{where}.{name} must be an integer >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class BackboneOptions:
    """No options; subclasses add fields (frozen, hashable: the model is a static argument of jit) and checks."""

    def validate(self, config: ModelConfig) -> None:
        """Raises ValueError naming the field when these options do not fit the shared fields of ``config``."""

    def check_num_points(self, num_points: int) -> None:
        """Raises ValueError when the backbone cannot read tasks of ``num_points`` points."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], backbone: str) -> Self:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            known = sorted(f.name for f in dataclasses.fields(cls))
            raise ValueError(
                f"ModelConfig.backbone_options: unknown field(s) {unknown} for backbone {backbone!r}, whose options "
                f"are {known} (changed the backbone alone? build the group with model_group(size, backbone=...))"
            )
        return cls(**d)
