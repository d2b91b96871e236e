"""The shipped K posterior (tgmm_jax/number_of_components.py) and ``TGMMEstimator(n_components="auto")``."""

import os
import shutil
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from tgmm_jax import estimator, number_of_components
from tgmm_jax.estimator import TGMMEstimator
from tgmm_jax.imputation import nearest_neighbour_impute
from tgmm_jax.number_of_components import (
    KPosteriorLoadError,
    load_k_posterior,
    posterior_over_k,
)


@pytest.fixture(scope="module")
def kpost():
    return load_k_posterior()


def _blobs(seed, n, d, k, sep=5.0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-sep, sep, size=(k, d))
    return means[rng.integers(0, k, n)] + rng.standard_normal((n, d))


def test_shipped_posterior_is_a_distribution_over_one_to_k_max(kpost):
    xs = [_blobs(s, 40 + 13 * s, 3, 1 + s) for s in range(4)]
    probs = posterior_over_k(kpost, xs, seed=0)
    assert probs.shape == (4, kpost.k_max) == (4, 8)
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


def test_padding_to_n_max_changes_nothing(kpost):
    x = _blobs(1, 40, 2, 3)
    x = (x - x.mean(axis=0)) / np.sqrt(np.mean((x - x.mean(axis=0)) ** 2))
    direct = kpost.model.apply(kpost.params, jnp.asarray(x[None], jnp.float32), jnp.ones((1, 40), bool))
    # float32 rounding: the likelihood evidence's 30 EM iterations sum over the padded length (~1e-5 relative)
    np.testing.assert_allclose(posterior_over_k(kpost, [x]), np.exp(np.asarray(direct)), atol=2e-5)
    # a batch of several datasets (padded to a power of two) gives each its own answer, up to the same float32
    # rounding over another padded length (2.5e-6 seen with the packages of 2026-12-07; 2e-6 held before)
    y = _blobs(2, 90, 2, 5)
    both = posterior_over_k(kpost, [x, y, x])
    np.testing.assert_allclose(both[0], posterior_over_k(kpost, [x])[0], atol=1e-5)
    np.testing.assert_allclose(both[2], both[0], atol=1e-12)
    np.testing.assert_allclose(both[1], posterior_over_k(kpost, [y])[0], atol=1e-5)


@pytest.mark.parametrize("c", [1e-6, 1e6, 1e-150, 1e150])
def test_invariant_to_order_scale_translation_and_rotation(kpost, c):
    rng = np.random.default_rng(3)
    x = _blobs(3, 100, 4, 4)
    base = posterior_over_k(kpost, [x])[0]
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    moved = (x[rng.permutation(100)] @ rotation.T) * c + 7.0 * c
    np.testing.assert_allclose(posterior_over_k(kpost, [moved])[0], base, atol=1e-4)


def test_more_than_n_max_points_are_a_seeded_subsample(kpost):
    x = _blobs(4, 3 * kpost.n_max, 2, 3)
    a, b = posterior_over_k(kpost, [x], seed=5), posterior_over_k(kpost, [x], seed=5)
    np.testing.assert_array_equal(a, b)
    rows = np.sort(np.random.default_rng(5).choice(x.shape[0], kpost.n_max, replace=False))
    np.testing.assert_allclose(a, posterior_over_k(kpost, [x[rows]]), atol=2e-5)  # float32 rounding


def test_missing_values_are_filled_from_nearest_neighbours(kpost):
    x = _blobs(6, 80, 3, 2)
    holes = np.random.default_rng(6).random(x.shape) < 0.2
    holes[:, 2] &= ~holes[:, :2].all(axis=1)  # every point keeps a coordinate
    with_nan = np.where(holes, np.nan, x)
    filled = nearest_neighbour_impute(with_nan)
    assert not np.isnan(filled).any()
    got = posterior_over_k(kpost, [with_nan])
    np.testing.assert_allclose(got, posterior_over_k(kpost, [filled]), atol=1e-12)
    # not the column means' answer
    column_means = np.where(holes, np.nanmean(with_nan, axis=0), with_nan)
    assert np.abs(got - posterior_over_k(kpost, [column_means])).max() > 1e-3


