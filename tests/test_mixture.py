"""tgmm_jax.mixture: the E-step, M-steps and log-likelihood against scikit-learn and NumPy closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from tgmm_jax import mixture
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.mixture import fused, seeding

jax.config.update("jax_numpy_rank_promotion", "raise")


def _problem(seed, covariance_type, n=60, d=3, k=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 2.0
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(size=(k, d)) * 2.0
    if covariance_type == "spherical":
        cov = rng.uniform(0.5, 2.0, k)
        var_KxD = np.repeat(cov[:, None], d, axis=1)
    else:
        cov = rng.uniform(0.5, 2.0, (k, d))
        var_KxD = cov
    gm = GaussianMixture(k, covariance_type=covariance_type)
    gm.weights_, gm.means_, gm.covariances_ = weights, means, cov
    gm.precisions_cholesky_ = 1.0 / np.sqrt(cov)
    return X, gm, var_KxD


def _padded(X, gm, var_KxD, extra_points=5, extra_components=2):
    """The problem with padded points (holding garbage) and padded components, as jnp float32."""
    n, d = X.shape
    k = gm.means_.shape[0]
    points = np.concatenate([X, np.full((extra_points, d), 1e3)])
    mask = np.arange(n + extra_points) < n
    params = MixtureParams(
        jnp.asarray(np.concatenate([gm.weights_, np.zeros(extra_components)]), jnp.float32),
        jnp.asarray(np.concatenate([gm.means_, np.full((extra_components, d), 7.0)]), jnp.float32),
        jnp.asarray(np.sqrt(np.concatenate([var_KxD, np.ones((extra_components, d))])), jnp.float32),
        jnp.asarray(np.arange(k + extra_components) < k),
    )
    return jnp.asarray(points, jnp.float32), jnp.asarray(mask), params


@pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
@pytest.mark.slow
def test_log_likelihood_and_m_step_match_sklearn_and_closed_forms(covariance_type):
    X, gm, var_KxD = _problem(0, covariance_type)
    points, mask, params = _padded(X, gm, var_KxD)
    k = gm.means_.shape[0]
    np.testing.assert_allclose(float(mixture.log_likelihood(points, mask, params)), gm.score(X), rtol=1e-5)

    stats = mixture.statistics(points, mask, params)
    resp_NxK = gm.predict_proba(X)  # sklearn's E-step
    np.testing.assert_allclose(np.asarray(stats.mass)[:k], resp_NxK.sum(0), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(stats.mass)[k:], 0.0)
    np.testing.assert_allclose(float(stats.log_likelihood), gm.score_samples(X).sum(), rtol=1e-5)

    new = mixture.m_step(stats, jnp.float32(X.shape[0]), params.component_mask, covariance_type)
    nk = resp_NxK.sum(0)
    means = resp_NxK.T @ X / nk[:, None]
    dev_KxD = np.stack([(resp_NxK[:, j : j + 1] * (X - means[j]) ** 2).sum(0) / nk[j] for j in range(k)])
    var = dev_KxD.mean(1, keepdims=True) if covariance_type == "spherical" else dev_KxD
    np.testing.assert_allclose(np.asarray(new.weights)[:k], nk / X.shape[0], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(new.means)[:k], means, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(new.scales)[:k] ** 2, np.broadcast_to(var + mixture.VARIANCE_REG, means.shape), rtol=1e-4
    )
    assert np.all(np.asarray(new.weights)[k:] == 0) and np.all(np.asarray(new.scales)[k:] == 1)

    # sklearn's own M-step from the same responsibilities (its EM update) gives the same mixture
    ref = GaussianMixture(k, covariance_type=covariance_type, reg_covar=mixture.VARIANCE_REG)
    ref.weights_, ref.means_, ref.covariances_ = gm.weights_, gm.means_, gm.covariances_
    ref.precisions_cholesky_ = gm.precisions_cholesky_
    ref._m_step(X, np.log(np.maximum(resp_NxK, 1e-300)))
    ref_var = ref.covariances_[:, None] if covariance_type == "spherical" else ref.covariances_
    np.testing.assert_allclose(
        np.asarray(new.scales)[:k] ** 2, np.broadcast_to(ref_var, means.shape), rtol=1e-4
    )
    np.testing.assert_allclose(np.asarray(new.means)[:k], ref.means_, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
@pytest.mark.slow
def test_variance_step_holds_means_and_weights(covariance_type):
    X, gm, var_KxD = _problem(1, covariance_type)
    points, mask, params = _padded(X, gm, var_KxD)
    k = gm.means_.shape[0]
    out = mixture.variance_step(points, mask, params, covariance_type)
    np.testing.assert_array_equal(np.asarray(out.means), np.asarray(params.means))
    np.testing.assert_array_equal(np.asarray(out.weights), np.asarray(params.weights))
    resp_NxK = gm.predict_proba(X)
    dev_KxD = np.stack(
        [(resp_NxK[:, j : j + 1] * (X - gm.means_[j]) ** 2).sum(0) / resp_NxK[:, j].sum() for j in range(k)]
    )
    var = dev_KxD.mean(1, keepdims=True) if covariance_type == "spherical" else dev_KxD
    np.testing.assert_allclose(
        np.asarray(out.scales)[:k] ** 2, np.broadcast_to(var + mixture.VARIANCE_REG, dev_KxD.shape), rtol=1e-4
    )


@pytest.mark.slow
def test_em_steps_reach_sklearns_fixed_point():
    rng = np.random.default_rng(2)
    centres = np.array([[-6.0, 0.0], [0.0, 5.0], [6.0, 0.0]])
    sd = np.array([0.5, 1.0, 2.0])
    y = np.arange(600) % 3
    X = centres[y] + sd[y, None] * rng.standard_normal((600, 2))
    gm = GaussianMixture(3, covariance_type="spherical", tol=1e-10, max_iter=500, random_state=0).fit(X)
    order = np.argsort(gm.means_[:, 0])
    start = MixtureParams(
        jnp.full((3,), 1.0 / 3), jnp.asarray(centres, jnp.float32), jnp.ones((3, 2)), jnp.ones(3, bool)
    )
    points, mask = jnp.asarray(X, jnp.float32), jnp.ones(600, bool)
    p = start
    for _ in range(60):
        p = mixture.em_step(points, mask, p, "spherical")
    np.testing.assert_allclose(np.asarray(p.means), gm.means_[order], atol=2e-3)
    np.testing.assert_allclose(np.asarray(p.scales)[:, 0] ** 2, gm.covariances_[order], rtol=2e-3)
    np.testing.assert_allclose(np.asarray(p.weights), gm.weights_[order], atol=2e-3)
    iso = mixture.em_step(points, mask, start.replace(scales=None), "isotropic")
    assert iso.scales is None


def test_bad_covariance_type():
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        mixture.variances_of(jnp.ones((2, 3)), "full")


@pytest.mark.parametrize("covariance_type", ["isotropic", "diag"])
def test_fused_chunk_step_matches_sklearn(covariance_type):
    """``mixture.fused`` (centred features, one matmul per step, a reduced log-likelihood plus its offset), the
    second arithmetic form of the E-step, against scikit-learn: its responsibilities are GaussianMixture's
    ``predict_proba``, its log-likelihood ``score``, and its M-step the NumPy update of sklearn's
    responsibilities, with padded points and components."""
    X, gm, var_KxD = _problem(3, "diag")
    learn = covariance_type == "diag"
    if not learn:  # unit variance: sklearn's diagonal mixture with every variance 1
        var_KxD = np.ones_like(var_KxD)
        gm.covariances_, gm.precisions_cholesky_ = var_KxD, np.ones_like(var_KxD)
    points, mask, params = _padded(X, gm, var_KxD)
    data = fused.prepare_chunk(points[None], mask[None], learn)
    centre_D = data.centre_CxD[0]
    state = fused.FitState(
        params.weights[None, None],
        (params.means - centre_D[None])[None, None],
        jnp.square(params.scales)[None, None] if learn else None,
    )
    resp, reduced_CxR = fused.e_step(data, state, params.component_mask[None])
    n, k = X.shape[0], gm.means_.shape[0]
    loglik = reduced_CxR[0, 0] + fused.log_likelihood_offset(data, learn)[0]
    np.testing.assert_allclose(float(loglik), gm.score(X), rtol=1e-5)
    resp_KxN = np.asarray(resp[0, 0])
    resp_NxK = gm.predict_proba(X)
    np.testing.assert_allclose(resp_KxN[:k, :n].T, resp_NxK, atol=1e-5)
    assert np.all(resp_KxN[k:] == 0) and np.all(resp_KxN[:, n:] == 0)  # padded components and points

    new = fused.m_step(data, resp, learn)
    nk = resp_NxK.sum(0)
    means = resp_NxK.T @ X / nk[:, None]
    np.testing.assert_allclose(np.asarray(new.weights_CxRxK[0, 0, :k]), nk / n, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new.weights_CxRxK[0, 0, k:]), 0.0)
    np.testing.assert_allclose(
        np.asarray(new.means_CxRxKxD[0, 0, :k] + centre_D[None]), means, rtol=1e-4, atol=1e-4
    )
    if learn:
        var = (
            np.stack([resp_NxK[:, j] @ (X - means[j]) ** 2 / nk[j] for j in range(k)]) + mixture.VARIANCE_REG
        )
        np.testing.assert_allclose(np.asarray(new.variances_CxRxKxD[0, 0, :k]), var, rtol=1e-4)
    else:
        assert new.variances_CxRxKxD is None


def test_kmeanspp_seeding_takes_one_real_point_per_separated_blob():
    """Greedy k-means++ (sklearn's rule) on 3 tight, far-apart blobs: every restart seeds one real point in
    each blob, and the hard-partition M-step gives each blob's mean and share; the draws' shape is checked."""
    rng = np.random.default_rng(4)
    centres = np.array([[-50.0, 0.0], [0.0, 50.0], [50.0, 0.0]])
    y = np.repeat(np.arange(3), [10, 20, 30])
    X = centres[y] + 0.1 * rng.standard_normal((60, 2))
    points = jnp.asarray(np.concatenate([X, np.full((4, 2), 1e3)]), jnp.float32)[None]  # 4 padded points
    mask = jnp.asarray(np.arange(64) < 60)[None]
    data = fused.prepare_chunk(points, mask, False)
    num_fits, k_max = 5, 4  # K_max 4, the task's K 3
    u = jax.random.uniform(
        jax.random.key(0), (1, num_fits, k_max, seeding.kmeanspp_trials(k_max)), minval=1e-7
    )
    k_C, comp_CxK = jnp.array([3]), jnp.asarray(np.arange(k_max) < 3)[None]
    idx_RxK = np.asarray(seeding.kmeans_plusplus_indices(u, data, k_C))[0]
    for r in range(num_fits):
        assert np.all(idx_RxK[r, :3] < 60) and sorted(y[idx_RxK[r, :3]]) == [0, 1, 2]
    state = seeding.kmeanspp_state(u, data, k_C, comp_CxK, False)
    blob_means = np.stack([X[y == j].mean(0) for j in range(3)])
    for r in range(num_fits):
        means_KxD = np.asarray(state.means_CxRxKxD[0, r, :3] + data.centre_CxD)
        order = np.argsort(means_KxD[:, 0])  # blobs 0, 1, 2 lie left to right
        np.testing.assert_allclose(means_KxD[order], blob_means, atol=1e-4)
        np.testing.assert_allclose(np.asarray(state.weights_CxRxK[0, r, :3])[order], [1 / 6, 1 / 3, 1 / 2])
        assert float(state.weights_CxRxK[0, r, 3]) == 0.0
    with pytest.raises(ValueError, match="trials per step"):
        seeding.kmeans_plusplus_indices(u[..., :1], data, k_C)
