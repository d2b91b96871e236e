"""Theorem 2 made explicit: ReLU-attention weights that compute the tensor power update T(I, v, v).

Two constructions, both exact up to float rounding (derivation in docs/theory.md):

* ``slice``: one ReLU-attention layer with D heads. The encoding holds the iterate in a query token and the
  slices of T in 2D key tokens (j, s), s = +-1, each holding s T[:, j, :] and the scalar s v_j. Head m scores
  relu(v_m * s v_j) and reads column m of the slice, so the query receives
  sum_m sum_j sum_s relu(s v_m v_j) s T[:, j, m] = sum_{j,m} v_j v_m T[:, j, m] = T(I, v, v).
  Any tensor works: the empirical third moment or the spectral method's whitened M3(W, W, W).
* ``data``: two ReLU-attention layers with D heads each, straight from the points; T is never formed. A
  tensor written as sum_c w_c u_c (x) P_c (P_c symmetric D x D) is encoded as 2 tokens per piece c,
  (s w_c u_c, s P_c); the points give the pieces (x_n, x_n x_n^T, 1/N), and the whitened tensor adds 1 + K
  pieces for its correction -sym(a (x) W^T W). Layer 1, head m: score relu(s (P_c v)_m), value s w_c u_c,
  so the iterate token receives the matrix A = T(I, I, v). Layer 2, head i: the iterate token is the only
  key (its slot ``it`` holds s v, keys elsewhere are 0), score relu(s A[i, :] . v), value s e_i: T(I, v, v).
  Tokens hold degree-2 features x_n x_n^T: with features linear in x_n an attention layer at a query token
  is of degree 2 in each x_n (score x value), one short of the cubic T(I, v, v).
Normalisation of the update is omitted, as in the theorem.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tgmm_jax.theory import blocks
from tgmm_jax.theory.layout import Layout

HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------------- slice


def slice_layout(d: int) -> Layout:
    return Layout((("it", d), ("coord", 1), ("slice", d * d), ("out", d)))


def slice_params(d: int) -> dict:
    """One ReLU-attention layer, D heads of dimension 1."""
    lay = slice_layout(d)
    p = blocks.attention_params(d, lay.width, 1)
    wq, wk, wv = p["wq"], p["wk"], p["wv"]
    for m in range(d):
        wq = wq.at[m, lay["it"][m], 0].set(1.0)
        wk = wk.at[m, lay["coord"][0], 0].set(1.0)
        for i in range(d):
            wv = wv.at[m, lay["slice"][i * d + m], lay["out"][i]].set(1.0)
    return {"attn": {"wq": wq, "wk": wk, "wv": wv}}


def slice_tokens(tensor_DxDxD: jax.Array, v_D: jax.Array) -> jax.Array:
    """Query token (v) then key tokens (j, +1), (j, -1) for j < D: [1 + 2D, E]."""
    d = v_D.shape[-1]
    lay = slice_layout(d)
    query = jnp.zeros((1, lay.width), jnp.float32).at[0, jnp.array(lay["it"])].set(v_D)
    keys = []
    for sign in (1.0, -1.0):
        tok_DxE = jnp.zeros((d, lay.width), jnp.float32)
        tok_DxE = tok_DxE.at[:, lay["coord"][0]].set(sign * v_D)
        slices_DxDD = jnp.transpose(tensor_DxDxD, (1, 0, 2)).reshape(d, d * d)  # token j: T[:, j, :]
        tok_DxE = tok_DxE.at[:, jnp.array(lay["slice"])].set(sign * slices_DxDD)
        keys.append(tok_DxE)
    return jnp.concatenate([query, *keys], axis=0)


def slice_apply(params: dict, tokens_TxE: jax.Array, d: int) -> jax.Array:
    """T(I, v, v), read from the query token."""
    out_TxE = blocks.attention(params["attn"], tokens_TxE, "relu")
    return out_TxE[0, jnp.array(slice_layout(d)["out"])]


def power_update_slice(params: dict, tensor_DxDxD: jax.Array, v_D: jax.Array) -> jax.Array:
    """T(I, v, v) by the one-layer slice construction."""
    return slice_apply(params, slice_tokens(tensor_DxDxD, v_D), v_D.shape[-1])


# ---------------------------------------------------------------------------------------------------- data


def data_layout(d: int) -> Layout:
    return Layout((("it", d), ("sign", 1), ("val", d), ("key", d * d), ("mat", d * d), ("out", d)))


def data_params(d: int) -> dict:
    """Two ReLU-attention layers, D heads each (head dims D)."""
    lay = data_layout(d)
    one = blocks.attention_params(d, lay.width, d)
    two = blocks.attention_params(d, lay.width, d)
    for m in range(d):
        for j in range(d):
            # layer 1, head m: q = v (slot it), k = row m of P; value w u -> column m of A.
            one["wq"] = one["wq"].at[m, lay["it"][j], j].set(1.0)
            one["wk"] = one["wk"].at[m, lay["key"][m * d + j], j].set(1.0)
            one["wv"] = one["wv"].at[m, lay["val"][j], lay["mat"][j * d + m]].set(1.0)
            # layer 2, head m: q = row m of A, k = v (only the iterate tokens have it); value sign -> out[m].
            two["wq"] = two["wq"].at[m, lay["mat"][m * d + j], j].set(1.0)
            two["wk"] = two["wk"].at[m, lay["it"][j], j].set(1.0)
        two["wv"] = two["wv"].at[m, lay["sign"][0], lay["out"][m]].set(1.0)
    return {"layer1": one, "layer2": two}


def point_pieces(points_NxD: jax.Array, point_weights_N: jax.Array | None = None):
    """Pieces (u_n, P_n = u_n u_n^T, w_n) of the empirical third moment sum_n w_n u_n^(x3) (w = 1/N)."""
    n = points_NxD.shape[0]
    if point_weights_N is None:
        point_weights_N = jnp.full((n,), 1.0 / n, points_NxD.dtype)
    outer_NxDxD = points_NxD[:, :, None] * points_NxD[:, None, :]
    return points_NxD, outer_NxDxD, point_weights_N


def whitened_pieces(whitened_NxK: jax.Array, a_K: jax.Array, gram_KxK: jax.Array, point_weights_N=None):
    """Pieces of the spectral method's T = mean_n y_n^(x3) - sym(a (x) G), G = W^T W, a = W^T M1.

    sym(a (x) G)[i, m, j] = a_i G_mj + sum_r e_r[i] (a_m G_rj + G_rm a_j): one piece (a, G) and one per
    coordinate r, (e_r, a G_r^T + G_r a^T), all with weight -1.
    """
    u_pts, p_pts, w_pts = point_pieces(whitened_NxK, point_weights_N)
    k = a_K.shape[0]
    eye_KxK = jnp.eye(k, dtype=a_K.dtype)
    per_r_KxKxK = a_K[None, :, None] * gram_KxK[:, None, :] + gram_KxK[:, :, None] * a_K[None, None, :]
    u = jnp.concatenate([u_pts, a_K[None], eye_KxK], axis=0)
    p = jnp.concatenate([p_pts, gram_KxK[None], per_r_KxKxK], axis=0)
    w = jnp.concatenate([w_pts, -jnp.ones((1 + k,), a_K.dtype)], axis=0)
    return u, p, w


def data_tokens(pieces, v_D: jax.Array) -> jax.Array:
    """Iterate tokens (+v), (-v), then the pieces with s = +1 and s = -1: [2 + 2C, E]."""
    u_CxD, p_CxDxD, w_C = pieces
    d = v_D.shape[-1]
    lay = data_layout(d)
    c = u_CxD.shape[0]
    it = jnp.zeros((2, lay.width), jnp.float32)
    it = it.at[:, jnp.array(lay["it"])].set(jnp.stack([v_D, -v_D]))
    it = it.at[:, lay["sign"][0]].set(jnp.array([1.0, -1.0]))
    toks = [it]
    for sign in (1.0, -1.0):
        tok_CxE = jnp.zeros((c, lay.width), jnp.float32)
        tok_CxE = tok_CxE.at[:, jnp.array(lay["val"])].set(sign * w_C[:, None] * u_CxD)
        tok_CxE = tok_CxE.at[:, jnp.array(lay["key"])].set(sign * p_CxDxD.reshape(c, d * d))
        toks.append(tok_CxE)
    return jnp.concatenate(toks, axis=0)


def data_apply(params: dict, tokens_TxE: jax.Array, d: int):
    """(T(I, v, v), A = T(I, I, v)) read from the first iterate token."""
    lay = data_layout(d)
    h = blocks.attention(params["layer1"], tokens_TxE, "relu")
    h = blocks.attention(params["layer2"], h, "relu")
    return h[0, jnp.array(lay["out"])], h[0, jnp.array(lay["mat"])].reshape(d, d)


def power_update_data(params: dict, pieces, v_D: jax.Array) -> jax.Array:
    """T(I, v, v) by the two-layer construction from the points (pieces)."""
    return data_apply(params, data_tokens(pieces, v_D), v_D.shape[-1])[0]


def reference_update(tensor_DxDxD: jax.Array, v_D: jax.Array) -> jax.Array:
    """NumPy-style reference: sum_{j,m} T[:, j, m] v_j v_m."""
    return jnp.einsum("ijm,j,m->i", tensor_DxDxD, v_D, v_D, precision=HIGHEST)
