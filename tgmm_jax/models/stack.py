"""A stack of L identical residual blocks, scanned or unrolled (ModelConfig.scan_layers)."""

from __future__ import annotations

import flax.linen as nn
import jax

from tgmm_jax.models.config import ModelConfig


def apply_blocks(
    block_cls: type[nn.Module], config: ModelConfig, x: jax.Array, *shared, **block_fields
) -> jax.Array:
    """x -> block_L(... block_1(x, *shared) ..., *shared); call inside a compact method.

    ``block_fields`` are extra fields of every block (static, e.g. ``causal``).

    Each block returns (x, None). Scanned, the parameters are stacked [L, ...] under ``blocks`` and compile
    time does not grow with depth; unrolled, they sit under ``blocks_0 .. blocks_{L-1}``. Measured on CPU
    (compile CPU time of the loss gradient, tiny width): `set` 4.0 s unrolled vs 5.2 s scanned at L = 4,
    4.8 vs 5.7 s at L = 12; `mamba2` 7.6 vs 9.0 s at L = 4, 11.0 vs 9.2 s at L = 12.
    """
    if config.use_scan:
        blocks = nn.scan(
            block_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=config.num_layers,
        )
        x, _ = blocks(config, name="blocks", **block_fields)(x, *shared)
        return x
    for i in range(config.num_layers):
        x, _ = block_cls(config, name=f"blocks_{i}", **block_fields)(x, *shared)
    return x
