"""Theorem 1 made explicit: softmax-attention weights that run EM steps for an isotropic unit-variance GMM.

One EM step = two transformer layers (attention + ReLU MLP each); L steps = 2L layers (weights repeated).
Tokens: N point tokens [x_n, 1, log pi] and K component tokens [mu_k, c_k = -||mu_k||^2 / 2, e_k].
  layer 1 attention (points -> components): score [x_n, 1, log pi] . [mu_k, c_k, e_k]
      = x_n . mu_k - ||mu_k||^2 / 2 + log pi_k, the exact E-step logit; value e_k, so point n receives r_n.
  layer 1 MLP (points): log r_nk, a ReLU interpolant of log (``width`` units: geometric knots on [floor, 1],
      below floor a steep linear drop to log(floor) - 20, so far-away points keep a negligible weight).
  layer 2 attention, head 1 (components -> points): score e_k . log r_n = log r_nk, so the softmax weights
      are r_nk / sum_m r_mk and the value x_n gives the new mean exactly (the division is the softmax's);
      head 2 (points -> points, score 0): the uniform average of r_n, i.e. the new weights pi, at every point.
  layer 2 MLP: c_k = -||mu_k||^2 / 2 (ReLU interpolant of z^2 on [-radius, radius], 2 ``width`` units per
      coordinate), log pi (as above) and the exact clean-up (identity pairs relu(z) - relu(-z)): move the new
      means into mu, overwrite c and log pi, zero the scratch slots.
The only approximations are the two scalar functions log and z^2; with ``width=None`` they are computed
exactly (an oracle for the wiring) and the stack equals EM to float rounding. See docs/theory.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tgmm_jax.theory import blocks
from tgmm_jax.theory.layout import Layout

POINT, COMPONENT = 0, 1
_TINY = 1e-30
# Below the floor the log interpolant drops linearly to log(floor) - _DROP at 0 (weight ~ 2e-9 floor).
_DROP = 20.0


def em_layout(d: int, k: int) -> Layout:
    return Layout(
        (
            ("x", d),
            ("one", 1),
            ("logpi", k),
            ("mu", d),
            ("c", 1),
            ("onehot", k),
            ("resp", k),
            ("logresp", k),
            ("newmu", d),
            ("pi", k),
        )
    )


def log_knots(width: int, floor: float) -> np.ndarray:
    """Geometric knots floor = t_0 < ... < t_{width-2} = 1 of the log interpolant (width units in all)."""
    if width < 3:
        raise ValueError(f"width must be >= 3, got {width}")
    if not 0.0 < floor < 1.0:
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    return np.geomspace(floor, 1.0, width - 1)


def _ramp_coefs(knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """c_i with f(t_0) + sum_i c_i relu(z - t_i) = the piecewise-linear interpolant through (knots, values)."""
    slopes = np.diff(values) / np.diff(knots)
    return np.diff(np.concatenate([[0.0], slopes]))


def approx_log(z, width: int, floor: float):
    """The function the log units compute (for tests and docs)."""
    knots = log_knots(width, floor)
    coefs = _ramp_coefs(knots, np.log(knots))
    z = jnp.asarray(z)
    ramps = jax.nn.relu(z[..., None] - _trailing(knots[:-1], z.ndim))
    return np.log(floor) - _DROP / floor * jax.nn.relu(floor - z) + ramps @ coefs


def approx_square(z, width: int, radius: float):
    """The function the square units compute: interpolant of z^2 on knots i radius / width, both signs."""
    knots = np.arange(width + 1) * radius / width
    coefs = _ramp_coefs(knots, knots**2)
    z = jnp.asarray(z)
    t = _trailing(knots[:-1], z.ndim)
    return (jax.nn.relu(z[..., None] - t) + jax.nn.relu(-z[..., None] - t)) @ coefs


def _trailing(values: np.ndarray, ndim: int) -> jax.Array:
    """values [W] as an array of rank ndim + 1 (explicit broadcasting under rank_promotion='raise')."""
    return jnp.asarray(values, jnp.float32).reshape((1,) * ndim + (-1,))


class _Mlp:
    """Builds a one-hidden-layer ReLU MLP unit by unit (numpy, then frozen to jnp arrays)."""

    def __init__(self, width: int):
        self.width = width
        self.units = []  # (input weights {feature: w}, bias, output weights {feature: w})

    def unit(self, inputs: dict, bias: float, outputs: dict):
        self.units.append((inputs, bias, outputs))

    def linear(self, src: int, outputs: dict):
        """outputs += coef * z for z = feature src, exactly: relu(z) - relu(-z)."""
        self.unit({src: 1.0}, 0.0, outputs)
        self.unit({src: -1.0}, 0.0, {f: -w for f, w in outputs.items()})

    def log_units(self, src: int, gate: int, dst: int, width: int, floor: float):
        """dst += log(z) interpolated (``approx_log``) where feature gate is 1 (z = 0 where it is 0)."""
        knots = log_knots(width, floor)
        coefs = _ramp_coefs(knots, np.log(knots))
        self.unit({gate: 1.0}, 0.0, {dst: float(np.log(floor))})
        self.unit({gate: floor, src: -1.0}, 0.0, {dst: -_DROP / floor})
        for t, c in zip(knots[:-1], coefs, strict=True):
            self.unit({src: 1.0}, -float(t), {dst: float(c)})

    def square_units(self, src: int, dst: int, coef: float, width: int, radius: float):
        """dst += coef * z^2 (interpolated on [-radius, radius])."""
        knots = np.arange(width + 1) * radius / width
        coefs = _ramp_coefs(knots, knots**2)
        for t, c in zip(knots[:-1], coefs, strict=True):
            for sign in (1.0, -1.0):
                self.unit({src: sign}, -float(t), {dst: coef * float(c)})

    def params(self) -> dict:
        w1 = np.zeros((self.width, len(self.units)), np.float32)
        b1 = np.zeros((len(self.units),), np.float32)
        w2 = np.zeros((len(self.units), self.width), np.float32)
        for u, (inputs, bias, outputs) in enumerate(self.units):
            for f, w in inputs.items():
                w1[f, u] = w
            b1[u] = bias
            for f, w in outputs.items():
                w2[u, f] = w
        return {"w1": jnp.asarray(w1), "b1": jnp.asarray(b1), "w2": jnp.asarray(w2)}


def em_step_params(d: int, k: int, width: int | None = 64, floor: float = 1e-3, radius: float = 12.0) -> dict:
    """Weights of one EM step (two layers). ``width=None``: exact log and square (no MLP weights)."""
    lay = em_layout(d, k)
    e = lay.width
    att1 = blocks.attention_params(1, e, d + 1 + k)
    q_feats = lay["x"] + lay["one"] + lay["logpi"]
    k_feats = lay["mu"] + lay["c"] + lay["onehot"]
    for p, (fq, fk) in enumerate(zip(q_feats, k_feats, strict=True)):
        att1["wq"] = att1["wq"].at[0, fq, p].set(1.0)
        att1["wk"] = att1["wk"].at[0, fk, p].set(1.0)
    for j in range(k):
        att1["wv"] = att1["wv"].at[0, lay["onehot"][j], lay["resp"][j]].set(1.0)

    att2 = blocks.attention_params(2, e, k)
    for j in range(k):
        att2["wq"] = att2["wq"].at[0, lay["onehot"][j], j].set(1.0)
        att2["wk"] = att2["wk"].at[0, lay["logresp"][j], j].set(1.0)
        att2["wv"] = att2["wv"].at[1, lay["resp"][j], lay["pi"][j]].set(1.0)
    for i in range(d):
        att2["wv"] = att2["wv"].at[0, lay["x"][i], lay["newmu"][i]].set(1.0)

    step = {"layer1": {"attn": att1}, "layer2": {"attn": att2}}
    if width is None:
        return step
    one = lay["one"][0]
    mlp1 = _Mlp(e)
    for j in range(k):
        mlp1.log_units(lay["resp"][j], one, lay["logresp"][j], width, floor)
    mlp2 = _Mlp(e)
    c = lay["c"][0]
    for i in range(d):
        mlp2.square_units(lay["newmu"][i], c, -0.5, width, radius)
        mlp2.linear(lay["newmu"][i], {lay["mu"][i]: 1.0, lay["newmu"][i]: -1.0})
        mlp2.linear(lay["mu"][i], {lay["mu"][i]: -1.0})
    mlp2.linear(c, {c: -1.0})
    for j in range(k):
        mlp2.log_units(lay["pi"][j], one, lay["logpi"][j], width, floor)
        for slot in ("logpi", "pi", "resp", "logresp"):
            mlp2.linear(lay[slot][j], {lay[slot][j]: -1.0})
    step["layer1"]["mlp"] = mlp1.params()
    step["layer2"]["mlp"] = mlp2.params()
    return step


def em_params(d: int, k: int, steps: int, width: int | None = 64, floor: float = 1e-3, radius: float = 12.0):
    """L = ``steps`` EM steps: a list of 2-layer step weights (the same numbers at every step)."""
    return [em_step_params(d, k, width, floor, radius) for _ in range(steps)]


def em_tokens(points_NxD: jax.Array, weights_K: jax.Array, means_KxD: jax.Array, d_max=None, k_max=None):
    """Input encoding of the points and the initial mixture: (tokens [N + K, E], token types [N + K]).

    With ``d_max`` / ``k_max`` the tokens fit the weights built for (d_max, k_max): coordinates are
    zero-padded and the K component tokens take the first K one-hot slots (no token for the others), so one
    set of weights serves every D <= d_max, K <= k_max, as in the theorem.
    """
    n, d = points_NxD.shape
    k = means_KxD.shape[0]
    d_max, k_max = d_max or d, k_max or k
    if d > d_max or k > k_max:
        raise ValueError(f"D = {d}, K = {k} exceed the construction's d_max = {d_max}, k_max = {k_max}")
    lay = em_layout(d_max, k_max)
    x_cols, mu_cols = jnp.array(lay["x"][:d]), jnp.array(lay["mu"][:d])
    pts = jnp.zeros((n, lay.width), jnp.float32)
    pts = pts.at[:, x_cols].set(points_NxD)
    pts = pts.at[:, lay["one"][0]].set(1.0)
    pts = pts.at[:, jnp.array(lay["logpi"][:k])].set(jnp.log(weights_K)[None, :])
    comps = jnp.zeros((k, lay.width), jnp.float32)
    comps = comps.at[:, mu_cols].set(means_KxD)
    comps = comps.at[:, lay["c"][0]].set(-0.5 * jnp.sum(means_KxD**2, axis=-1))
    comps = comps.at[:, jnp.array(lay["onehot"][:k])].set(jnp.eye(k, dtype=jnp.float32))
    types = jnp.concatenate([jnp.full((n,), POINT), jnp.full((k,), COMPONENT)])
    return jnp.concatenate([pts, comps], axis=0), types


def _mask(types_T, query_type, key_type):
    return (types_T[:, None] == query_type) & (types_T[None, :] == key_type)


def _exact_mlp(layer: int, h_TxE: jax.Array, lay: Layout, is_point_T: jax.Array) -> jax.Array:
    """What the MLPs approximate, computed exactly (``width=None``)."""

    def col(name):
        return jnp.array(lay[name])

    def logf(z_TxK):  # log on point tokens, 0 on component tokens (as the gated MLP units)
        return jnp.where(is_point_T[:, None], jnp.log(jnp.maximum(z_TxK, _TINY)), 0.0)

    if layer == 1:
        return h_TxE.at[:, col("logresp")].add(logf(h_TxE[:, col("resp")]))
    newmu = h_TxE[:, col("newmu")]
    h_TxE = h_TxE.at[:, col("mu")].set(newmu)
    h_TxE = h_TxE.at[:, lay["c"][0]].set(-0.5 * jnp.sum(newmu**2, axis=-1))
    h_TxE = h_TxE.at[:, col("logpi")].set(logf(h_TxE[:, col("pi")]))
    for slot in ("newmu", "pi", "resp", "logresp"):
        h_TxE = h_TxE.at[:, col(slot)].set(0.0)
    return h_TxE


def em_step_apply(step: dict, tokens_TxE: jax.Array, types_T: jax.Array, d: int, k: int) -> jax.Array:
    """One EM step: the two layers of ``step`` applied to the tokens."""
    lay = em_layout(d, k)
    masks = {
        1: _mask(types_T, POINT, COMPONENT)[None],
        2: jnp.stack([_mask(types_T, COMPONENT, POINT), _mask(types_T, POINT, POINT)]),
    }
    h = tokens_TxE
    for layer in (1, 2):
        block = step[f"layer{layer}"]
        h = blocks.attention(block["attn"], h, "softmax", masks[layer])
        h = blocks.mlp(block["mlp"], h) if "mlp" in block else _exact_mlp(layer, h, lay, types_T == POINT)
    return h


def em_apply(params: list, tokens_TxE: jax.Array, types_T: jax.Array, d: int, k: int) -> jax.Array:
    """Runs the 2L layers; returns the final tokens."""
    for step in params:
        tokens_TxE = em_step_apply(step, tokens_TxE, types_T, d, k)
    return tokens_TxE


def em_readout(tokens_TxE: jax.Array, types_T: jax.Array, d: int, k: int, d_max=None, k_max=None):
    """(weights [K] = exp(log pi) of the first point token, means [K, D] of the component tokens)."""
    lay = em_layout(d_max or d, k_max or k)
    n = tokens_TxE.shape[0] - k
    weights_K = jnp.exp(tokens_TxE[0, jnp.array(lay["logpi"][:k])])
    means_KxD = tokens_TxE[n:, jnp.array(lay["mu"][:d])]
    return weights_K, means_KxD


def transformer_em(params: list, points_NxD, weights_K, means_KxD, d_max=None, k_max=None):
    """L EM steps by the construction from (weights, means): (weights [K], means [K, D]).

    ``params`` built for (d_max, k_max) (default: this task's D and K)."""
    d = points_NxD.shape[-1]
    k = means_KxD.shape[0]
    d_max, k_max = d_max or d, k_max or k
    tokens, types = em_tokens(points_NxD, weights_K, means_KxD, d_max, k_max)
    final = em_apply(params, tokens, types, d_max, k_max)
    return em_readout(final, types, d, k, d_max, k_max)
