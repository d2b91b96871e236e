"""tgmm_jax.theory: the constructed weights compute T(I, v, v) (vs NumPy and baselines.spectral) and EM steps
(vs tgmm_jax.refine.em_refine); perturbing any weight the construction uses changes the result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from baselines import spectral
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.refine import em_refine
from tgmm_jax.tasks import TaskSpec, sample_tasks
from tgmm_jax.theory import blocks, em, power

TOL = 1e-5


def _points(d, n=64, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (n, d)) + 2.0 * jax.random.normal(k2, (1, d))


def _unit(d, seed):
    v = jax.random.normal(jax.random.key(seed), (d,))
    return v / jnp.linalg.norm(v)


def _numpy_update(tensor, v):
    t, v = np.asarray(tensor, np.float64), np.asarray(v, np.float64)
    return np.einsum("ijm,j,m->i", t, v, v)


def _whitened(points, k):
    n = points.shape[0]
    return spectral.whitened_moments(points[None], jnp.ones((1, n), bool), jnp.array([k]), k)


def _baseline_update(m, theta):
    """baselines.spectral's explicit and implicit power updates (no deflation) at theta."""
    k = theta.shape[0]
    th = theta[:, None, None]
    explicit = spectral._explicit_update(jnp.transpose(m.tensor_BxKxKxK, (1, 2, 3, 0)))(th)[:, 0, 0]
    implicit = spectral._implicit_update(m, jnp.zeros((k, 1, k)), jnp.zeros((k, 1)))(th)[:, 0, 0]
    return explicit, implicit


@pytest.mark.parametrize("d", [2, 5, 8])
@pytest.mark.slow
def test_power_constructions_equal_empirical_third_moment_update(d):
    x = _points(d, seed=d)
    tensor = jnp.einsum("ni,nj,nk->ijk", x, x, x) / x.shape[0]
    for seed in range(3):
        v = _unit(d, 10 + seed)
        ref = _numpy_update(tensor, v)
        by_slices = power.power_update_slice(power.slice_params(d), tensor, v)
        by_points = power.power_update_data(power.data_params(d), power.point_pieces(x), v)
        assert np.max(np.abs(by_slices - ref)) <= TOL * max(1.0, np.abs(ref).max())
        assert np.max(np.abs(by_points - ref)) <= TOL * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize(("d", "k"), [(2, 2), (5, 3), (8, 4)])
@pytest.mark.slow
def test_power_constructions_equal_spectral_whitened_update(d, k):
    m = _whitened(_points(d, seed=d), k)
    pieces = power.whitened_pieces(m.whitened_BxNxK[0], m.a_BxK[0], m.gram_BxKxK[0])
    for seed in range(3):
        theta = jax.random.uniform(jax.random.key(seed), (k,))  # tensorly's init: U[0, 1)^K
        explicit, implicit = _baseline_update(m, theta)
        scale = max(1.0, float(jnp.abs(explicit).max()))
        by_slices = power.power_update_slice(power.slice_params(k), m.tensor_BxKxKxK[0], theta)
        by_points = power.power_update_data(power.data_params(k), pieces, theta)
        for got in (by_slices, by_points):
            assert np.max(np.abs(got - explicit)) <= TOL * scale
            assert np.max(np.abs(got - implicit)) <= TOL * scale


@pytest.mark.slow
def test_power_iteration_by_construction_follows_baseline():
    """30 normalised updates by the one-layer construction track baselines.spectral's power iterate."""
    m = _whitened(_points(6, seed=3), 3)
    tensor = m.tensor_BxKxKxK[0]
    params = power.slice_params(3)
    theta = jax.random.uniform(jax.random.key(1), (3,))
    ref = theta[:, None, None]
    update = spectral._explicit_update(jnp.transpose(m.tensor_BxKxKxK, (1, 2, 3, 0)))
    for _ in range(30):
        theta = power.power_update_slice(params, tensor, theta)
        theta = theta / jnp.linalg.norm(theta)
        ref = spectral._normalise(update(ref))
    assert np.max(np.abs(theta - ref[:, 0, 0])) <= 1e-4


def _nonzero_entries(params):
    """(path, index) of every nonzero weight entry."""
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        for idx in zip(*np.nonzero(np.asarray(leaf)), strict=True):
            out.append((path, tuple(int(i) for i in idx)))
    return out


