"""tgmm_jax.mixture.missing: exact EM with missing coordinates against a NumPy reference written here (plain
loops, float64), with the complete-data entry points when nothing is missing, and against scikit-learn."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from tgmm_jax import mixture
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.mixture import missing

jax.config.update("jax_numpy_rank_promotion", "raise")

REG = 1e-6


# ----------------------------------------------------------------------------------------------------
# The NumPy reference: one point and one component at a time, float64, nothing shared with the library.


def ref_e_step(X, O, keep, w, mu, var):
    """(responsibilities [N, K], log p(x_{n,O}) [N]) over the real components (w > 0 marks them)."""
    n, _ = X.shape
    k = len(w)
    resp, log_p = np.zeros((n, k)), np.zeros(n)
    for i in range(n):
        if not keep[i]:
            continue
        lj = np.full(k, -np.inf)
        for c in range(k):
            if w[c] <= 0:
                continue
            lj[c] = np.log(w[c])
            for j in range(X.shape[1]):
                if O[i, j]:
                    lj[c] += -0.5 * (
                        (X[i, j] - mu[c, j]) ** 2 / var[c, j] + np.log(var[c, j]) + np.log(2 * np.pi)
                    )
        top = lj.max()
        log_p[i] = top + np.log(np.sum(np.exp(lj - top)))
        resp[i] = np.exp(lj - log_p[i])
    return resp, log_p


def ref_m_step(X, O, keep, resp, mu_old, var_old, covariance_type):
    """The exact EM M-step written from its definition: for a missing coordinate, E[x_j] = mu_old_kj and
    E[(x_j - mu_new_kj)^2] = var_old_kj + (mu_old_kj - mu_new_kj)^2. Points with nothing observed are left out."""
    n, d = X.shape
    k = resp.shape[1]
    n_info = keep.sum()
    w, mu, var = np.zeros(k), np.zeros((k, d)), np.zeros((k, d))
    for c in range(k):
        nk = sum(resp[i, c] for i in range(n) if keep[i])
        if nk == 0:
            continue
        w[c] = nk / n_info
        for j in range(d):
            mu[c, j] = (
                sum(resp[i, c] * (X[i, j] if O[i, j] else mu_old[c, j]) for i in range(n) if keep[i]) / nk
            )
        for j in range(d):
            total = 0.0
            for i in range(n):
                if not keep[i]:
                    continue
                if O[i, j]:
                    total += resp[i, c] * (X[i, j] - mu[c, j]) ** 2
                else:
                    total += resp[i, c] * (var_old[c, j] + (mu_old[c, j] - mu[c, j]) ** 2)
            var[c, j] = total / nk
        if covariance_type == "spherical":
            var[c, :] = var[c, :].mean()
        var[c, :] += REG
    return w, mu, var


# ----------------------------------------------------------------------------------------------------
# Problems: real points with ~30% of coordinates missing, padded points holding garbage (NaN included),
# padded components.


def _problem(seed, covariance_type, n=50, d=4, k=3, rate=0.3, extra_points=4, extra_components=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 2.0
    O = rng.uniform(size=(n, d)) >= rate
    none = ~O.any(axis=1)
    O[none, rng.integers(0, d, n)[none]] = True  # at least one observed coordinate per point
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(size=(k, d)) * 2.0
    if covariance_type == "spherical":
        var = np.repeat(rng.uniform(0.5, 2.0, k)[:, None], d, axis=1)
    elif covariance_type == "diag":
        var = rng.uniform(0.5, 2.0, (k, d))
    else:
        var = np.ones((k, d))
    points = np.concatenate([np.where(O, X, np.nan), np.full((extra_points, d), np.nan)])
    points[n:, 0] = 1e3
    point_mask = np.arange(n + extra_points) < n
    kk = k + extra_components
    params = MixtureParams(
        jnp.asarray(np.concatenate([weights, np.zeros(extra_components)]), jnp.float32),
        jnp.asarray(np.concatenate([means, np.full((extra_components, d), 7.0)]), jnp.float32),
        None
        if covariance_type == "isotropic"
        else jnp.asarray(np.sqrt(np.concatenate([var, np.ones((extra_components, d))])), jnp.float32),
        jnp.asarray(np.arange(kk) < k),
    )
    ref = dict(X=X, O=O, keep=np.ones(n, bool), w=weights, mu=means, var=var, k=k, n=n, rate=1.0 - O.mean())
    return jnp.asarray(points, jnp.float32), jnp.asarray(point_mask), params, ref


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-12))


@jax.jit
def _e_outputs(points, point_mask, params):
    return (
        missing.responsibilities(points, params),
        missing.log_joint(points, params),
        missing.statistics(points, point_mask, params),
        missing.log_likelihood(points, point_mask, params),
    )


_em_step = jax.jit(missing.em_step, static_argnums=3)


@pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
def test_e_step_and_log_likelihood_match_numpy_reference(covariance_type):
    points, point_mask, params, r = _problem(0, covariance_type)
    assert 0.25 < r["rate"] < 0.35
    resp_ref, log_p_ref = ref_e_step(r["X"], r["O"], r["keep"], r["w"], r["mu"], r["var"])
    resp, log_dens, stats, ll = _e_outputs(points, point_mask, params)
    resp = np.asarray(resp)
    n, k = r["n"], r["k"]
    np.testing.assert_allclose(resp[:n, :k], resp_ref, atol=2e-6)
    np.testing.assert_array_equal(resp[:n, k:], 0.0)
    log_dens = np.asarray(log_dens)[:n, :k]
    log_joint_ref = np.log(resp_ref) + log_p_ref[:, None]
    np.testing.assert_allclose(log_dens, log_joint_ref, rtol=2e-6, atol=2e-5)

    np.testing.assert_allclose(float(stats.log_likelihood), log_p_ref.sum(), rtol=2e-6)
    np.testing.assert_allclose(np.asarray(stats.mass)[:k], resp_ref.sum(0), rtol=2e-6)
    np.testing.assert_allclose(float(ll), log_p_ref.mean(), rtol=2e-6)


@pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
def test_m_step_matches_numpy_reference(covariance_type):
    points, point_mask, params, r = _problem(1, covariance_type)
    resp_ref, _ = ref_e_step(r["X"], r["O"], r["keep"], r["w"], r["mu"], r["var"])
    w_ref, mu_ref, var_ref = ref_m_step(
        r["X"], r["O"], r["keep"], resp_ref, r["mu"], r["var"], covariance_type
    )
    new = _em_step(points, point_mask, params, covariance_type)
    k = r["k"]
    np.testing.assert_allclose(np.asarray(new.weights)[:k], w_ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new.means)[:k], mu_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new.scales)[:k] ** 2, var_ref, rtol=1e-5)
    # padded components: weight 0, mean 0, scale 1 (the core's convention)
    np.testing.assert_array_equal(np.asarray(new.weights)[k:], 0.0)
    np.testing.assert_array_equal(np.asarray(new.means)[k:], 0.0)
    np.testing.assert_array_equal(np.asarray(new.scales)[k:], 1.0)
    assert np.all(np.isfinite(np.asarray(new.means)))


def test_observed_mask_argument_equals_nan_marking_and_batches_vmap():
    """Giving ``observed`` (missing slots holding anything) is the same as NaN marking; leading batch dims and
    vmap give each task's own result."""
    probs = [_problem(s, "diag") for s in (2, 3)]
    pts = jnp.stack([p[0] for p in probs])
    mask = jnp.stack([p[1] for p in probs])
    params = jax.tree.map(lambda *a: jnp.stack(a), *[p[2] for p in probs])
    observed = ~jnp.isnan(pts)
    garbage = jnp.where(observed, pts, 123.0)

    @jax.jit
    def steps(pts, garbage, mask, params, observed):
        by_nan = missing.em_step(pts, mask, params, "diag")
        by_mask = missing.em_step(garbage, mask, params, "diag", observed)
        by_vmap = jax.vmap(lambda x, m, p: missing.em_step(x, m, p, "diag"))(pts, mask, params)
        return by_nan, by_mask, by_vmap

    by_nan, by_mask, by_vmap = steps(pts, garbage, mask, params, observed)
    for a, b, c in zip(jax.tree.leaves(by_nan), jax.tree.leaves(by_mask), jax.tree.leaves(by_vmap)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="observed mask"):
        missing.em_step(pts, mask, params, "diag", observed[..., :2])


