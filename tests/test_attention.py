"""The attention core with the hand-written backward (gpt2.attention) against a NumPy forward and the
autodiff of the plain formulation (gpt2.plain_attention), with padding and causal masks, float32 and bf16."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp
import numpy as np
import pytest

from tgmm_jax.models import gpt2

B, H, N, F = 3, 2, 7, 4


def _inputs(causal: bool, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(1), 4)
    q, k, v, g = (2.0 * jax.random.normal(key, (B, H, N, F)).astype(dtype) for key in keys)
    point_mask_BxN = jnp.arange(N)[None, :] < jnp.array([[N], [5], [2]])  # full, padded, mostly padded
    return q, k, v, g, point_mask_BxN, gpt2.attention_bias(point_mask_BxN, causal)


def _numpy_attention(q, k, v, point_mask, causal):
    """Loops over tasks, heads and queries; masked keys dropped from the softmax."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                keys = [j for j in range(N) if point_mask[b, j] and (j <= i or not causal)]
                logits = np.array([q[b, h, i] @ k[b, h, j] for j in keys]) / np.sqrt(F)
                p = np.exp(logits - logits.max())
                out[b, h, i] = (p / p.sum()) @ v[b, h, keys]
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_numpy_and_plain(causal):
    q, k, v, _, point_mask, bias = _inputs(causal)
    ref = _numpy_attention(q, k, v, np.asarray(point_mask), causal)
    out = gpt2.attention(q, k, v, bias)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(gpt2.plain_attention(q, k, v, bias)))


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_equal_autodiff_of_plain(causal):
    q, k, v, g, _, bias = _inputs(causal)
    _, vjp_new = jax.vjp(lambda *a: gpt2.attention(*a, bias), q, k, v)
    _, vjp_old = jax.vjp(lambda *a: gpt2.plain_attention(*a, bias), q, k, v)
    for new, old in zip(vjp_new(g), vjp_old(g), strict=True):
        assert float(jnp.max(jnp.abs(old))) > 0.1  # not a vacuous comparison
        np.testing.assert_allclose(np.asarray(new), np.asarray(old), atol=1e-5, rtol=1e-5)
    # and both against the old formulation (where() on the logits instead of an additive bias)
    allowed = gpt2.attention_mask(_inputs(causal)[4], causal)

    def masked_where(q, k, v):
        logits = jnp.einsum("bhqf,bhkf->bhqk", q, k) / np.sqrt(F)
        probs = jax.nn.softmax(jnp.where(allowed[:, None], logits, -1e30), axis=-1)
        return jnp.einsum("bhqk,bhkf->bhqf", probs, v)

    grads_where = jax.vjp(masked_where, q, k, v)[1](g)
    for new, old in zip(vjp_new(g), grads_where, strict=True):
        np.testing.assert_allclose(np.asarray(new), np.asarray(old), atol=1e-5, rtol=1e-5)


def test_gradient_is_exact_by_finite_differences():
    """Directional derivative of <g, attention> against a central difference in float64-free terms."""
    q, k, v, g, _, bias = _inputs(causal=True)
    dq, dk, dv = jax.vjp(lambda *a: gpt2.attention(*a, bias), q, k, v)[1](g)
    dirs = [jax.random.normal(jax.random.key(i), q.shape) for i in range(3)]
    eps = 1e-2

    def f(s):
        return float(jnp.sum(g * gpt2.attention(q + s * dirs[0], k + s * dirs[1], v + s * dirs[2], bias)))

    numeric = (f(eps) - f(-eps)) / (2 * eps)
    analytic = float(sum(jnp.sum(d * t) for d, t in zip((dq, dk, dv), dirs, strict=True)))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3)


def test_bfloat16_gradients_follow_plain():
    q, k, v, g, _, bias = _inputs(causal=False, dtype=jnp.bfloat16)
    out = gpt2.attention(q, k, v, bias)
    assert out.dtype == jnp.bfloat16
    new = jax.vjp(lambda *a: gpt2.attention(*a, bias), q, k, v)[1](g)
    old = jax.vjp(lambda *a: gpt2.plain_attention(*a, bias), q, k, v)[1](g)
    for a, b in zip(new, old, strict=True):
        assert a.dtype == jnp.bfloat16
        scale = float(jnp.max(jnp.abs(b.astype(jnp.float32))))
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=0.02 * scale)