def _perturbed(params, path, idx, factor=1.5):
    def edit(p, leaf):
        return leaf.at[idx].multiply(factor) if p == path else leaf

    return jax.tree_util.tree_map_with_path(edit, params)


def _assert_every_entry_matters(fn, params, entries, tol):
    base = np.asarray(fn(params))
    unchanged = []
    for path, idx in entries:
        if np.max(np.abs(np.asarray(fn(_perturbed(params, path, idx))) - base)) <= tol:
            unchanged.append((jax.tree_util.keystr(path), idx))
    assert not unchanged, (
        f"{len(unchanged)} of {len(entries)} perturbed weights left the result: {unchanged[:5]}"
    )


@pytest.mark.slow
def test_power_weights_perturbed_change_the_update():
    d = 3
    x = _points(d, seed=1)
    tensor = jnp.einsum("ni,nj,nk->ijk", x, x, x) / x.shape[0]
    v = _unit(d, 2)
    slice_tokens = power.slice_tokens(tensor, v)
    data_tokens = power.data_tokens(power.point_pieces(x), v)
    by_slices = jax.jit(lambda p: power.slice_apply(p, slice_tokens, d))
    by_points = jax.jit(lambda p: power.data_apply(p, data_tokens, d)[0])
    for fn, params in ((by_slices, power.slice_params(d)), (by_points, power.data_params(d))):
        entries = _nonzero_entries(params)
        assert len(entries) >= 5 * d
        _assert_every_entry_matters(fn, params, entries, tol=1e-3)


def _em_task(d, k, n=64, seed=0):
    task = sample_tasks(jax.random.key(seed), TaskSpec(dim=d, ks=(k,), n_max=n, variable_n=False), 1)
    x = task.points[0]
    return task, x, jnp.full((k,), 1.0 / k), x[:k]


def _em_truth(task, w0, m0, steps):
    k = w0.shape[0]
    init = MixtureParams(w0[None], m0[None], None, jnp.ones((1, k), bool))
    ref = em_refine(task.points, task.point_mask, init, steps)
    return ref.weights[0], ref.means[0]


@pytest.mark.parametrize(("d", "k"), [(2, 2), (4, 3), (8, 4)])
@pytest.mark.slow
def test_em_construction_with_exact_nonlinearities_is_em(d, k):
    task, x, w0, m0 = _em_task(d, k, seed=d)
    for steps in (1, 5):
        w_ref, m_ref = _em_truth(task, w0, m0, steps)
        w, m = em.transformer_em(em.em_params(d, k, steps, width=None), x, w0, m0)
        assert np.max(np.abs(m - m_ref)) <= 1e-5 * max(1.0, float(jnp.abs(m_ref).max()))
        assert np.max(np.abs(w - w_ref)) <= 1e-5


