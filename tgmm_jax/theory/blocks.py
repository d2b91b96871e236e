"""Minimal transformer blocks as pure functions on plain parameter dicts (T tokens, E width, H heads, P dims).

``attention``: multi-head attention with a residual, ReLU scores (unnormalised sum over keys, as in the
theory literature) or softmax scores (masked keys excluded; a query with no allowed key adds nothing). The
value map of each head writes straight into the residual stream (W_V W_O merged into one E x E matrix).
``mlp``: one hidden ReLU layer with a residual. Constructions fill these dicts by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
ATTENTION_KINDS = ("relu", "softmax")


def attention_params(num_heads: int, width: int, head_dim: int) -> dict:
    """All-zero attention weights: wq, wk [H, E, P], wv [H, E, E]."""
    return {
        "wq": jnp.zeros((num_heads, width, head_dim), jnp.float32),
        "wk": jnp.zeros((num_heads, width, head_dim), jnp.float32),
        "wv": jnp.zeros((num_heads, width, width), jnp.float32),
    }


def mlp_params(width: int, hidden: int) -> dict:
    """All-zero MLP weights: w1 [E, F], b1 [F], w2 [F, E]."""
    return {
        "w1": jnp.zeros((width, hidden), jnp.float32),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jnp.zeros((hidden, width), jnp.float32),
    }


def attention_scores(params: dict, tokens_TxE: jax.Array) -> jax.Array:
    """q_i . k_j for every head: [H, T, T]."""
    q_HxTxP = jnp.einsum("te,hep->htp", tokens_TxE, params["wq"], precision=HIGHEST)
    k_HxTxP = jnp.einsum("te,hep->htp", tokens_TxE, params["wk"], precision=HIGHEST)
    return jnp.einsum("hip,hjp->hij", q_HxTxP, k_HxTxP, precision=HIGHEST)


def attention_weights(params: dict, tokens_TxE: jax.Array, kind: str, mask_HxTxT=None) -> jax.Array:
    """Attention weights [H, T(query), T(key)]: relu(score) or a masked softmax over keys."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {ATTENTION_KINDS}, got {kind!r}")
    scores_HxTxT = attention_scores(params, tokens_TxE)
    if mask_HxTxT is None:
        mask_HxTxT = jnp.ones(scores_HxTxT.shape, bool)
    if kind == "relu":
        return jnp.where(mask_HxTxT, jax.nn.relu(scores_HxTxT), 0.0)
    scores_HxTxT = jnp.where(mask_HxTxT, scores_HxTxT, -jnp.inf)
    top_HxTx1 = jnp.max(scores_HxTxT, axis=-1, keepdims=True)
    top_HxTx1 = jnp.where(jnp.isfinite(top_HxTx1), top_HxTx1, 0.0)
    expd_HxTxT = jnp.where(mask_HxTxT, jnp.exp(scores_HxTxT - top_HxTx1), 0.0)
    total_HxTx1 = jnp.sum(expd_HxTxT, axis=-1, keepdims=True)
    return expd_HxTxT / jnp.where(total_HxTx1 > 0, total_HxTx1, 1.0)


def attention(params: dict, tokens_TxE: jax.Array, kind: str, mask_HxTxT=None) -> jax.Array:
    """tokens + sum_h sum_j a_h(i, j) (tokens_j W_V^h)."""
    weights_HxTxT = attention_weights(params, tokens_TxE, kind, mask_HxTxT)
    values_HxTxE = jnp.einsum("te,hef->htf", tokens_TxE, params["wv"], precision=HIGHEST)
    return tokens_TxE + jnp.einsum("hij,hjf->if", weights_HxTxT, values_HxTxE, precision=HIGHEST)


def mlp(params: dict, tokens_TxE: jax.Array) -> jax.Array:
    """tokens + relu(tokens W1 + b1) W2, token-wise."""
    hidden_TxF = jax.nn.relu(jnp.dot(tokens_TxE, params["w1"], precision=HIGHEST) + params["b1"][None, :])
    return tokens_TxE + jnp.dot(hidden_TxF, params["w2"], precision=HIGHEST)
