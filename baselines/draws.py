"""Random draws for the baselines' initialisations: a counter-based integer hash keyed by the JAX key.

Why not ``jax.random`` inside the baselines: on XLA:CPU, threefry kernels take ~2 s to compile per program
(a third of an EM baseline's compile time), and multi-dimensional threefry draws up to ~6 s. The draws
here only seed initialisations (restart points, power-method starts), for which a well-mixed 32-bit hash
of (key, task, counter) is plenty: each value goes through two rounds of the ``lowbias32`` mixer
(C. Wellons, "Hash function prospector"). Draws are per task, so a task's initialisation does not depend
on the other tasks of the batch nor on the chunking.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_GOLDEN = 0x9E3779B9


def _mix(x: jax.Array) -> jax.Array:
    """lowbias32: a bijective 32-bit mixer with low bias."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def task_seeds(key: jax.Array, batch: int) -> jax.Array:
    """One uint32 seed per task, from any JAX key (typed or raw): [B]."""
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = words.reshape(-1).astype(jnp.uint32)
    seed = jnp.uint32(0x243F6A88)
    for i in range(words.shape[0]):
        seed = _mix(seed ^ words[i])
    return _mix(jnp.arange(batch, dtype=jnp.uint32) * jnp.uint32(_GOLDEN) + seed)


def _bits(seeds_C: jax.Array, shape: tuple[int, ...], stream: int) -> jax.Array:
    count = math.prod(shape)
    counter = jnp.arange(count, dtype=jnp.uint32) + jnp.uint32(stream * count)
    x = _mix(counter[None, :] * jnp.uint32(_GOLDEN) ^ seeds_C[:, None])
    return _mix(x + seeds_C[:, None]).reshape((seeds_C.shape[0],) + tuple(shape))


def uniform(seeds_C: jax.Array, shape: tuple[int, ...], stream: int = 0) -> jax.Array:
    """U(0, 1) (both ends excluded), float32: [C, *shape]. ``stream`` separates independent draws."""
    top24 = (_bits(seeds_C, shape, stream) >> 8).astype(jnp.float32)
    return (top24 + 0.5) * (1.0 / (1 << 24))


def normal(seeds_C: jax.Array, shape: tuple[int, ...], stream: int = 0) -> jax.Array:
    """N(0, 1) by Box-Muller, float32: [C, *shape]."""
    u1 = uniform(seeds_C, shape, 2 * stream)
    u2 = uniform(seeds_C, shape, 2 * stream + 1)
    return jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * jnp.pi * u2)
