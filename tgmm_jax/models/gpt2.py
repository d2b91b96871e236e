"""GPT-2 blocks and the two backbones built from them: `gpt2` (causal, learned positions) and `set`.

The block is HF GPT-2's: pre-LayerNorm (eps 1e-5), multi-head self-attention, MLP 4E with GELU-tanh, final
LayerNorm; init N(0, 0.02), zero biases, the two residual output projections scaled by 1/sqrt(2L); dropout 0.
`set` is the same stack without positions and without the causal mask, so its token states are
permutation-equivariant and a pooled read-out is invariant to the order of the points.

Padded tokens (point_mask False) are masked as keys. The causal backbone assumes padding sits at the end
(TGMM moves the real points to the front); then real tokens never see padded ones either way.
Layers are scanned or unrolled per ``ModelConfig.scan_layers`` (see models/stack.py). Options: none for `set`
(``TransformerOptions``), the size of the position table for `gpt2` (``Gpt2Options``).
The residual stream stays float32; matmuls run in the compute dtype and softmax in float32. ``attention`` is
the same core with a hand-written backward (equal to the autodiff of ``plain_attention`` to rounding).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from tgmm_jax.models.options import BackboneOptions, check_positive_ints
from tgmm_jax.models.stack import apply_blocks

if TYPE_CHECKING:  # config.py imports the backbone registry, which imports this file
    from tgmm_jax.models.config import ModelConfig

_LN_EPS = 1e-5
_INIT_STD = 0.02
# Masked attention logits: finite, so a query with no visible key gets a uniform (not NaN) row.
_MASKED_LOGIT = -1e30


@dataclasses.dataclass(frozen=True)
class TransformerOptions(BackboneOptions):
    """The `set` backbone: no options of its own; the heads must split the width."""

    def validate(self, config: ModelConfig) -> None:
        if config.width % config.num_heads:
            raise ValueError(
                f"ModelConfig.width={config.width} is not divisible by num_heads={config.num_heads}"
            )


@dataclasses.dataclass(frozen=True)
class Gpt2Options(TransformerOptions):
    """The `gpt2` backbone: a learned position table of ``max_positions`` rows bounds the number of points."""

    max_positions: int = 4096

    def validate(self, config: ModelConfig) -> None:
        check_positive_ints(self, ("max_positions",), "ModelConfig.backbone_options")
        super().validate(config)

    def check_num_points(self, num_points: int) -> None:
        if num_points > self.max_positions:
            raise ValueError(
                f"backbone_options.max_positions={self.max_positions} is smaller than the number of points {num_points}"
            )


def _dense(features: int, config: ModelConfig, std: float, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.compute_dtype,
        kernel_init=nn.initializers.normal(std),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def attention_mask(point_mask_BxN: jax.Array, causal: bool) -> jax.Array:
    """allowed[b, q, k]: key k is a real token (and k <= q if causal): [B, N, N]."""
    n = point_mask_BxN.shape[-1]
    allowed_BxNxN = jnp.broadcast_to(point_mask_BxN[:, None, :], (point_mask_BxN.shape[0], n, n))
    if causal:
        allowed_BxNxN = allowed_BxNxN & jnp.tril(jnp.ones((n, n), bool))[None, :, :]
    return allowed_BxNxN


def attention_bias(point_mask_BxN: jax.Array, causal: bool) -> jax.Array:
    """The mask as an additive float32 bias: 0 where allowed, _MASKED_LOGIT elsewhere: [B, N, N].

    Adding it gives the same logits as masking them (a logit plus -1e30 rounds to -1e30 in float32).
    """
    return jnp.where(attention_mask(point_mask_BxN, causal), 0.0, _MASKED_LOGIT).astype(jnp.float32)


def _probs(q_BxHxNxF: jax.Array, k_BxHxNxF: jax.Array, bias_BxNxN: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(F) + bias) over the keys, in float32: [B, H, N, N]."""
    logits_BxHxNxN = jnp.einsum("bhqf,bhkf->bhqk", q_BxHxNxF, k_BxHxNxF) / math.sqrt(q_BxHxNxF.shape[-1])
    return jax.nn.softmax(logits_BxHxNxN.astype(jnp.float32) + bias_BxNxN[:, None], axis=-1)


def plain_attention(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, bias_BxNxN) -> jax.Array:
    """softmax(q k^T / sqrt(F) + bias) v, differentiated by autodiff (the reference of ``attention``)."""
    probs_BxHxNxN = _probs(q_BxHxNxF, k_BxHxNxF, bias_BxNxN).astype(q_BxHxNxF.dtype)
    return jnp.einsum("bhqk,bhkf->bhqf", probs_BxHxNxN, v_BxHxNxF)


def _fold(x_BxHx___: jax.Array) -> jax.Array:
    return x_BxHx___.reshape((-1,) + x_BxHx___.shape[2:])


@jax.custom_vjp
def attention(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, bias_BxNxN) -> jax.Array:
    """``plain_attention`` with a hand-written backward (the same numbers as its autodiff, to rounding).

    Why: XLA:CPU runs the autodiff backward's matmuls (which contract over non-minor or middle axes) 2-3x
    slower than the forward's; written out as leading-batch matmuls over [B*H, N, .] it runs faster.
    The bias gets no gradient (it is built from the masks).
    """
    return _attention_fwd(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, bias_BxNxN)[0]


