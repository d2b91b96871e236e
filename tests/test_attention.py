"""The attention core with the hand-written backward (gpt2.attention) against a NumPy forward and the
autodiff of the plain formulation (gpt2.plain_attention), with padding and causal masks, float32 and bf16,
over the whole batch at once and in a loop of one-task chunks (the CPU path)."""

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
    return q, k, v, g, point_mask_BxN


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


# _CHUNK_SCORES of one task's scores (H * N * N = 98): three chunks of one task each, the loop on CPU
CHUNKINGS = {"whole_batch": None, "one_task_per_chunk": H * N * N}


@pytest.fixture(params=list(CHUNKINGS))
def chunking(request, monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 1)  # chunks count per device; these inputs are unsharded
    if CHUNKINGS[request.param] is not None:
        monkeypatch.setattr(gpt2, "_CHUNK_SCORES", CHUNKINGS[request.param])
    expected = B if CHUNKINGS[request.param] is not None and jax.default_backend() == "cpu" else 1
    assert gpt2.attention_chunks(B, H, N) == expected
    return request.param


def test_chunks_divide_each_devices_share_and_hold_about_a_mebibyte_of_scores(monkeypatch):
    if jax.default_backend() != "cpu":
        assert gpt2.attention_chunks(256, 2, 128) == 1
        return
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert gpt2.attention_chunks(256, 2, 128) == 32  # 8 tasks x 2 heads x 128 x 128 = 2^18 scores
    assert gpt2.attention_chunks(256, 4, 128) == 64
    assert gpt2.attention_chunks(100, 2, 128) == 10  # 12 chunks do not divide 100: 10 chunks of 10 tasks
    assert gpt2.attention_chunks(7, 2, 128) == 1  # fewer tasks than one chunk holds
    assert gpt2.attention_chunks(5, 1, 1024) == 5  # one task's scores exceed a chunk: one task each
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    assert gpt2.attention_chunks(256, 2, 128) == 4  # 32 tasks per device, 8 per device and chunk
    assert gpt2.attention_chunks(12, 2, 128) == 1  # the batch does not split evenly over the devices


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.slow
def test_forward_matches_numpy_and_plain(causal, chunking):
    q, k, v, _, point_mask = _inputs(causal)
    ref = _numpy_attention(q, k, v, np.asarray(point_mask), causal)
    out = gpt2.attention(q, k, v, point_mask, causal)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    plain = gpt2.plain_attention(q, k, v, point_mask, causal)
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.slow
def test_gradients_equal_autodiff_of_plain(causal, chunking):
    q, k, v, g, point_mask = _inputs(causal)
    _, vjp_new = jax.vjp(lambda *a: gpt2.attention(*a, point_mask, causal), q, k, v)
    _, vjp_old = jax.vjp(lambda *a: gpt2.plain_attention(*a, point_mask, causal), q, k, v)
    for new, old in zip(vjp_new(g), vjp_old(g), strict=True):
        assert float(jnp.max(jnp.abs(old))) > 0.1  # not a vacuous comparison
        np.testing.assert_allclose(np.asarray(new), np.asarray(old), atol=1e-5, rtol=1e-5)
    # and both against the old formulation (where() on the logits instead of an additive bias)
    allowed = gpt2.attention_mask(point_mask, causal)

    def masked_where(q, k, v):
        logits = jnp.einsum("bhqf,bhkf->bhqk", q, k) / np.sqrt(F)
        probs = jax.nn.softmax(jnp.where(allowed[:, None], logits, -1e30), axis=-1)
        return jnp.einsum("bhqk,bhkf->bhqf", probs, v)

    grads_where = jax.vjp(masked_where, q, k, v)[1](g)
    for new, old in zip(vjp_new(g), grads_where, strict=True):
        np.testing.assert_allclose(np.asarray(new), np.asarray(old), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_gradient_is_exact_by_finite_differences(chunking):
    """Directional derivative of <g, attention> against a central difference in float64-free terms."""
    q, k, v, g, point_mask = _inputs(causal=True)
    dq, dk, dv = jax.vjp(lambda *a: gpt2.attention(*a, point_mask, True), q, k, v)[1](g)
    dirs = [jax.random.normal(jax.random.key(i), q.shape) for i in range(3)]
    eps = 1e-2

    def f(s):
        return float(
            jnp.sum(g * gpt2.attention(q + s * dirs[0], k + s * dirs[1], v + s * dirs[2], point_mask, True))
        )

    numeric = (f(eps) - f(-eps)) / (2 * eps)
    analytic = float(sum(jnp.sum(d * t) for d, t in zip((dq, dk, dv), dirs, strict=True)))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3)


@pytest.mark.slow
def test_bfloat16_gradients_follow_plain():
    q, k, v, g, point_mask = _inputs(causal=False, dtype=jnp.bfloat16)
    out = gpt2.attention(q, k, v, point_mask, False)
    assert out.dtype == jnp.bfloat16
    new = jax.vjp(lambda *a: gpt2.attention(*a, point_mask, False), q, k, v)[1](g)
    old = jax.vjp(lambda *a: gpt2.plain_attention(*a, point_mask, False), q, k, v)[1](g)
    for a, b in zip(new, old, strict=True):
        assert a.dtype == jnp.bfloat16
        scale = float(jnp.max(jnp.abs(b.astype(jnp.float32))))
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=0.02 * scale)
