"""TGMMEstimator(missing=...): NaN is an error by default (the message names missing="allow"); with "allow" it
is a missing value: the fit (mean-imputed network start, exact missing-data EM, observed-only standardisation)
and every density method marginalise the missing coordinates. Mechanism tests use a tiny random-init model;
the quality test (ARI against mean imputation + scikit-learn's GaussianMixture) uses the shipped checkpoint.
"""

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from tests.estimator_helpers import save_tiny_checkpoint
from tgmm_jax import masking
from tgmm_jax.estimator import LARGE_N, MISSING_EM_STEPS, VARIANCE_REG, TGMMEstimator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("missing") / "tiny"))


def _blobs(seed, n=60, d=3, k=2, sep=5.0):
    """(X, labels, means): K unit-noise clusters with means in [-sep, sep]^d."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-sep, sep, (k, d))
    y = np.arange(n) % k
    return means[y] + rng.standard_normal((n, d)), y, means


def _hide(X, rate, seed):
    """X with a ``rate`` fraction of its coordinates NaN (``tgmm_jax.masking``: MCAR, every row keeps one)."""
    _, observed = masking.mask_at_random(jax.random.key(seed), np.asarray(X, np.float32), rate)
    return np.where(np.asarray(observed), X, np.nan)


# ----------------------------------------------------------------------------------------------------
# Errors: no network is run.


def test_nan_is_an_error_by_default_and_names_missing_allow():
    X = _hide(_blobs(0)[0], 0.2, 0)
    with pytest.raises(ValueError, match=r"NaN or infinity .*missing='allow'"):
        TGMMEstimator(2).fit(X)
    X_inf = _blobs(0)[0]
    X_inf[4, 1] = np.inf
    for missing in ("error", "allow"):  # infinity is never a missing value
        with pytest.raises(ValueError, match="row 4, column 1"):
            TGMMEstimator(2, missing=missing).fit(X_inf)


def test_empty_rows_columns_bad_values_and_large_n_are_refused():
    X = _hide(_blobs(0)[0], 0.2, 0)
    X[7] = np.nan
    with pytest.raises(ValueError, match="row 7 .*every value missing"):
        TGMMEstimator(2, missing="allow").fit(X)
    X = _blobs(0)[0]
    X[:, 2] = np.nan
    with pytest.raises(ValueError, match="column 2 .*no observed value"):
        TGMMEstimator(2, missing="allow").fit(X)
    with pytest.raises(ValueError, match="missing must be one of"):
        TGMMEstimator(2, missing="impute").fit(_blobs(0)[0])
    big = _hide(np.random.default_rng(0).normal(size=(LARGE_N + 1, 2)), 0.1, 0)
    with pytest.raises(ValueError, match="at most LARGE_N"):
        TGMMEstimator(2, missing="allow").fit(big)


def test_one_component_is_the_observed_data_maximum_likelihood():
    """K = 1 (closed form, no network): the observed means and variances of each column (diag), the pooled
    observed variance (spherical); the log-likelihood is the observed-coordinate one."""
    X = _hide(_blobs(1, n=50, d=4)[0] * 3.0 + 7.0, 0.3, 1)
    obs = ~np.isnan(X)
    diag = TGMMEstimator(1, covariance_type="diag", missing="allow").fit(X)
    np.testing.assert_allclose(diag.means_[0], np.nanmean(X, axis=0), rtol=1e-12)
    # VARIANCE_REG is added in the fit's standardised coordinates: relative 1e-6 at most here
    np.testing.assert_allclose(diag.covariances_[0], np.nanvar(X, axis=0), rtol=1e-5)
    sph = TGMMEstimator(1, covariance_type="spherical", missing="allow").fit(X)
    pooled = np.nansum((X - np.nanmean(X, axis=0)) ** 2) / obs.sum()
    np.testing.assert_allclose(sph.covariances_[0], pooled, rtol=1e-5)
    assert sph.lower_bound_ == pytest.approx(sph.score(X), rel=1e-6)
    assert VARIANCE_REG < 1e-5


# ----------------------------------------------------------------------------------------------------
# The fit (tiny model).


@pytest.mark.slow
def test_allow_without_nan_is_the_default_fit_exactly(tiny):
    X, _, _ = _blobs(2)
    a = TGMMEstimator(2, checkpoint=tiny, random_state=0).fit(X)
    b = TGMMEstimator(2, checkpoint=tiny, random_state=0, missing="allow").fit(X)
    for name in ("weights_", "means_", "covariances_", "lower_bound_", "n_iter_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    # fit_batch: a dataset with NaN and one without, each as its own fit
    X_nan = _hide(X, 0.3, 2)
    c = TGMMEstimator(2, checkpoint=tiny, random_state=0, missing="allow").fit(X_nan)
    both = b.fit_batch(np.stack([X_nan, X]))
    np.testing.assert_allclose(both.means[0, :2], c.means_, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(both.means[1, :2], a.means_)


@pytest.mark.slow
def test_density_methods_marginalise_the_missing_coordinates(tiny):
    """score_samples, predict_proba, predict, score, bic and aic on rows with NaN equal a SciPy reference: the
    mixture density of each row's observed sub-vector."""
    X, _, _ = _blobs(3, n=60, d=3)
    X_nan = _hide(X, 0.3, 3)
    est = TGMMEstimator(2, checkpoint=tiny, covariance_type="diag", missing="allow", random_state=0).fit(
        X_nan
    )
    assert est.n_iter_ == MISSING_EM_STEPS  # refine="none" still runs the missing-data EM steps
    ref_NxK = np.empty((X.shape[0], 2))
    for n, x in enumerate(X_nan):
        o = ~np.isnan(x)
        for k in range(2):
            mvn = multivariate_normal(est.means_[k, o], np.diag(est.covariances_[k, o]))
            ref_NxK[n, k] = np.log(est.weights_[k]) + mvn.logpdf(x[o])
    ref_N = logsumexp(ref_NxK, axis=1)
    np.testing.assert_allclose(est.score_samples(X_nan), ref_N, rtol=1e-10)
    np.testing.assert_allclose(est.predict_proba(X_nan), np.exp(ref_NxK - ref_N[:, None]), atol=1e-10)
    np.testing.assert_array_equal(est.predict(X_nan), np.argmax(ref_NxK, axis=1))
    assert est.score(X_nan) == pytest.approx(ref_N.mean(), rel=1e-10)
    assert est.lower_bound_ == pytest.approx(ref_N.mean(), rel=1e-4)  # the fit's float32 observed-data one
    p = 1 + 2 * 3 + 2 * 3
    assert est.bic(X_nan) == pytest.approx(-2 * ref_N.sum() + p * np.log(60), rel=1e-10)
    assert est.aic(X_nan) == pytest.approx(-2 * ref_N.sum() + 2 * p, rel=1e-10)
    # rows without NaN: the full density, as without missing values
    full = ~np.isnan(X_nan).any(axis=1)
    np.testing.assert_allclose(est.score_samples(X_nan[full]), ref_N[full], rtol=1e-10)
    with pytest.raises(ValueError, match="missing='allow'"):
        TGMMEstimator(2, checkpoint=tiny).fit(X).predict(X_nan)


