"""The likelihood evidence over K (tgmm_jax/k_evidence.py) and the K posterior that reads it.

References: the log-likelihood of the returned mixture recomputed with scipy, one EM step of a NumPy
tied-spherical EM, the true parameters' likelihood, and the closed form of K = 1."""

import jax
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from experiments.train_k_posterior import merge_params
from tgmm_jax import k_evidence
from tgmm_jax.models.k_posterior import KPosterior, fit_geometry, k_posterior_config
from tgmm_jax.number_of_components import load_k_posterior, posterior_over_k, save_k_posterior

K_MAX = 4
pytestmark = pytest.mark.slow  # each test compiles EM fits over K (and a K posterior): seconds each


def _tasks(seed=0, b=3, n=40, d=2, sep=6.0):
    """b tasks of K = 3 well-separated unit-variance components (n points each, the last 5 padded)."""
    rng = np.random.default_rng(seed)
    centres = sep * np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    centres = np.pad(centres, ((0, 0), (0, d - 2)))
    labels = rng.integers(0, 3, (b, n))
    x = centres[labels] + rng.standard_normal((b, n, d))
    mask = np.ones((b, n), bool)
    mask[:, -5:] = False
    return x.astype(np.float32), mask, labels


def _fits(x, mask, key=None, restarts=3, steps=40):
    key = x[..., 0] if key is None else key
    return jax.jit(k_evidence.best_fits, static_argnums=(3, 4, 5))(x, mask, key, K_MAX, restarts, steps)


def _numpy_loglik(x, w, mu, var):
    """Mean log-likelihood per point of a shared-variance spherical mixture (scipy's densities)."""
    dens = np.stack(
        [np.log(wk) + multivariate_normal(m, var * np.eye(x.shape[1])).logpdf(x) for wk, m in zip(w, mu)], -1
    )
    return float(np.mean(logsumexp(dens, axis=-1)))


def _numpy_em_step(x, w, mu, var):
    d = x.shape[1]
    log_r = np.log(w) - 0.5 * ((x[:, None, :] - mu[None]) ** 2).sum(-1) / var
    r = np.exp(log_r - logsumexp(log_r, axis=1, keepdims=True))
    mass = r.sum(0)
    mu_new = (r.T @ x) / mass[:, None]
    var_new = float((r * ((x[:, None, :] - mu_new[None]) ** 2).sum(-1)).sum() / (x.shape[0] * d))
    return mass / x.shape[0], mu_new, var_new


def test_reported_loglik_is_that_of_the_returned_fit_an_em_fixed_point_above_the_truth():
    x, mask, labels = _tasks()
    out = jax.device_get(_fits(x, mask))
    for i in range(x.shape[0]):
        xi = np.asarray(out["x_BxNxD"][i])[np.asarray(out["mask_BxN"][i])].astype(np.float64)
        for k in range(1, K_MAX + 1):
            w = out["weights_BxKxK"][i, k - 1, :k].astype(np.float64)
            mu = out["means_BxKxKxD"][i, k - 1, :k].astype(np.float64)
            var = float(out["variance_BxK"][i, k - 1])
            assert np.isclose(w.sum(), 1.0, atol=1e-5) and np.all(w > 0)
            ll = _numpy_loglik(xi, w, mu, var)
            assert out["loglik_BxK"][i, k - 1] == pytest.approx(ll, abs=2e-4)
            _, mu2, var2 = _numpy_em_step(xi, w, mu, var)  # 40 steps: converged
            assert np.max(np.abs(mu2 - mu)) < 1e-3 and var2 == pytest.approx(var, rel=1e-3)
        # K = 1 in closed form: the normalised data have unit mean per-coordinate variance
        d = xi.shape[1]
        assert out["loglik_BxK"][i, 0] == pytest.approx(-0.5 * d * (np.log(2 * np.pi) + 1.0), abs=1e-4)
        # K = 3 (the truth): at least the likelihood of the true labels' partition fit (the MLE is above it)
        lab = labels[i][mask[i]]
        w_true = np.array([np.mean(lab == j) for j in range(3)])
        mu_true = np.stack([xi[lab == j].mean(0) for j in range(3)])
        var_true = float(sum(((xi[lab == j] - mu_true[j]) ** 2).sum() for j in range(3)) / xi.size)
        assert out["loglik_BxK"][i, 2] >= _numpy_loglik(xi, w_true, mu_true, var_true) - 1e-4
        assert out["loglik_BxK"][i, 2] > out["loglik_BxK"][i, 1] + 0.5  # the third component is real


