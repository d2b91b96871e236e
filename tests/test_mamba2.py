"""Mamba2 (SSD): the chunked scan and a whole mixer layer against sequential NumPy recurrences.

(The whole model's independence of the chunk length is tested in test_models.py, on its fixture.)
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp
import numpy as np
import pytest

from tgmm_jax.models import model_config
from tgmm_jax.models.mamba2 import Mamba2Mixer, ssd_chunked


def _ssd_sequential(x, log_decay, b, c):
    """state_t = exp(a_t) state_{t-1} + x_t b_t^T; y_t = state_t c_t, one step at a time (float64)."""
    batch, n, h, p = x.shape
    state = np.zeros((batch, h, p, b.shape[-1]))
    ys = []
    for t in range(n):
        state = np.exp(log_decay[:, t])[:, :, None, None] * state + x[:, t, :, :, None] * b[:, t, :, None, :]
        ys.append(np.einsum("bhps,bhs->bhp", state, c[:, t]))
    return np.stack(ys, axis=1)


def _random_ssd_inputs(seed, batch=2, n=11, h=3, p=4, s=5):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(batch, n, h, p)),
        -rng.uniform(0.0, 1.5, size=(batch, n, h)),
        rng.normal(size=(batch, n, h, s)),
        rng.normal(size=(batch, n, h, s)),
    )


@pytest.mark.parametrize("chunk", [1, 4, 16])  # one step per chunk; 3 chunks, padded tail; one chunk
def test_chunked_scan_equals_sequential_recurrence(chunk):
    inputs = _random_ssd_inputs(chunk)
    expected = _ssd_sequential(*inputs)
    got = jax.jit(ssd_chunked, static_argnums=4)(*(jnp.asarray(a, jnp.float32) for a in inputs), chunk)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_chunked_scan_gradients_are_finite():
    inputs = tuple(jnp.asarray(a, jnp.float32) for a in _random_ssd_inputs(0))
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(ssd_chunked(*a, 4) ** 2), argnums=(0, 1, 2, 3)))(*inputs)
    for g in grads:
        assert np.all(np.isfinite(g)) and np.any(g != 0)


def _silu(v):
    return v / (1.0 + np.exp(-v))


def _mixer_numpy(p, x, heads, head_dim, state, groups, conv):
    """One Mamba2 mixer layer from the equations, sequential in time, float64."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    batch, n, _ = x.shape
    inner = heads * head_dim
    proj = x @ p["in_proj"]["kernel"]
    z, xbc, dt = proj[..., :inner], proj[..., inner : 2 * inner + 2 * groups * state], proj[..., -heads:]
    conv_out = np.zeros_like(xbc)
    for t in range(n):
        for j in range(conv):
            src = t - (conv - 1) + j
            if src >= 0:
                conv_out[:, t] += p["conv_weight"][j] * xbc[:, src]
    xbc = _silu(conv_out + p["conv_bias"])
    xs = xbc[..., :inner].reshape(batch, n, heads, head_dim)
    bb = xbc[..., inner : inner + groups * state].reshape(batch, n, groups, state)
    cc = xbc[..., inner + groups * state :].reshape(batch, n, groups, state)
    dt = np.log1p(np.exp(dt + p["dt_bias"]))
    a = -np.exp(p["A_log"])
    y = np.zeros((batch, n, heads, head_dim))
    for h in range(heads):
        g = h // (heads // groups)
        s = np.zeros((batch, head_dim, state))
        for t in range(n):
            s = (
                np.exp(dt[:, t, h] * a[h])[:, None, None] * s
                + (dt[:, t, h, None] * xs[:, t, h])[:, :, None] * bb[:, t, g, None, :]
            )
            y[:, t, h] = np.einsum("bps,bs->bp", s, cc[:, t, g]) + p["D"][h] * xs[:, t, h]
    y = y.reshape(batch, n, inner) * _silu(z)
    y = y.reshape(batch, n, groups, inner // groups)
    y = y / np.sqrt(np.mean(y**2, axis=-1, keepdims=True) + 1e-5)
    y = y.reshape(batch, n, inner) * p["norm"]
    return y @ p["out_proj"]["kernel"]


@pytest.mark.slow
def test_mixer_layer_equals_sequential_numpy_reference():
    config = model_config(
        "tiny",
        backbone="mamba2",
        width=16,
        backbone_options={"heads": 4, "groups": 2, "state": 3, "chunk": 4},
    )
    mixer = Mamba2Mixer(config)
    x = jax.random.normal(jax.random.key(0), (2, 10, 16))
    # Random weights of the init's shapes (no init compile), so that D, the norms and A are not trivial too.
    rng = np.random.default_rng(2)
    shapes = jax.eval_shape(mixer.init, jax.random.key(1), x)
    params = jax.tree.map(lambda a: rng.normal(0.0, 0.5, a.shape).astype(np.float32), shapes)
    got = jax.jit(mixer.apply)(params, x)
    expected = _mixer_numpy(
        params["params"], np.asarray(x, np.float64), 4, 16, 3, 2, config.backbone_options.conv
    )
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