@pytest.mark.parametrize("width", [None, 32])
@pytest.mark.slow
def test_one_em_construction_serves_every_smaller_d_and_k(width):
    """Weights built for (D0, K0) = (5, 4) on a D = 3, K = 2 task give the weights built for (3, 2)."""
    _, x, w0, m0 = _em_task(3, 2, seed=11)
    small = em.transformer_em(em.em_params(3, 2, 3, width=width), x, w0, m0)
    big = em.transformer_em(em.em_params(5, 4, 3, width=width), x, w0, m0, d_max=5, k_max=4)
    for a, b in zip(small, big, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceed"):
        em.em_tokens(x, w0, m0, d_max=2, k_max=4)


@pytest.mark.slow
def test_em_construction_error_shrinks_with_width():
    d, k = 4, 3
    task, x, w0, m0 = _em_task(d, k, seed=7)
    w_ref, m_ref = _em_truth(task, w0, m0, 1)
    errors = []
    for width in (8, 32, 128):
        w, m = em.transformer_em(em.em_params(d, k, 1, width=width), x, w0, m0)
        errors.append(float(jnp.maximum(jnp.abs(m - m_ref).max(), jnp.abs(w - w_ref).max())))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01


@pytest.mark.slow
def test_mlp_interpolants_match_their_functions():
    r = jnp.geomspace(1e-3, 1.0, 200)
    assert np.max(np.abs(em.approx_log(r, 256, 1e-3) - np.log(r))) < 1e-3
    assert float(em.approx_log(0.0, 256, 1e-3)) == pytest.approx(np.log(1e-3) - 20.0, rel=1e-6)
    z = jnp.linspace(-12.0, 12.0, 101)
    # interpolation error (h / 2)^2 with knot spacing h, plus float32 rounding of values up to 144
    assert np.max(np.abs(em.approx_square(z, 256, 12.0) - z**2)) <= (12.0 / 256) ** 2 / 4 + 1e-4
    assert float(em.approx_square(0.0, 256, 12.0)) == 0.0


@pytest.mark.slow
def test_em_mlp_weights_compute_the_interpolants():
    """Layer 1's MLP on a token with responsibilities r writes approx_log(r) (points) and 0 (components)."""
    d, k, width = 2, 3, 16
    step = em.em_step_params(d, k, width=width)
    lay = em.em_layout(d, k)
    r = jnp.array([0.7, 0.2999, 1e-4])
    tok = jnp.zeros((2, lay.width)).at[:, jnp.array(lay["resp"])].set(r).at[0, lay["one"][0]].set(1.0)
    tok = tok.at[1, jnp.array(lay["resp"])].set(0.0)
    out = blocks.mlp(step["layer1"]["mlp"], tok)[:, jnp.array(lay["logresp"])]
    # float32: the first ramps have slopes ~ 1 / floor, so values carry rounding ~ eps r / floor
    np.testing.assert_allclose(out[0], em.approx_log(r, width, 1e-3), rtol=0, atol=5e-4)
    np.testing.assert_array_equal(out[1], 0.0)


def _used_units(hidden_TxF, types_T):
    """Per unit: (activation varies over the tokens of some type, kink inside them: active on some, not all).

    A unit whose activation is the same on every token of each type (the log MLPs' gate units) only shifts
    a logit slot by a constant, which the softmax ignores; a bias change on a unit active on every token of
    a type shifts its output by a constant too. Those weights are not tested.
    """
    varies = np.zeros(hidden_TxF.shape[1], bool)
    kink = np.zeros(hidden_TxF.shape[1], bool)
    for t in (em.POINT, em.COMPONENT):
        h = np.asarray(hidden_TxF)[np.asarray(types_T) == t]
        varies |= (h.max(0) - h.min(0)) > 1e-3
        kink |= (h > 1e-3).any(0) & ~(h > 1e-3).all(0)
    return varies, kink


@pytest.mark.slow
def test_em_weights_perturbed_change_the_result():
    """Every nonzero attention entry of step 1, and every MLP entry of a unit the input exercises, matters."""
    d, k, width = 2, 2, 8
    # Overlapping components (soft responsibilities): a well-separated task saturates r at 0 / 1, where a
    # perturbed E-step weight changes nothing measurable.
    noise = jax.random.normal(jax.random.key(3), (32, d))
    x = noise + jnp.where(jnp.arange(32)[:, None] % 2 == 0, 0.75, -0.75) * jnp.array([1.0, 0.0])[None, :]
    w0, m0 = jnp.array([0.4, 0.6]), x[:k]
    params = em.em_params(d, k, 2, width=width)
    tokens, types = em.em_tokens(x, w0, m0)

    @jax.jit
    def run(p):
        w, m = em.em_readout(em.em_apply(p, tokens, types, d, k), types, d, k)
        return jnp.concatenate([w, m.ravel()])

    # The inputs of step 1's two MLPs, to find the units this task exercises.
    masks = {
        1: em._mask(types, em.POINT, em.COMPONENT)[None],
        2: jnp.stack([em._mask(types, em.COMPONENT, em.POINT), em._mask(types, em.POINT, em.POINT)]),
    }
    h, used = tokens, {}
    for layer in (1, 2):
        block = params[0][f"layer{layer}"]
        h = blocks.attention(block["attn"], h, "softmax", masks[layer])
        used[layer] = _used_units(jax.nn.relu(h @ block["mlp"]["w1"] + block["mlp"]["b1"][None, :]), types)
        h = blocks.mlp(block["mlp"], h)

    entries = []
    for path, idx in _nonzero_entries(params[0]):
        names = [p.key for p in path]
        if names[1] == "mlp":
            varies, kink = used[int(names[0][-1])]
            unit = idx[0] if names[2] == "w2" else idx[-1]
            if not (kink[unit] if names[2] == "b1" else varies[unit]):
                continue
        entries.append(((jax.tree_util.SequenceKey(0), *path), idx))
    assert len(entries) > 50
    _assert_every_entry_matters(run, params, entries, tol=1e-5)
