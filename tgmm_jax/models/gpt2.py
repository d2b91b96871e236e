"""GPT-2 blocks and the two backbones built from them: `gpt2` (causal, learned positions) and `set`.

The block is HF GPT-2's: pre-LayerNorm (eps 1e-5), multi-head self-attention, MLP 4E with GELU-tanh, final
LayerNorm; init N(0, 0.02), zero biases, the two residual output projections scaled by 1/sqrt(2L); dropout 0.
`set` is the same stack without positions and without the causal mask, so its token states are
permutation-equivariant and a pooled read-out is invariant to the order of the points.

Padded tokens (point_mask False) are masked as keys. The causal backbone assumes padding sits at the end
(TGMM moves the real points to the front); then real tokens never see padded ones either way.
Layers are scanned or unrolled per ``ModelConfig.scan_layers`` (see models/stack.py). Options (models/options.py):
none for `set` (``TransformerOptions``), the size of the position table for `gpt2` (``Gpt2Options``).
The residual stream stays float32; matmuls run in the compute dtype and softmax in float32. ``attention`` is
the same core with a hand-written backward (equal to the autodiff of ``plain_attention`` to rounding) that, on
CPU, loops over cache-sized chunks of tasks.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tgmm_jax.models.config import ModelConfig
from tgmm_jax.models.stack import apply_blocks

_LN_EPS = 1e-5
_INIT_STD = 0.02
# Masked attention logits: finite, so a query with no visible key gets a uniform (not NaN) row.
_MASKED_LOGIT = -1e30


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


def _probs(q_BxHxNxF: jax.Array, k_BxHxNxF: jax.Array, point_mask_BxN: jax.Array, causal: bool) -> jax.Array:
    """softmax((q / sqrt(F)) k^T + bias) over the keys, in float32: [B, H, N, N].

    The scale multiplies q, the [.., N, F] operand, rather than the [.., N, N] logits: XLA:CPU
    materialised the scale broadcast to the logits' shape (15 ms per tiny step).
    """
    scaled_q_BxHxNxF = q_BxHxNxF * jnp.asarray(1.0 / math.sqrt(q_BxHxNxF.shape[-1]), q_BxHxNxF.dtype)
    logits_BxHxNxN = jnp.einsum("bhqf,bhkf->bhqk", scaled_q_BxHxNxF, k_BxHxNxF).astype(jnp.float32)
    return jax.nn.softmax(logits_BxHxNxN + attention_bias(point_mask_BxN, causal)[:, None], axis=-1)


def plain_attention(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, point_mask_BxN, causal: bool) -> jax.Array:
    """softmax(q k^T / sqrt(F) + bias) v, differentiated by autodiff (the reference of ``attention``).

    Keys with ``point_mask_BxN`` False are masked, and with ``causal`` keys after the query too.
    """
    probs_BxHxNxN = _probs(q_BxHxNxF, k_BxHxNxF, point_mask_BxN, causal).astype(q_BxHxNxF.dtype)
    return jnp.einsum("bhqk,bhkf->bhqf", probs_BxHxNxN, v_BxHxNxF)


# Scores per device per chunk of the CPU attention loop: 2^18 float32 (1 MiB), e.g. 16 heads of 128 x 128.
# Measured on this 2-core CPU against the previous core (whole batch at once): one layer's forward +
# backward at 256 tasks x 128 points ran 1.3x (2 heads of 16) and 1.1x (4 heads of 32) faster; in the
# `small` step, 2^16 scores per chunk was slower (2312 vs 1747 ms) and 2^20 no faster.
_CHUNK_SCORES = 1 << 18


def attention_chunks(batch: int, heads: int, num_points: int) -> int:
    """How many chunks of tasks ``attention`` loops over: 1 off CPU; on CPU, the largest divisor of each
    device's share of ``batch`` that keeps about _CHUNK_SCORES scores per device and chunk, so a chunk's
    [., H, N, N] tensors stay in cache through the softmax and both matmuls. The count divides the share
    (``batch`` / ``jax.device_count()``), so every chunk holds the same number of tasks of every device."""
    devices = jax.device_count()
    if jax.default_backend() != "cpu" or batch % devices:
        return 1
    share = batch // devices
    tasks_per_chunk = max(1, _CHUNK_SCORES // (heads * num_points * num_points))
    chunks = max(1, share // tasks_per_chunk)
    while share % chunks:
        chunks -= 1
    return chunks


def _chunked(fn, chunks: int, *args_Bx___):
    """fn over ``chunks`` interleaved slices of the batch axis, in a loop; outputs re-joined on that axis.

    Chunk c holds tasks c, c + chunks, c + 2 chunks, ...: the batch axis is split as [B / chunks, chunks]
    and the loop indexes the second axis, so a batch sharded over devices in contiguous blocks stays on its
    devices (consecutive slices would put the device axis in the loop and make XLA gather the batch).
    """
    if chunks == 1:
        return fn(*args_Bx___)
    split = [a.reshape((a.shape[0] // chunks, chunks) + a.shape[1:]) for a in args_Bx___]

    def chunk(c, a):
        return jax.lax.dynamic_index_in_dim(a, c, axis=1, keepdims=False)

    def body(c, outs):
        ys = fn(*(chunk(c, a) for a in split))
        return jax.tree.map(lambda o, y: jax.lax.dynamic_update_index_in_dim(o, y, c, axis=1), outs, ys)

    shapes = jax.eval_shape(lambda *xs: fn(*(chunk(0, a) for a in xs)), *split)
    outs = jax.tree.map(lambda s: jnp.zeros((s.shape[0], chunks) + s.shape[1:], s.dtype), shapes)
    outs = jax.lax.fori_loop(0, chunks, body, outs)
    return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:]), outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, point_mask_BxN, causal: bool) -> jax.Array:
    """``plain_attention`` with a hand-written backward that recomputes the probabilities (the same numbers
    as its autodiff, to rounding).

    Why: XLA:CPU materialises every [B, H, N, N] tensor of the whole batch, so the step ran at memory
    bandwidth. Here, on CPU, forward and backward loop over chunks of tasks (``attention_chunks``) whose
    scores fit in cache, and the backward recomputes each chunk's probabilities from q and k instead of
    storing them (one extra [N, F] x [F, N] matmul per head). The mask gets no gradient.
    """
    return _attention_fwd(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, point_mask_BxN, causal)[0]


def _attention_fwd(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, point_mask_BxN, causal):
    def forward(q, k, v, mask):
        probs_BxHxNxN = _probs(q, k, mask, causal).astype(v.dtype)
        return jnp.einsum("bhqk,bhkf->bhqf", probs_BxHxNxN, v)

    b, h, n, _ = q_BxHxNxF.shape
    out = _chunked(forward, attention_chunks(b, h, n), q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, point_mask_BxN)
    return out, (q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, point_mask_BxN)


def _transposed(x_BxHxNxM: jax.Array) -> jax.Array:
    """x with its last two axes swapped, materialised: behind an optimization barrier XLA cannot fold the
    transpose into the next dot, which XLA:CPU would then run outside its fast (YNNPACK) path, 3x slower
    (10 vs 3.4 ms per product per tiny layer)."""
    return jax.lax.optimization_barrier(jnp.swapaxes(x_BxHxNxM, -1, -2))


def _attention_bwd(causal, residuals, g_BxHxNxF):
    q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, point_mask_BxN = residuals
    dtype = q_BxHxNxF.dtype
    scale = jnp.asarray(1.0 / math.sqrt(q_BxHxNxF.shape[-1]), dtype)

    def backward(q, k, v, mask, g):
        # the two products that contract over the queries take their [., N_k, N_q] operand materialised
        probs = _probs(q, k, mask, causal)
        dv = jnp.einsum("bhkq,bhqf->bhkf", _transposed(probs.astype(dtype)), g)
        dprobs = jnp.einsum("bhqf,bhkf->bhqk", g, v).astype(jnp.float32)
        # softmax backward in float32, then the logits' cast, as autodiff of _probs does them
        dlogits = (probs * (dprobs - jnp.sum(dprobs * probs, axis=-1, keepdims=True))).astype(dtype)
        dq = jnp.einsum("bhqk,bhkf->bhqf", dlogits, k) * scale
        dk = jnp.einsum("bhkq,bhqf->bhkf", _transposed(dlogits), q * scale)
        return dq, dk, dv

    b, h, n, _ = q_BxHxNxF.shape
    args = (q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, point_mask_BxN, g_BxHxNxF)
    dq, dk, dv = _chunked(backward, attention_chunks(b, h, n), *args)
    return dq, dk, dv, None


attention.defvjp(_attention_fwd, _attention_bwd)
# What SelfAttention calls (benchmarks/attention.py swaps in plain_attention to time the autodiff step).
attention_core = attention


class SelfAttention(nn.Module):
    config: ModelConfig
    causal: bool = False

    @nn.compact
    def __call__(self, x_BxNxE: jax.Array, point_mask_BxN: jax.Array) -> jax.Array:
        c = self.config
        b, n, e = x_BxNxE.shape
        h = c.num_heads
        qkv_BxNx3E = _dense(3 * e, c, _INIT_STD, "qkv")(x_BxNxE)
        # Heads-major layout [3, B, H, N, F] before the two batched matmuls: XLA:CPU runs them with leading
        # batch dimensions about 3x faster than the einsum over [B, N, H, F] (same numbers, same params).
        qkv_3xBxHxNxF = qkv_BxNx3E.reshape(b, n, 3, h, e // h).transpose(2, 0, 3, 1, 4)
        q_BxHxNxF, k_BxHxNxF, v_BxHxNxF = qkv_3xBxHxNxF[0], qkv_3xBxHxNxF[1], qkv_3xBxHxNxF[2]
        out_BxHxNxF = attention_core(q_BxHxNxF, k_BxHxNxF, v_BxHxNxF, point_mask_BxN, self.causal)
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
    causal: bool = False

    @nn.compact
    def __call__(self, x_BxNxE: jax.Array, point_mask_BxN: jax.Array):
        c = self.config
        attn = SelfAttention(c, self.causal, name="attn")
        x_BxNxE = x_BxNxE + attn(_layer_norm(c, "ln_1")(x_BxNxE), point_mask_BxN).astype(jnp.float32)
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
        x_BxNxE = apply_blocks(Block, c, x_BxNxE, point_mask_BxN, causal=self.causal)
        return _layer_norm(c, "ln_f")(x_BxNxE).astype(jnp.float32)
