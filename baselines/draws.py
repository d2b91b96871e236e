"""Random draws per task, drawn flat and reshaped.

Why flat: on XLA:CPU (jax 0.10), compiling a threefry draw with a multi-dimensional shape takes ~6 s
(``jax.random.uniform(key, (8, 10, 4, 8))``), while the same number of values drawn as a 1-D array
compiles in ~0.3 s. The values differ from the multi-dimensional call, which no caller relies on.
"""

from __future__ import annotations

import math

import jax


def uniform(key: jax.Array, shape: tuple[int, ...], minval: float = 0.0, maxval: float = 1.0) -> jax.Array:
    return jax.random.uniform(key, (math.prod(shape),), minval=minval, maxval=maxval).reshape(shape)


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(key, (math.prod(shape),)).reshape(shape)


def per_task_uniform(keys_C: jax.Array, shape: tuple[int, ...], minval: float = 0.0) -> jax.Array:
    """One draw of ``shape`` per task key: [C, *shape]."""
    return jax.vmap(lambda k: uniform(k, shape, minval=minval))(keys_C)


def per_task_normal(keys_C: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.vmap(lambda k: normal(k, shape))(keys_C)