@pytest.mark.parametrize("covariance_type", ["isotropic", "spherical", "diag"])
def test_no_missing_values_match_the_numpy_reference_through_both_entry_points(covariance_type):
    """With every coordinate observed, the missing-data functions and the complete-data ones (``mixture``)
    both give the NumPy reference's E-step, log-likelihood and EM step."""
    points, point_mask, params, r = _problem(4, covariance_type, rate=0.0)
    n, k = r["n"], r["k"]
    points = points.at[:n].set(jnp.asarray(r["X"], jnp.float32))  # every real coordinate observed
    points = points.at[n:].set(1e3)  # padded points: garbage
    everything = np.ones_like(r["O"])
    resp_ref, log_p_ref = ref_e_step(r["X"], everything, r["keep"], r["w"], r["mu"], r["var"])
    w_ref, mu_ref, var_ref = ref_m_step(
        r["X"], everything, r["keep"], resp_ref, r["mu"], r["var"], covariance_type
    )

    @jax.jit
    def both(points, point_mask, params):
        entry_points = (
            (missing.statistics, missing.log_likelihood, missing.em_step),
            (mixture.statistics, mixture.log_likelihood, mixture.em_step),
        )
        return [
            (
                stats(points, point_mask, params),
                ll(points, point_mask, params),
                em(points, point_mask, params, covariance_type),
            )
            for stats, ll, em in entry_points
        ]

    for stats, ll, new in both(points, point_mask, params):
        np.testing.assert_allclose(np.asarray(stats.mass)[:k], resp_ref.sum(0), rtol=2e-6)
        np.testing.assert_allclose(np.asarray(stats.first)[:k], resp_ref.T @ r["X"], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(float(stats.log_likelihood), log_p_ref.sum(), rtol=2e-6)
        np.testing.assert_allclose(float(ll), log_p_ref.mean(), rtol=2e-6)
        np.testing.assert_allclose(np.asarray(new.weights)[:k], w_ref, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(new.means)[:k], mu_ref, rtol=1e-5, atol=1e-5)
        if covariance_type == "isotropic":
            assert new.scales is None
        else:
            np.testing.assert_allclose(np.asarray(new.scales)[:k] ** 2, var_ref, rtol=1e-5)


@pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
def test_variance_step_holds_the_means_and_matches_numpy(covariance_type):
    """``missing.variance_step``: the weights and means stay, and the variances are the expected squared
    deviations from the held means (a missing coordinate contributes its component's current variance)."""
    points, point_mask, params, r = _problem(6, covariance_type)
    resp_ref, _ = ref_e_step(r["X"], r["O"], r["keep"], r["w"], r["mu"], r["var"])
    dev_KxD = np.stack(
        [
            resp_ref[:, c] @ np.where(r["O"], (r["X"] - r["mu"][c]) ** 2, r["var"][c]) / resp_ref[:, c].sum()
            for c in range(r["k"])
        ]
    )
    if covariance_type == "spherical":
        dev_KxD = np.broadcast_to(dev_KxD.mean(1, keepdims=True), dev_KxD.shape)
    new = jax.jit(missing.variance_step, static_argnums=3)(points, point_mask, params, covariance_type)
    np.testing.assert_array_equal(np.asarray(new.means), np.asarray(params.means))
    np.testing.assert_array_equal(np.asarray(new.weights), np.asarray(params.weights))
    np.testing.assert_allclose(np.asarray(new.scales)[: r["k"]] ** 2, dev_KxD + REG, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(new.scales)[r["k"] :], 1.0)


@pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
def test_complete_data_step_matches_sklearn_one_iteration(covariance_type):
    """With nothing missing, one step from a fixed init is scikit-learn's GaussianMixture(max_iter=1)."""
    _, _, params, r = _problem(5, covariance_type, extra_points=0, extra_components=0)
    X, k = r["X"], r["k"]
    cov = r["var"][:, 0] if covariance_type == "spherical" else r["var"]
    gm = GaussianMixture(
        k,
        covariance_type=covariance_type,
        max_iter=1,
        weights_init=r["w"],
        means_init=r["mu"],
        precisions_init=1.0 / cov,
        reg_covar=REG,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: one iteration is the point
        gm.fit(X)
    new = _em_step(jnp.asarray(X, jnp.float32), jnp.ones(X.shape[0], bool), params, covariance_type)
    np.testing.assert_allclose(np.asarray(new.weights), gm.weights_, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new.means), gm.means_, rtol=1e-5, atol=1e-5)
    var = np.asarray(new.scales) ** 2
    np.testing.assert_allclose(
        var[:, 0] if covariance_type == "spherical" else var, gm.covariances_, rtol=1e-5
    )


@pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
def test_observed_data_log_likelihood_never_decreases_over_50_steps(covariance_type):
    points, point_mask, params, _ = _problem(6, covariance_type, n=120, rate=0.4)

    @jax.jit
    def run(params):
        def body(p, _):
            return missing.em_step(points, point_mask, p, covariance_type), missing.log_likelihood(
                points, point_mask, p
            )

        return jax.lax.scan(body, params, None, length=50)[1]

    ll = np.asarray(run(params), np.float64)
    assert np.all(np.isfinite(ll))
    # float32: a converged log-likelihood of order -7 moves by rounding only (~1e-6)
    assert np.min(np.diff(ll)) > -2e-6, np.diff(ll).min()
    assert ll[-1] > ll[0] + 0.1


@pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
def test_point_with_nothing_observed_gets_prior_responsibilities_and_moves_nothing(covariance_type):
    points, point_mask, params, r = _problem(7, covariance_type)
    n = r["n"]
    empty = points.at[n].set(jnp.nan)  # the first padded point becomes a real point with nothing observed
    empty_mask = point_mask.at[n].set(True)
    resp, _, stats_empty, ll_empty = _e_outputs(empty, empty_mask, params)
    _, _, stats, ll = _e_outputs(points, point_mask, params)
    np.testing.assert_allclose(np.asarray(resp)[n], np.asarray(params.weights), rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(missing.informative_points(empty_mask, ~jnp.isnan(empty))), np.asarray(point_mask)
    )
    with_empty = _em_step(empty, empty_mask, params, covariance_type)
    without = _em_step(points, point_mask, params, covariance_type)
    for a, b in zip(jax.tree.leaves(with_empty), jax.tree.leaves(without)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ll_empty, ll)
    for a, b in zip(jax.tree.leaves(stats_empty), jax.tree.leaves(stats)):
        np.testing.assert_array_equal(a, b)


def test_mean_impute_fills_with_observed_column_means():
    points, point_mask, _, r = _problem(8, "diag")
    filled = np.asarray(missing.mean_impute(points, point_mask))
    X, O, n = r["X"], r["O"], r["n"]
    col_mean = np.array([X[O[:, j], j].mean() for j in range(X.shape[1])])
    np.testing.assert_allclose(filled[:n], np.where(O, X, col_mean[None, :]), rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(filled))
