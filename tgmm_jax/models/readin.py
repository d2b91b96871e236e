"""Read-in: one token per point, Dense(D + E_task (+ F) -> E) on concat(point, embed(K) (, task features)),
plus, for a model that reads missing-value masks, a zero-initialised Dense(M -> E) of the point's mask features."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tgmm_jax.models.config import ModelConfig


def torch_linear_init(fan_in_axis: int = -2, batch_axis: tuple[int, ...] = ()):
    """PyTorch's default nn.Linear weight init, U(+-1/sqrt(fan_in)), as the official read-in and read-out use."""
    return nn.initializers.variance_scaling(
        1.0 / 3.0, "fan_in", "uniform", in_axis=fan_in_axis, out_axis=-1, batch_axis=batch_axis
    )


def torch_uniform_init(fan_in: int):
    """U(+-1/sqrt(fan_in)): PyTorch's default nn.Linear bias and nn.Conv1d init."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class ReadIn(nn.Module):
    """tokens[b, n] = W [x_bn ; e(K_b)] + c, with the K embedding shared by all tokens of a task.

    Init follows the official PyTorch code: nn.Embedding N(0, 1), nn.Linear U(+-1/sqrt(fan_in)) for weight
    and bias. The embedding is indexed by the position of K in the task set ``ks`` (``k_index_B``).
    """

    config: ModelConfig
    num_ks: int

    @nn.compact
    def __call__(
        self, points_BxNxD: jax.Array, k_index_B: jax.Array, task_features_BxF=None, mask_features_BxNxM=None
    ) -> jax.Array:
        """``task_features_BxF`` (the normalised read-in's per-task features) join every token when given.
        ``mask_features_BxNxM`` (``normalize.mask_features``; 0 on complete points) adds a bias-free,
        zero-initialised projection, so complete points get exactly the tokens of a model without it."""
        c = self.config
        embed_BxT = nn.Embed(
            self.num_ks, c.task_embed_dim, embedding_init=nn.initializers.normal(1.0), name="task_embed"
        )(k_index_B)
        if task_features_BxF is not None:
            embed_BxT = jnp.concatenate([embed_BxT, task_features_BxF.astype(jnp.float32)], axis=-1)
        b, n, _ = points_BxNxD.shape
        embed_BxNxT = jnp.broadcast_to(embed_BxT[:, None, :], (b, n, embed_BxT.shape[-1]))
        inputs_BxNxF = jnp.concatenate([points_BxNxD.astype(jnp.float32), embed_BxNxT], axis=-1)
        fan_in = inputs_BxNxF.shape[-1]
        tokens_BxNxE = nn.Dense(
            c.width,
            dtype=c.compute_dtype,
            kernel_init=torch_linear_init(),
            bias_init=torch_uniform_init(fan_in),
            name="proj",
        )(inputs_BxNxF)
        if mask_features_BxNxM is None:
            return tokens_BxNxE
        return tokens_BxNxE + nn.Dense(
            c.width,
            use_bias=False,
            dtype=c.compute_dtype,
            kernel_init=nn.initializers.zeros,
            name="mask_proj",
        )(mask_features_BxNxM.astype(jnp.float32))