@pytest.mark.slow
@pytest.mark.parametrize("noise", [False, True])
def test_labels_are_unit_free_with_missing_values(tiny, noise):
    """c X for c in {1e-3, 1e3}: the same labels, means times c, variances times c^2; with a known noise
    variance v (given as c^2 v), the covariances are exactly that value."""
    X, _, _ = _blobs(4, n=60, d=3)
    X_nan = _hide(X, 0.3, 4)
    kw = dict(checkpoint=tiny, missing="allow", refine="em", n_restarts=1, random_state=0)
    base = TGMMEstimator(2, noise_variance=1.0 if noise else None, **kw).fit(X_nan)
    for c in (1e-3, 1e3):
        est = TGMMEstimator(2, noise_variance=c**2 if noise else None, **kw).fit(c * X_nan)
        np.testing.assert_array_equal(est.predict(c * X_nan), base.predict(X_nan))
        np.testing.assert_allclose(est.means_, c * base.means_, rtol=1e-4, atol=1e-4 * c)
        np.testing.assert_allclose(est.covariances_, c**2 * base.covariances_, rtol=1e-3)
        if noise:
            np.testing.assert_array_equal(est.covariances_, c**2)


# ----------------------------------------------------------------------------------------------------
# Quality (shipped checkpoint): d = 8, K = 3, N = 300, 30% of the coordinates missing.


def _matched_l2(means_KxD, truth_KxD) -> float:
    cost = np.linalg.norm(means_KxD[:, None] - truth_KxD[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


@pytest.mark.slow
def test_beats_mean_imputation_on_blobs_with_30_percent_missing():
    ours, imputed, l2 = [], [], []
    for seed in range(3):
        X, y, truth = _blobs(100 + seed, n=300, d=8, k=3)
        X_nan = _hide(X, 0.3, seed)
        assert abs(np.isnan(X_nan).mean() - 0.3) < 0.03
        est = TGMMEstimator(3, missing="allow", random_state=0).fit(X_nan)
        ours.append(adjusted_rand_score(y, est.predict(X_nan)))
        l2.append(_matched_l2(est.means_, truth))
        X_imp = np.where(np.isnan(X_nan), np.nanmean(X_nan, axis=0), X_nan)
        gm = GaussianMixture(3, covariance_type="spherical", random_state=0).fit(X_imp)
        imputed.append(adjusted_rand_score(y, gm.predict(X_imp)))
    assert np.mean(ours) >= np.mean(imputed), (ours, imputed)
    assert max(l2) < 0.6, l2  # per-mean distance to the truth (unit noise, d = 8)
