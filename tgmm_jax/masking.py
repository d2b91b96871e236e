"""Coordinates missing completely at random (MCAR), never a whole point: for missing-value tasks.

``mask_at_random(key, points, rate)`` hides each coordinate of each real point independently with probability
p, then gives back one coordinate (drawn uniformly) of any point left with none, so every point keeps at least
one observed coordinate. p solves p - p^D / D = rate, so the expected fraction of masked coordinates is
exactly ``rate`` (a point loses all D with probability p^D and gets one of them back). This needs
rate <= (D - 1) / D: with D = 1 nothing can be masked, with D = 2 at most half (then every point has exactly
one missing coordinate). The mask is independent of the values (MCAR), and the missingness of the
coordinates of one point is exchangeable across dimensions; points are independent of each other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_BISECTION_STEPS = 60


def max_rate(dim: int) -> float:
    """The largest achievable masked fraction when every point keeps one coordinate: (D - 1) / D."""
    return (dim - 1) / dim


def coordinate_probability(rate, dim: int) -> jax.Array:
    """The per-coordinate masking probability p with p - p^D / D = rate (bisection; p = rate for D = 1 is
    meaningless and returns 0)."""
    rate = jnp.asarray(rate, jnp.float32)
    if dim == 1:
        return jnp.zeros_like(rate)

    def body(_, lo_hi):
        lo, hi = lo_hi
        mid = 0.5 * (lo + hi)
        below = mid - mid**dim / dim < rate  # increasing in p on [0, 1]
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (jnp.zeros_like(rate), jnp.ones_like(rate)))
    return 0.5 * (lo + hi)


def mask_at_random(
    key: jax.Array, points_NxD: jax.Array, rate, point_mask_N: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(points with NaN at the masked coordinates [..., N, D], observed mask [..., N, D] bool).

    ``rate`` (a float, may be traced) is the expected fraction of masked coordinates of the real points; a
    concrete rate outside [0, (D - 1) / D] is a ValueError. Padded points (``point_mask_N`` False) are never
    masked. Pure and jit-able.
    """
    dim = points_NxD.shape[-1]
    if isinstance(rate, (int, float)) and not (0.0 <= rate <= max_rate(dim)):
        raise ValueError(
            f"rate must be in [0, (D - 1) / D] = [0, {max_rate(dim):.3f}] so every point keeps a coordinate "
            f"(D = {dim}), got {rate!r}"
        )
    hide_key, keep_key = jax.random.split(key)
    p = coordinate_probability(rate, dim)
    hidden_NxD = jax.random.uniform(hide_key, points_NxD.shape) < p
    # A point with every coordinate hidden gets one back, uniformly over its dimensions.
    kept_N = jax.random.randint(keep_key, points_NxD.shape[:-1], 0, dim)
    all_hidden_Nx1 = jnp.all(hidden_NxD, axis=-1, keepdims=True)
    give_back_NxD = all_hidden_Nx1 & jax.nn.one_hot(kept_N, dim, dtype=bool)
    hidden_NxD = hidden_NxD & ~give_back_NxD
    if point_mask_N is not None:
        hidden_NxD = hidden_NxD & point_mask_N.astype(bool)[..., None]
    observed_NxD = ~hidden_NxD
    return jnp.where(observed_NxD, points_NxD, jnp.nan), observed_NxD


def mask_task(key: jax.Array, task, rate):
    """``mask_at_random`` on a ``GMMTask``'s real points: (the task with NaN at its masked coordinates,
    observed mask [B, N, D]). Its true parameters and labels are unchanged."""
    points, observed = mask_at_random(key, task.points, rate, task.point_mask)
    return task.replace(points=points), observed