def _attention_fwd(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, bias_BxNxN):
    probs_XxNxN = _fold(_probs(q_BxHxNxF, k_BxHxNxF, bias_BxNxN))  # X = B * H
    out_XxNxF = jnp.einsum("xqk,xkf->xqf", probs_XxNxN.astype(v_BxHxNxF.dtype), _fold(v_BxHxNxF))
    return out_XxNxF.reshape(q_BxHxNxF.shape), (q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, probs_XxNxN, bias_BxNxN)


def _attention_bwd(residuals, g_BxHxNxF):
    q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, probs_XxNxN, bias_BxNxN = residuals
    dtype = q_BxHxNxF.dtype
    q_XxNxF, k_XxNxF, v_XxNxF, g_XxNxF = map(_fold, (q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, g_BxHxNxF))
    dv_XxNxF = jnp.einsum("xqk,xqf->xkf", probs_XxNxN.astype(dtype), g_XxNxF)
    dprobs_XxNxN = jnp.einsum("xqf,xkf->xqk", g_XxNxF, v_XxNxF).astype(jnp.float32)
    # softmax backward in float32, then the logits' cast and 1/sqrt(F) as autodiff of _probs does them
    dlogits_XxNxN = probs_XxNxN * (dprobs_XxNxN - jnp.sum(dprobs_XxNxN * probs_XxNxN, axis=-1, keepdims=True))
    dlogits_XxNxN = dlogits_XxNxN.astype(dtype) / math.sqrt(q_BxHxNxF.shape[-1])
    dq_XxNxF = jnp.einsum("xqk,xkf->xqf", dlogits_XxNxN, k_XxNxF)
    dk_XxNxF = jnp.einsum("xqk,xqf->xkf", dlogits_XxNxN, q_XxNxF)
    shape = q_BxHxNxF.shape
    return (
        dq_XxNxF.reshape(shape),
        dk_XxNxF.reshape(shape),
        dv_XxNxF.reshape(shape),
        jnp.zeros_like(bias_BxNxN),
    )


attention.defvjp(_attention_fwd, _attention_bwd)
# What SelfAttention calls (benchmarks/attention.py swaps in plain_attention to time the old step). Measured
# at load 30-40 on 2 cores (results/benchmark_attention_cpu.json): tiny.py train step 1.36x (3 of 3 rounds
# faster), one layer fwd+bwd 1.30x; cluster.py's step inconclusive (per-round 0.98x, 1.67x, 0.82x).
attention_core = attention


class SelfAttention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxNxE: jax.Array, bias_BxNxN: jax.Array) -> jax.Array:
        c = self.config
        b, n, e = x_BxNxE.shape
        h = c.num_heads
        qkv_BxNx3E = _dense(3 * e, c, _INIT_STD, "qkv")(x_BxNxE)
        # Heads-major layout [3, B, H, N, F] before the two batched matmuls: XLA:CPU runs them with leading
        # batch dimensions about 3x faster than the einsum over [B, N, H, F] (same numbers, same params).
        qkv_3xBxHxNxF = qkv_BxNx3E.reshape(b, n, 3, h, e // h).transpose(2, 0, 3, 1, 4)
        q_BxHxNxF, k_BxHxNxF, v_BxHxNxF = qkv_3xBxHxNxF[0], qkv_3xBxHxNxF[1], qkv_3xBxHxNxF[2]
        out_BxHxNxF = attention_core(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, bias_BxNxN)
        out_BxNxE = out_BxHxNxF.transpose(0, 2, 1, 3).reshape(b, n, e)
        return _dense(e, c, _INIT_STD / math.sqrt(2 * c.num_layers), "out")(out_BxNxE)


class Mlp(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxNxE: jax.Array) -> jax.Array:
        c = self.config
        hidden = _dense(c.mlp_ratio * c.width, c, _INIT_STD, "fc")(x_BxNxE)
        hidden = jax.nn.gelu(hidden, approximate=True)  # HF "gelu_new"
        return _dense(c.width, c, _INIT_STD / math.sqrt(2 * c.num_layers), "out")(hidden)


def _layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=_LN_EPS, dtype=config.compute_dtype, name=name)


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)). Returns (x, None), the form nn.scan wants."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxNxE: jax.Array, bias_BxNxN: jax.Array):
        c = self.config
        x_BxNxE = x_BxNxE + SelfAttention(c, name="attn")(_layer_norm(c, "ln_1")(x_BxNxE), bias_BxNxN).astype(
            jnp.float32
        )
        x_BxNxE = x_BxNxE + Mlp(c, name="mlp")(_layer_norm(c, "ln_2")(x_BxNxE)).astype(jnp.float32)
        return x_BxNxE, None


class TransformerBackbone(nn.Module):
    """GPT-2 block stack over tokens [B, N, E] -> states [B, N, E] (float32).

    ``causal=True, positions=True`` is the paper's `gpt2`; ``causal=False, positions=False`` is `set`.
    """

    config: ModelConfig
    causal: bool
    positions: bool

    @nn.compact
    def __call__(self, tokens_BxNxE: jax.Array, point_mask_BxN: jax.Array) -> jax.Array:
        c = self.config
        n = tokens_BxNxE.shape[1]
        x_BxNxE = tokens_BxNxE.astype(jnp.float32)
        if self.positions:
            c.backbone_options.check_num_points(n)
            table_PxE = self.param(
                "positions", nn.initializers.normal(_INIT_STD), (c.backbone_options.max_positions, c.width)
            )
            x_BxNxE = x_BxNxE + table_PxE[None, :n, :]
        x_BxNxE = apply_blocks(Block, c, x_BxNxE, attention_bias(point_mask_BxN, self.causal))
        return _layer_norm(c, "ln_f")(x_BxNxE).astype(jnp.float32)