def test_invariant_to_order_padding_translation_and_scale():
    x, mask, _ = _tasks(seed=1, d=3)
    base = np.asarray(_fits(x, mask)["loglik_BxK"])
    rng = np.random.default_rng(0)
    perm = rng.permutation(x.shape[1])
    permuted = np.asarray(_fits(x[:, perm], mask[:, perm])["loglik_BxK"])
    np.testing.assert_array_equal(permuted, base)
    garbage = np.concatenate([x, np.full((x.shape[0], 7, x.shape[2]), np.nan, np.float32)], 1)
    padded = np.asarray(_fits(garbage, np.pad(mask, ((0, 0), (0, 7))))["loglik_BxK"])
    np.testing.assert_allclose(padded, base, atol=1e-5)
    for c in (1e-3, 1e3):
        moved = (c * x.astype(np.float64) + 17.0 * c).astype(np.float32)
        out = np.asarray(_fits(moved, mask, key=moved[..., 0])["loglik_BxK"])
        np.testing.assert_allclose(out, base, atol=2e-4)


def test_rejects_bad_settings():
    x, mask, _ = _tasks()
    with pytest.raises(ValueError, match="restarts >= 1"):
        k_evidence.max_log_likelihood_per_k(x, mask, x[..., 0], K_MAX, 0, 10)


def _models():
    config = k_posterior_config("tiny", K_MAX)
    plain = KPosterior(config, K_MAX)
    with_evidence = KPosterior(config, K_MAX, evidence_restarts=2, evidence_steps=10)
    return plain, with_evidence


def test_evidence_model_starts_from_the_set_network_and_is_order_and_unit_free(tmp_path):
    plain, with_evidence = _models()
    x, mask, _ = _tasks(seed=2, b=4)
    p_plain = plain.init(jax.random.PRNGKey(0), x, mask)
    p_init = with_evidence.init(jax.random.PRNGKey(1), x, mask)
    merged = merge_params(p_plain, p_init, "plain")
    # zero-initialised evidence output: the merged model answers exactly as the set network
    np.testing.assert_allclose(with_evidence.apply(merged, x, mask), plain.apply(p_plain, x, mask), atol=1e-6)
    # a trained evidence head (random output weights here) changes the answer ...
    leaves = jax.tree_util.tree_leaves_with_path(merged)
    key = jax.random.PRNGKey(3)
    moved = jax.tree_util.tree_map_with_path(
        lambda p, v: jax.random.normal(key, v.shape) if "evidence_out" in jax.tree_util.keystr(p) else v,
        merged,
    )
    assert len(leaves) == len(jax.tree_util.tree_leaves(moved))
    out = np.asarray(with_evidence.apply(moved, x, mask))
    assert np.max(np.abs(out - np.asarray(plain.apply(p_plain, x, mask)))) > 1e-2
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, atol=1e-5)
    # ... and stays invariant to the points' order and units
    perm = np.random.default_rng(0).permutation(x.shape[1])
    np.testing.assert_allclose(with_evidence.apply(moved, x[:, perm], mask[:, perm]), out, atol=1e-5)
    np.testing.assert_allclose(with_evidence.apply(moved, 1e3 * x - 5.0, mask), out, atol=1e-3)
    # shipped-format round trip keeps the evidence settings
    save_k_posterior(str(tmp_path), with_evidence, moved, {"n_min": 8, "n_max": 64}, step=1)
    loaded = load_k_posterior(str(tmp_path))
    assert (loaded.model.evidence_restarts, loaded.model.evidence_steps) == (2, 10)
    xs = [x[i][mask[i]].astype(np.float64) for i in range(x.shape[0])]
    probs = posterior_over_k(loaded, xs)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.log(probs), out, atol=2e-3)


def test_merge_params_names_what_differs():
    plain, with_evidence = _models()
    x, mask, _ = _tasks(b=1)
    p_plain = plain.init(jax.random.PRNGKey(0), x, mask)
    p_ev = with_evidence.init(jax.random.PRNGKey(0), x, mask)
    bigger = KPosterior(k_posterior_config("tiny", K_MAX, width=64), K_MAX, evidence_restarts=2)
    with pytest.raises(ValueError, match="holds another model"):
        merge_params(p_plain, bigger.init(jax.random.PRNGKey(0), x, mask), "plain")
    with pytest.raises(ValueError, match="holds another model"):  # evidence layers dropped: not a start
        merge_params(p_ev, p_plain, "with evidence")
    same = merge_params(p_ev, p_ev, "itself")
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(p_ev))
    )


