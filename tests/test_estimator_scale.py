"""TGMMEstimator at scale: N buckets (padding changes nothing; a new N in a bucket already fitted compiles
nothing), large N (the network on a seeded subsample, then EM on all points streamed in blocks, equal to
``em_refine``), predictions in chunks, K = 1 in closed form and in "auto", duplicate points, and the command's
persistent compilation cache.

Mechanism tests use a tiny random-init clustering model (quick to compile) and, for the large-N path, shrunken
size constants; the behaviour tests (noise, 50,000 points) use the shipped checkpoint, one shape each.
"""

import contextlib
import logging
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from experiments import fit as fit_cli
from tests.estimator_helpers import save_tiny_checkpoint
from tgmm_jax import estimator, gmm, streaming
from tgmm_jax.estimator import TRACE_COUNTS, TGMMEstimator, bucket_size, load_checkpoint
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.refine import em_refine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("scale") / "tiny"))


def _blobs(seed, n=40, d=3, k=3, sep=5.0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-sep, sep, (k, d))
    return centres[np.arange(n) % k] + rng.standard_normal((n, d)), centres


class _Compiles(logging.Handler):
    """Collects JAX's "Compiling ..." log lines (one per program lowered: a trace that missed every cache)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def emit(self, record):
        if record.getMessage().startswith("Compiling"):
            self.names.append(record.getMessage().split(" with ")[0])


@contextlib.contextmanager
def _count_compiles():
    handler, logger = _Compiles(), logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield handler.names
    finally:
        logger.removeHandler(handler)


def _matched_distance(means_KxD, true_KxD):
    """Mean distance from each true mean to its nearest estimated mean."""
    return float(np.linalg.norm(means_KxD[:, None] - true_KxD[None], axis=-1).min(axis=0).mean())


# ----------------------------------------------------------------------------------------------------
# Buckets.


def test_bucket_sizes():
    assert [bucket_size(n) for n in (1, 2, 32, 33, 100, 128, 129, 2048)] == [
        32,
        32,
        32,
        64,
        128,
        128,
        256,
        2048,
    ]


@pytest.mark.slow
def test_padding_to_the_bucket_changes_nothing(tiny, monkeypatch):
    ckpt = load_checkpoint(tiny)
    X, _ = _blobs(0, n=40)
    k_T = np.array([2, 3], np.int32)
    for steps, restarts in ((0, 0), (3, 0)):
        outs = []
        for n in (40, 64):  # the exact length, then padded with masked points (holding garbage)
            points = np.full((2, n, 3), 7.0, np.float32)
            points[:, :40] = X
            mask = np.arange(n)[None].repeat(2, 0) < 40
            outs.append(
                estimator._fit_tasks(
                    ckpt.model,
                    steps,
                    restarts,
                    "spherical",
                    2,
                    False,
                    ckpt.params,
                    jax.random.key(0),
                    points,
                    mask,
                    k_T,
                )
            )
        # float32 sums over 40 or 64 rows round differently; EM steps with estimated variances (on a random
        # network's start) carry that to ~1e-4
        for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4, rtol=1e-4)
    # the public fit: padded to 64 (the default) or to 128 points
    for refine in ("none", "em"):
        est = TGMMEstimator("bic", checkpoint=tiny, refine=refine, em_steps=3)
        small = clone(est).fit(X)
        monkeypatch.setattr(estimator, "MIN_BUCKET", 128)
        big = clone(est).fit(X)
        monkeypatch.undo()
        assert small.n_components_ == big.n_components_
        np.testing.assert_allclose(big.means_, small.means_, atol=2e-4)
        np.testing.assert_allclose(big.weights_, small.weights_, atol=2e-5)
        np.testing.assert_allclose(big.lower_bound_, small.lower_bound_, rtol=1e-5)


@pytest.mark.slow
def test_a_new_n_in_a_fitted_bucket_compiles_nothing(tiny):
    est = TGMMEstimator(3, checkpoint=tiny, refine="em", em_steps=2, n_restarts=1, random_state=0)
    est.fit(_blobs(1, n=40)[0])  # bucket 64
    before = dict(TRACE_COUNTS)
    with _count_compiles() as compiled:
        for n in (33, 47, 64):
            est.fit(_blobs(n, n=n)[0])
    assert compiled == [] and TRACE_COUNTS == before
    est.fit(_blobs(2, n=65)[0])  # a new bucket (128): one more trace
    assert TRACE_COUNTS["fit_tasks"] == before["fit_tasks"] + 1


# ----------------------------------------------------------------------------------------------------
# Large N: subsample + streaming EM.


@pytest.mark.slow
def test_streaming_em_equals_em_refine():
    rng = np.random.default_rng(0)
    n, d, t, k = 3000, 5, 3, 4
    X = (rng.standard_normal((n, d)) + rng.uniform(-5, 5, (3, d))[rng.integers(0, 3, n)] + 10).astype(
        np.float32
    )
    comp_TxK = np.arange(k)[None] < np.array([2, 3, 4])[:, None]
    w_TxK = np.where(comp_TxK, rng.uniform(0.2, 1.0, (t, k)), 0.0)
    w_TxK /= w_TxK.sum(axis=1, keepdims=True)
    mu_TxKxD = np.where(comp_TxK[..., None], X[rng.integers(0, n, (t, k))], 0.0)
    x_MxLxD, mask_MxL, used = streaming.to_blocks(X, 512, num_blocks=8)  # 6 blocks used, 2 empty ones
    assert x_MxLxD.shape == (8, 512, d) and used == 6 and mask_MxL.sum() == n
    points_TxNxD, mask_TxN = jnp.broadcast_to(X[None], (t, n, d)), jnp.ones((t, n), bool)
    for scales in (None, np.where(comp_TxK[..., None], rng.uniform(0.5, 2.0, (t, k, d)), 1.0)):
        params = MixtureParams(
            jnp.asarray(w_TxK, jnp.float32),
            jnp.asarray(mu_TxKxD, jnp.float32),
            None if scales is None else jnp.asarray(scales, jnp.float32),
            jnp.asarray(comp_TxK),
        )
        for steps in (1, 3):
            ours, loglik_T, next_T = streaming.stream_em(x_MxLxD, mask_MxL, used, params, steps)
            ref = em_refine(points_TxNxD, mask_TxN, params, steps)
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-5)
            ll_ref = gmm.mean_log_likelihood(points_TxNxD, mask_TxN, ref)
            next_ref = gmm.mean_log_likelihood(
                points_TxNxD, mask_TxN, em_refine(points_TxNxD, mask_TxN, ref, 1)
            )
            np.testing.assert_allclose(loglik_T, ll_ref, rtol=1e-6)
            np.testing.assert_allclose(next_T, next_ref, rtol=1e-6)
        np.testing.assert_allclose(
            streaming.stream_mean_log_likelihood(x_MxLxD, mask_MxL, used, params),
            gmm.mean_log_likelihood(points_TxNxD, mask_TxN, params),
            rtol=1e-6,
        )


def _shrink(monkeypatch, large=64, block=128):
    monkeypatch.setattr(estimator, "LARGE_N", large)
    monkeypatch.setattr(estimator, "SUBSAMPLE", large)
    monkeypatch.setattr(estimator, "STREAM_BLOCK", block)


@pytest.mark.slow
def test_large_n_path_subsamples_streams_and_compiles_once_per_bucket(tiny, monkeypatch):
    _shrink(monkeypatch)
    seen = []
    fit_tasks = estimator._fit_tasks

    def spy(model, steps, restarts, cov, passes, network_variances, params, key, points, mask, k):
        seen.append((points.shape, steps, restarts))
        return fit_tasks(model, steps, restarts, cov, passes, network_variances, params, key, points, mask, k)

    monkeypatch.setattr(estimator, "_fit_tasks", spy)
    kw = dict(checkpoint=tiny, refine="em", em_steps=4, n_restarts=2, random_state=3)
    X, centres = _blobs(4, n=400, sep=8.0)
    a = TGMMEstimator(3, **kw).fit(X)
    assert seen == [((1, 64, 3), 0, 0)]  # the network read the subsample only, and ran no EM on it
    assert a.n_iter_ == 4 and a.means_.shape == (3, 3)
    np.testing.assert_allclose(a.lower_bound_, a.score(X), rtol=1e-5)  # the full data's log-likelihood
    np.testing.assert_array_equal(TGMMEstimator(3, **kw).fit(X).means_, a.means_)  # a seeded subsample
    assert _matched_distance(a.means_, centres) < 0.5
    # 300..512 points fill 3 or 4 blocks of 128: one bucket of 4 blocks, nothing compiles again
    before = dict(TRACE_COUNTS)
    with _count_compiles() as compiled:
        for n in (300, 450, 512):
            TGMMEstimator(3, **kw).fit(_blobs(n, n=n)[0])
    assert compiled == [] and TRACE_COUNTS == before
    # a batch mixing a small and a large dataset: each as if fitted alone
    small, _ = _blobs(5, n=50)
    batch_X = np.full((2, 400, 3), np.nan)
    batch_X[0], batch_X[1, :50] = X, small
    mask = np.ones((2, 400), bool)
    mask[1, 50:] = False
    batch = TGMMEstimator(3, **kw).fit_batch(batch_X, mask)
    np.testing.assert_allclose(batch.means[0], a.means_, atol=1e-6)
    np.testing.assert_allclose(batch.means[1], TGMMEstimator(3, **kw).fit(small).means_, atol=1e-6)


@pytest.mark.slow
def test_ten_thousand_points_recover_the_means(monkeypatch):
    rng = np.random.default_rng(0)
    centres = rng.uniform(-5, 5, (3, 8))
    X = centres[rng.integers(0, 3, 10_000)] + rng.standard_normal((10_000, 8))  # > LARGE_N, 3 stream blocks
    shapes = []
    fit_tasks = estimator._fit_tasks
    monkeypatch.setattr(estimator, "_fit_tasks", lambda *a: shapes.append(a[8].shape) or fit_tasks(*a))
    est = TGMMEstimator(3, random_state=0).fit(X)
    assert shapes == [(1, estimator.SUBSAMPLE, 8)]
    assert est.n_iter_ == est.em_steps and est.converged_
    assert _matched_distance(est.means_, centres) < 0.05
    # predictions in chunks equal sklearn's on the same parameters
    monkeypatch.setattr(estimator, "PREDICT_CHUNK", 4096)
    gm = est.to_sklearn()
    np.testing.assert_array_equal(est.predict(X), gm.predict(X))
    np.testing.assert_allclose(est.score_samples(X), gm.score_samples(X), rtol=1e-9)
    np.testing.assert_allclose(est.predict_proba(X[:5000]), gm.predict_proba(X[:5000]), atol=1e-9)
    np.testing.assert_allclose(est.score(X), est.lower_bound_, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# K = 1, "auto", duplicates.


@pytest.mark.slow
def test_auto_and_bic_pick_one_component_on_gaussian_noise():
    X = np.random.default_rng(0).standard_normal((500, 8))
    est = TGMMEstimator("bic").fit(X)
    assert set(est.bic_by_k_) == {1, 2, 3, 4, 5}
    assert est.n_components_ == 1 == min(est.bic_by_k_, key=est.bic_by_k_.get)
    np.testing.assert_allclose(est.bic_by_k_[1], est.bic(X))
    auto = TGMMEstimator("auto", random_state=0).fit(X)  # the learned P(K | X)
    assert auto.n_components_ == 1 and auto.posterior_n_components_.argmax() == 0
    assert auto.bic_by_k_ == {1: pytest.approx(est.bic_by_k_[1])}


@pytest.mark.slow
def test_one_component_is_closed_form(tiny):
    X, _ = _blobs(6, n=90, d=4, k=2)
    before = dict(TRACE_COUNTS)
    est = TGMMEstimator(1, checkpoint=tiny).fit(X)
    assert TRACE_COUNTS == before  # no network
    np.testing.assert_array_equal(est.weights_, [1.0])
    np.testing.assert_allclose(est.means_[0], X.mean(axis=0), atol=1e-12)
    var = np.mean((X - X.mean(axis=0)) ** 2)  # the spherical ML variance (sklearn's, below)
    expected = -0.5 * 4 * (np.log(2 * np.pi * var) + 1.0)
    np.testing.assert_allclose(est.lower_bound_, expected, rtol=1e-6)
    np.testing.assert_allclose(est.score(X), expected, rtol=1e-6)
    gm = GaussianMixture(1, covariance_type="spherical").fit(X)
    np.testing.assert_allclose(est.covariances_, gm.covariances_, rtol=1e-6)
    np.testing.assert_allclose(est.bic(X), gm.bic(X), rtol=1e-9)
    assert est.converged_ and est.n_iter_ == 0 and est.n_components_ == 1
    assert (est.predict(X) == 0).all() and est.bic_by_k_ == {1: pytest.approx(est.bic(X))}
    raw = TGMMEstimator(1, checkpoint=tiny, standardize=False).fit(X)
    np.testing.assert_allclose(raw.means_, est.means_, atol=1e-12)
    np.testing.assert_allclose(raw.covariances_, [var], rtol=1e-5)
    # fit_batch: per-dataset K, 1 among them; and "auto" keeps K = 1's BIC among the others
    Y, _ = _blobs(7, n=60, d=4, k=2, sep=8.0)
    batch = TGMMEstimator(checkpoint=tiny).fit_batch(np.stack([X[:60], Y]), n_components=np.array([1, 2]))
    assert batch.component_mask.sum(axis=1).tolist() == [1, 2]
    np.testing.assert_allclose(batch.means[0, 0], X[:60].mean(axis=0), atol=1e-12)
    auto = TGMMEstimator("bic", checkpoint=tiny).fit(X)
    assert set(auto.bic_by_k_) == {1, 2, 3}
    np.testing.assert_allclose(auto.bic_by_k_[1], est.bic(X))


@pytest.mark.slow
def test_identical_points(tiny):
    X = np.tile([[1.5, -2.0, 3.0]], (50, 1))
    one = TGMMEstimator(1, checkpoint=tiny).fit(X)
    np.testing.assert_array_equal(one.means_, X[:1])
    gm = GaussianMixture(1, covariance_type="spherical").fit(X)  # variance: the regularisation alone
    np.testing.assert_allclose(one.covariances_, gm.covariances_)
    np.testing.assert_allclose(one.lower_bound_, gm.score(X))
    assert one.converged_
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in ("auto", "bic"):
            assert TGMMEstimator(mode, checkpoint=tiny).fit(X).n_components_ == 1
    for k in (2, 3):
        with pytest.warns(ConvergenceWarning, match=f"X has 1 distinct point.*n_components={k}"):
            est = TGMMEstimator(k, checkpoint=tiny, refine="em").fit(X)
        assert not est.converged_
        np.testing.assert_array_equal(est.means_, np.repeat(X[:1], k, axis=0))
        np.testing.assert_allclose(est.weights_, np.full(k, 1.0 / k))
        np.testing.assert_allclose(est.lower_bound_, one.lower_bound_, rtol=1e-6)
    # two distinct points and K = 3: a warning, not identifiable; "auto" never picks a K above 2
    Z = np.repeat([[0.0, 0.0, 0.0], [9.0, 9.0, 9.0]], 25, axis=0)
    with pytest.warns(ConvergenceWarning, match="2 distinct point"):
        assert not TGMMEstimator(3, checkpoint=tiny).fit(Z).converged_
    for mode in ("auto", "bic"):
        assert TGMMEstimator(mode, checkpoint=tiny).fit(Z).n_components_ <= 2


# ----------------------------------------------------------------------------------------------------
# The command's persistent compilation cache.


@pytest.mark.subprocess
def test_cache_dir_follows_the_environment():
    home = os.path.join(os.path.expanduser("~"), ".cache", "tgmm_jax", "jax")
    assert fit_cli.compilation_cache_dir({}) == home
    assert fit_cli.compilation_cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/tgmm_jax/jax"
    assert fit_cli.compilation_cache_dir({"JAX_COMPILATION_CACHE_DIR": "/j", "XDG_CACHE_HOME": "/x"}) == "/j"
    for off in ("1", "yes"):
        assert fit_cli.compilation_cache_dir({"TGMM_JAX_NO_CACHE": off, "XDG_CACHE_HOME": "/x"}) is None
    assert fit_cli.compilation_cache_dir({"TGMM_JAX_NO_CACHE": "0"}) == home
    # the traced programs (tgmm_jax.export_cache): under XDG_CACHE_HOME whatever JAX_COMPILATION_CACHE_DIR says
    assert fit_cli.export_cache_dir({}) == os.path.join(os.path.dirname(home), "export")
    assert fit_cli.export_cache_dir({"JAX_COMPILATION_CACHE_DIR": "/j", "XDG_CACHE_HOME": "/x"}) == (
        "/x/tgmm_jax/export"
    )
    assert fit_cli.export_cache_dir({"TGMM_JAX_NO_CACHE": "1", "XDG_CACHE_HOME": "/x"}) is None
    # importing the library turns nothing on: only the command's main does
    code = (
        "import tgmm_jax.estimator, jax; from tgmm_jax import export_cache; "
        "print(jax.config.jax_compilation_cache_dir, export_cache.directory())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.stdout.strip() == "None None", out.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_command_fills_the_cache_unless_turned_off(tiny, tmp_path):
    X, _ = _blobs(8, n=30, d=2)
    np.save(tmp_path / "points.npy", X)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "TGMM_JAX_NO_CACHE"}
    args = [
        sys.executable,
        "-m",
        "experiments.fit",
        f"--data={tmp_path / 'points.npy'}",
        f"--checkpoint={tiny}",
    ]
    for name, extra_env, extra_args, cached in (
        ("on", {}, ["--n_components=2"], True),
        # TGMM_JAX_NO_CACHE is covered by test_cache_dir_follows_the_environment (one subprocess fewer)
        ("flag_off", {}, ["--n_components=1", "--nocompilation_cache"], False),
    ):
        xdg = tmp_path / name
        proc = subprocess.run(
            args + extra_args, check=False, env={**env, "XDG_CACHE_HOME": str(xdg), **extra_env}, cwd=ROOT,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        for cache in (xdg / "tgmm_jax" / "jax", xdg / "tgmm_jax" / "export"):
            assert cache.is_dir() == cached and (not cached or any(cache.iterdir())), (name, cache)
