"""Pure-JAX Mamba2 (SSD) backbone, written from the Mamba2 paper (Dao & Gu 2024, arXiv 2405.21060).

Per layer (the mamba_ssm / HF ``Mamba2Mixer`` layout):
  [z, xBC, dt] = in_proj(RMSNorm(h));  xBC = SiLU(causal depthwise conv(xBC));  [x, B, C] = xBC
  dt = softplus(dt + dt_bias);  A = -exp(A_log)
  state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T;  y_t = state_t C_t + D x_t      (per head; B, C per group)
  h <- h + out_proj(GroupRMSNorm(y * SiLU(z)))
then a final RMSNorm. The recurrence runs as the chunked SSD algorithm (quadratic within chunks, a
recurrence over chunk states between them); ``ssd_chunked`` is tested against a sequential loop.

Init follows mamba_ssm / HF: A_log = log(1..H), D = 1, dt_bias = softplus^-1(dt) with dt log-uniform in
[1e-3, 0.1] (floor 1e-4), PyTorch default U(+-1/sqrt(fan_in)) for projections and the depthwise conv.
The model is causal: padding must sit at the end (TGMM moves the real points to the front).
The SSD math runs in float32 whatever the compute dtype.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tgmm_jax.models.config import ModelConfig
from tgmm_jax.models.readin import torch_linear_init, torch_uniform_init
from tgmm_jax.models.stack import apply_blocks

_EPS = 1e-5
_DT_MIN, _DT_MAX, _DT_FLOOR = 1e-3, 1e-1, 1e-4


def _segsum(a_XxT: jax.Array) -> jax.Array:
    """out[..., i, j] = sum_{j < t <= i} a[..., t] for i >= j, -inf above the diagonal: [..., T, T].

    Summing masked copies (not differencing cumsums) keeps it exact for long segments.
    """
    t = a_XxT.shape[-1]
    a_XxTxT = jnp.broadcast_to(a_XxT[..., :, None], (*a_XxT.shape, t))
    strictly_lower = jnp.tril(jnp.ones((t, t), bool), -1)
    sums_XxTxT = jnp.cumsum(jnp.where(strictly_lower, a_XxTxT, 0.0), axis=-2)
    return jnp.where(jnp.tril(jnp.ones((t, t), bool)), sums_XxTxT, -jnp.inf)


def ssd_chunked(
    x_BxNxHxP: jax.Array, log_decay_BxNxH: jax.Array, b_BxNxHxS: jax.Array, c_BxNxHxS: jax.Array, chunk: int
) -> jax.Array:
    """y_t = sum_{s <= t} exp(sum_{s < r <= t} a_r) (C_t . B_s) x_s, the SSM recurrence in closed form: [B, N, H, P].

    ``x`` is already scaled by dt and ``log_decay = dt * A`` (<= 0). The sequence is zero-padded to a
    multiple of ``chunk``; padding at the end cannot change earlier outputs.
    """
    batch, n, h, p = x_BxNxHxP.shape
    s = b_BxNxHxS.shape[-1]
    chunk = min(chunk, n)
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n

    def split(a, *tail):
        a = jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
        return a.reshape(batch, num_chunks, chunk, *tail)

    x_BxCxLxHxP = split(x_BxNxHxP, h, p)
    b_BxCxLxHxS = split(b_BxNxHxS, h, s)
    c_BxCxLxHxS = split(c_BxNxHxS, h, s)
    a_BxHxCxL = jnp.transpose(split(log_decay_BxNxH, h), (0, 3, 1, 2))
    a_cum_BxHxCxL = jnp.cumsum(a_BxHxCxL, axis=-1)

    # 1. Within each chunk: the quadratic (attention-like) form.
    decay_BxHxCxLxL = jnp.exp(_segsum(a_BxHxCxL))
    y_diag = jnp.einsum(
        "bclhn,bcshn,bhcls,bcshp->bclhp", c_BxCxLxHxS, b_BxCxLxHxS, decay_BxHxCxLxL, x_BxCxLxHxP
    )
    # 2. The state each chunk hands on, from its own inputs only.
    decay_to_end_BxHxCxL = jnp.exp(a_cum_BxHxCxL[..., -1:] - a_cum_BxHxCxL)
    states_BxCxHxPxS = jnp.einsum("bclhn,bhcl,bclhp->bchpn", b_BxCxLxHxS, decay_to_end_BxHxCxL, x_BxCxLxHxP)
    # 3. Recurrence over chunks (a tiny C x C segment sum), starting from a zero state.
    states_BxCxHxPxS = jnp.concatenate([jnp.zeros_like(states_BxCxHxPxS[:, :1]), states_BxCxHxPxS], axis=1)
    chunk_totals_BxHxC1 = jnp.pad(a_cum_BxHxCxL[..., -1], ((0, 0), (0, 0), (1, 0)))
    chunk_decay_BxHxC1xC1 = jnp.exp(_segsum(chunk_totals_BxHxC1))
    states_BxCxHxPxS = jnp.einsum("bhzc,bchpn->bzhpn", chunk_decay_BxHxC1xC1, states_BxCxHxPxS)[:, :-1]
    # 4. Contribution of the incoming state to each position of the chunk.
    y_off = jnp.einsum("bclhn,bchpn,bhcl->bclhp", c_BxCxLxHxS, states_BxCxHxPxS, jnp.exp(a_cum_BxHxCxL))
    y_BxTxHxP = (y_diag + y_off).reshape(batch, num_chunks * chunk, h, p)
    return y_BxTxHxP[:, :n]


def _rms_norm(x_BxNxF: jax.Array, weight_F: jax.Array, groups: int = 1) -> jax.Array:
    b, n, f = x_BxNxF.shape
    x_BxNxGxF = x_BxNxF.astype(jnp.float32).reshape(b, n, groups, f // groups)
    x_BxNxGxF = x_BxNxGxF * jax.lax.rsqrt(jnp.mean(jnp.square(x_BxNxGxF), axis=-1, keepdims=True) + _EPS)
    return x_BxNxGxF.reshape(b, n, f) * weight_F[None, None, :]


def _dt_bias_init(key, shape, dtype=jnp.float32):
    dt = jnp.exp(jax.random.uniform(key, shape, dtype, math.log(_DT_MIN), math.log(_DT_MAX)))
    dt = jnp.maximum(dt, _DT_FLOOR)
    return dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus


class Mamba2Mixer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxNxE: jax.Array) -> jax.Array:
        c, o = self.config, self.config.backbone_options
        batch, n, _ = x_BxNxE.shape
        h, p, s, g, k = o.heads, o.resolved_head_dim(c.width), o.state, o.groups, o.conv
        inner, conv_dim = h * p, h * p + 2 * g * s
        proj = nn.Dense(
            2 * inner + 2 * g * s + h,
            use_bias=False,
            dtype=c.compute_dtype,
            kernel_init=torch_linear_init(),
            name="in_proj",
        )(x_BxNxE).astype(jnp.float32)
        z_BxNxI, xbc_BxNxF, dt_BxNxH = jnp.split(proj, [inner, inner + conv_dim], axis=-1)

        # Causal depthwise conv: out[t] = sum_j w[j] x[t - (k - 1) + j] + bias.
        # PyTorch's default Conv1d init: weight and bias U(+-1/sqrt(fan_in)), fan_in = k for a depthwise conv.
        conv_w_KxF = self.param("conv_weight", torch_uniform_init(k), (k, conv_dim))
        conv_b_F = self.param("conv_bias", torch_uniform_init(k), (conv_dim,))
        padded_BxTxF = jnp.pad(xbc_BxNxF, ((0, 0), (k - 1, 0), (0, 0)))
        conv_BxNxF = sum(conv_w_KxF[j][None, None, :] * padded_BxTxF[:, j : j + n, :] for j in range(k))
        xbc_BxNxF = jax.nn.silu(conv_BxNxF + conv_b_F[None, None, :])
        xs_BxNxI, b_BxNxGS, c_BxNxGS = jnp.split(xbc_BxNxF, [inner, inner + g * s], axis=-1)

        dt_bias_H = self.param("dt_bias", _dt_bias_init, (h,))
        a_log_H = self.param("A_log", lambda _, shape: jnp.log(jnp.arange(1, h + 1, dtype=jnp.float32)), (h,))
        skip_H = self.param("D", nn.initializers.ones, (h,))
        dt_BxNxH = jax.nn.softplus(dt_BxNxH + dt_bias_H[None, None, :])
        log_decay_BxNxH = dt_BxNxH * -jnp.exp(a_log_H)[None, None, :]

        xs_BxNxHxP = xs_BxNxI.reshape(batch, n, h, p)
        heads_per_group = h // g  # head i reads group i // heads_per_group, as mamba_ssm's repeat
        b_BxNxHxS = jnp.repeat(b_BxNxGS.reshape(batch, n, g, s), heads_per_group, axis=2)
        c_BxNxHxS = jnp.repeat(c_BxNxGS.reshape(batch, n, g, s), heads_per_group, axis=2)
        y_BxNxHxP = ssd_chunked(
            xs_BxNxHxP * dt_BxNxH[..., None], log_decay_BxNxH, b_BxNxHxS, c_BxNxHxS, o.chunk
        )
        y_BxNxHxP = y_BxNxHxP + skip_H[None, None, :, None] * xs_BxNxHxP

        # Gated RMSNorm (norm after gate, one RMS per group), as mamba_ssm's RMSNormGated.
        y_BxNxI = y_BxNxHxP.reshape(batch, n, inner) * jax.nn.silu(z_BxNxI)
        y_BxNxI = _rms_norm(y_BxNxI, self.param("norm", nn.initializers.ones, (inner,)), groups=g)
        return nn.Dense(
            c.width, use_bias=False, dtype=c.compute_dtype, kernel_init=torch_linear_init(), name="out_proj"
        )(y_BxNxI)


class Mamba2Block(nn.Module):
    """h + Mixer(RMSNorm(h)). Returns (h, None), the form nn.scan wants."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxNxE: jax.Array):
        norm_E = self.param("norm", nn.initializers.ones, (self.config.width,))
        return x_BxNxE + Mamba2Mixer(self.config, name="mixer")(_rms_norm(x_BxNxE, norm_E)).astype(
            jnp.float32
        ), None


class Mamba2Backbone(nn.Module):
    """Mamba2 block stack over tokens [B, N, E] -> states [B, N, E] (float32). Padding must be at the end."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxNxE: jax.Array, point_mask_BxN: jax.Array) -> jax.Array:
        del point_mask_BxN  # causal: real tokens (a prefix) never see the padded suffix
        x_BxNxE = apply_blocks(Mamba2Block, self.config, tokens_BxNxE.astype(jnp.float32))
        return _rms_norm(x_BxNxE, self.param("norm_f", nn.initializers.ones, (self.config.width,)))