def test_merge_params_grows_the_backbone_deeper_as_identity_blocks():
    """A deeper network started from a shallower one answers exactly as it did (new blocks' residual outputs
    are zero) and, once those outputs move, differently; a shallower target or a missing first block is refused."""
    _, with_evidence = _models()
    x, mask, _ = _tasks(seed=4, b=3)
    layers = with_evidence.config.num_layers
    deeper = KPosterior(
        k_posterior_config("tiny", K_MAX, num_layers=layers + 2),
        K_MAX,
        evidence_restarts=2,
        evidence_steps=10,
    )
    p_src = with_evidence.init(jax.random.PRNGKey(0), x, mask)
    p_init = deeper.init(jax.random.PRNGKey(1), x, mask)
    merged = merge_params(p_src, p_init, "shallow")
    added = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(merged)
        if f"blocks_{layers}'" in jax.tree_util.keystr(p)
        or f"blocks_{layers + 1}'" in jax.tree_util.keystr(p)
    ]
    assert len(added) == 2 * 12  # two whole GPT-2 blocks were added
    np.testing.assert_allclose(deeper.apply(merged, x, mask), with_evidence.apply(p_src, x, mask), atol=1e-6)
    # the new blocks' other layers keep their random initialisation, so training can move them
    qkv = merged["params"]["backbone"][f"blocks_{layers}"]["attn"]["qkv"]["kernel"]
    assert float(np.abs(qkv).max()) > 0
    key = jax.random.PRNGKey(5)
    moved = jax.tree_util.tree_map_with_path(
        lambda p, v: (
            jax.random.normal(key, v.shape)
            if f"blocks_{layers}']['mlp']['out']" in jax.tree_util.keystr(p)
            else v
        ),
        merged,
    )
    assert np.max(np.abs(deeper.apply(moved, x, mask) - deeper.apply(merged, x, mask))) > 1e-3
    with pytest.raises(ValueError, match="holds another model"):  # blocks dropped: not a start
        merge_params(p_init, p_src, "deep")
    holed = jax.tree_util.tree_map(lambda v: v, p_src)
    del holed["params"]["backbone"]["blocks_0"]
    with pytest.raises(ValueError, match="holds another model"):  # a missing inner block is not growth
        merge_params(holed, p_src, "holed")


def test_fit_geometry_against_brute_force():
    """Each K's features recomputed by loops over the returned fit's components and pairs."""
    x, mask, _ = _tasks(seed=4, b=2)
    out = jax.device_get(_fits(x, mask))
    n_B = mask.sum(1).astype(np.float32)
    got = np.asarray(fit_geometry(out, n_B)).reshape(2, 4, K_MAX)
    for i in range(2):
        for k in range(1, K_MAX + 1):
            w = np.asarray(out["weights_BxKxK"][i, k - 1, :k], np.float64)
            mu = np.asarray(out["means_BxKxKxD"][i, k - 1, :k], np.float64)
            var = float(out["variance_BxK"][i, k - 1])
            pairs = [np.sum((mu[a] - mu[b]) ** 2) for a in range(k) for b in range(k) if a != b]
            separation = np.log1p(min(pairs) / var) if pairs else 0.0
            counts = np.maximum(n_B[i] * w, 1.0)
            want = [separation, np.log(counts.min()), np.log(var), np.log(counts).mean()]
            np.testing.assert_allclose(got[i, :, k - 1], want, rtol=1e-4, atol=1e-5)
    # a third well-separated component: at K = 3 the closest means are far apart in noise units, at K = 4 a
    # split component sits close to its twin
    assert got[:, 0, 2].min() > np.log1p(16.0) and (got[:, 0, 3] < got[:, 0, 2]).all()


def test_geometry_head_starts_from_the_evidence_model_and_is_order_and_unit_free(tmp_path):
    config = k_posterior_config("tiny", K_MAX)
    evidence = KPosterior(config, K_MAX, evidence_restarts=2, evidence_steps=10)
    geometry = KPosterior(config, K_MAX, evidence_restarts=2, evidence_steps=10, evidence_geometry=True)
    x, mask, _ = _tasks(seed=5, b=4)
    p_ev = evidence.init(jax.random.PRNGKey(0), x, mask)
    merged = merge_params(p_ev, geometry.init(jax.random.PRNGKey(1), x, mask), "evidence")
    np.testing.assert_allclose(geometry.apply(merged, x, mask), evidence.apply(p_ev, x, mask), atol=1e-6)
    key = jax.random.PRNGKey(3)
    moved = jax.tree_util.tree_map_with_path(
        lambda p, v: jax.random.normal(key, v.shape) if "geometry_out" in jax.tree_util.keystr(p) else v,
        merged,
    )
    out = np.asarray(geometry.apply(moved, x, mask))
    assert np.max(np.abs(out - np.asarray(evidence.apply(p_ev, x, mask)))) > 1e-2
    perm = np.random.default_rng(1).permutation(x.shape[1])
    np.testing.assert_allclose(geometry.apply(moved, x[:, perm], mask[:, perm]), out, atol=1e-5)
    np.testing.assert_allclose(geometry.apply(moved, 1e3 * x - 5.0, mask), out, atol=1e-3)
    save_k_posterior(str(tmp_path), geometry, moved, {"n_min": 8, "n_max": 64}, step=1)
    assert load_k_posterior(str(tmp_path)).model.evidence_geometry
    with pytest.raises(ValueError, match="evidence_restarts >= 1"):
        KPosterior(config, K_MAX, evidence_geometry=True).init(jax.random.PRNGKey(0), x, mask)