def test_unreadable_files_name_themselves(tmp_path):
    directory = str(tmp_path / "kpost")
    shutil.copytree(number_of_components.SHIPPED, directory)
    params = os.path.join(directory, number_of_components.PARAMS_FILE)
    with open(params, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(KPosteriorLoadError, match="k_posterior.msgpack"):
        load_k_posterior(directory)
    os.remove(os.path.join(directory, number_of_components.CONFIG_FILE))
    with pytest.raises(KPosteriorLoadError, match="k_posterior.json"):
        load_k_posterior(directory)
    assert "k_posterior" not in estimator.pretrained.available()  # not a TGMM checkpoint


# ----------------------------------------------------------------------------------------------------
# The estimator's "auto".


def _fixed_posterior(monkeypatch, probs_K):
    monkeypatch.setattr(
        number_of_components,
        "posterior_over_k",
        lambda ckpt, xs, seed=0, noise_variance=None: np.tile(probs_K, (len(xs), 1)),
    )


@pytest.mark.slow
def test_auto_picks_the_most_probable_k_it_can_fit(monkeypatch):
    X = _blobs(7, 120, 3, 3, sep=8.0)
    # the shipped model fits K = 1..5: the most probable of them
    _fixed_posterior(monkeypatch, np.array([0.1, 0.15, 0.45, 0.2, 0.05, 0.03, 0.01, 0.01]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = TGMMEstimator("auto", random_state=0).fit(X)
    assert est.n_components_ == 3 and est.means_.shape == (3, 3)
    np.testing.assert_allclose(est.posterior_n_components_.sum(), 1.0)
    same = TGMMEstimator(3, random_state=0).fit(X)  # the chosen K's fit is the plain fit of that K
    np.testing.assert_allclose(est.means_, same.means_, rtol=1e-6, atol=1e-6)
    # the default fits K = 1..5: mass above K = 5 counts for K = 5 (P(K >= 5) = 0.6 beats P(K = 2) = 0.3),
    # with a warning that names the checkpoint fitting more
    _fixed_posterior(monkeypatch, np.array([0.0, 0.3, 0.05, 0.05, 0.0, 0.25, 0.25, 0.1]))
    with pytest.warns(UserWarning, match=r"0\.60 of its mass on K > 5.*checkpoint='cluster_k8'"):
        assert TGMMEstimator("auto").fit(X).n_components_ == 5
    # cluster_k8 fits K = 1..8: the most probable K, 7, is fitted, without a warning
    _fixed_posterior(monkeypatch, np.array([0.0, 0.3, 0.05, 0.05, 0.0, 0.25, 0.35, 0.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TGMMEstimator("auto", checkpoint="cluster_k8", random_state=0).fit(X).n_components_ == 7
    # a K above the number of distinct points is never picked
    Z = np.repeat(X[:2], 30, axis=0)
    _fixed_posterior(monkeypatch, np.array([0.0, 0.1, 0.9, 0, 0, 0, 0, 0]))
    assert TGMMEstimator("auto").fit(Z).n_components_ == 2


@pytest.mark.slow
def test_auto_finds_k_and_its_labels_do_not_depend_on_units():
    X = _blobs(8, 300, 8, 4, sep=5.0)
    est = TGMMEstimator("auto", random_state=0).fit(X)
    assert est.n_components_ == 4
    for c in (1e-6, 1e6):
        scaled = TGMMEstimator("auto", random_state=0).fit(X * c - 3.0)
        np.testing.assert_allclose(scaled.posterior_n_components_, est.posterior_n_components_, atol=1e-4)
        np.testing.assert_array_equal(scaled.predict(X * c - 3.0), est.predict(X))


@pytest.mark.slow
def test_auto_with_a_known_noise_variance_reads_it_in_the_data_units(kpost):
    assert kpost.model.noise_head  # the shipped K posterior has the noise head
    # d = 2, three clusters 3 noise sd apart: where the noise level tells merged clusters from one
    X = np.concatenate([np.array(m) + np.random.default_rng(i).standard_normal((40, 2)) for i, m in
                        enumerate([(0.0, 0.0), (3.0, 0.0), (1.5, 2.6)])])  # fmt: skip
    unknown = TGMMEstimator("auto", random_state=0).fit(X).posterior_n_components_
    known = TGMMEstimator("auto", noise_variance=1.0, random_state=0).fit(X)
    assert np.abs(known.posterior_n_components_ - unknown).max() > 0.05  # the noise is read
    for c in (1e-4, 1e4):
        scaled = TGMMEstimator("auto", noise_variance=c**2, random_state=0).fit(c * X + 7.0)
        np.testing.assert_allclose(scaled.posterior_n_components_, known.posterior_n_components_, atol=1e-4)
        assert scaled.n_components_ == known.n_components_
    # the same points told a noise 16x larger: fewer components are needed to explain them
    loud = TGMMEstimator("auto", noise_variance=16.0, random_state=0).fit(X).posterior_n_components_
    mean_k = np.arange(1, kpost.k_max + 1)
    assert loud @ mean_k < known.posterior_n_components_ @ mean_k
    assert np.argmax(loud) == 0  # told the noise is as wide as the whole cloud, it answers K = 1
