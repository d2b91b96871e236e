"""A scikit-learn-style Gaussian-mixture estimator on a trained TGMM: ``TGMMEstimator``.

    from tgmm_jax.estimator import TGMMEstimator
    gm = TGMMEstimator(n_components=3).fit(X)          # X: [n_samples, n_features], any n_features
    labels = gm.predict(X); gm.means_, gm.weights_, gm.covariances_

The default checkpoint is the dimension-free clustering model shipped in ``tgmm_jax/pretrained/`` (nothing
downloads). Fitting runs the network's forward of ``tgmm_jax.scoring`` (``scoring.model_method``) on
standardised data (any units: see ``standardize``), estimates spherical or diagonal variances, then EM steps
(``tgmm_jax.mixture``) when ``refine="em"``, jitted once per shape bucket
(``bucket_size``: N is padded with masked points up to a power of two, so new N rarely compile again); above
``LARGE_N`` points the network reads a seeded subsample and EM runs on all points in blocks
(``tgmm_jax.streaming``), so memory stays O(N K d). K = 1 is closed form. ``missing="allow"`` reads NaN as
missing values (exact missing-data EM from the network's estimate on points filled from their nearest
neighbours; the density methods marginalise them). Predictions on a fitted estimator are float64 NumPy, like
``sklearn.mixture.GaussianMixture``.
"""

from __future__ import annotations

import functools
import numbers
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from tgmm_jax import export_cache, imputation, mixture, pretrained, scoring
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.mixture import VARIANCE_REG, fused, seeding
from tgmm_jax.pretrained import load_checkpoint
from tgmm_jax.streaming import TRACE_COUNTS, count_trace, stream_em, to_blocks
from tgmm_jax.tasks import GMMTask

__all__ = [
    "COVARIANCE_TYPES",
    "LARGE_N",
    "MAX_SCALE",
    "MIN_BUCKET",
    "MIN_SCALE",
    "MISSING",
    "MISSING_EM_STEPS",
    "PREDICT_CHUNK",
    "REFINES",
    "STREAM_BLOCK",
    "SUBSAMPLE",
    "TOL",
    "TRACE_COUNTS",
    "TRAINING_VARIANCE",
    "VARIANCE_ITERS",
    "TGMMEstimator",  # noqa: F822 -- built on first use by the module's __getattr__
    "TGMMEstimatorCore",
    "bucket_size",
    "check_points",
    "n_parameters",
]  # fmt: skip
# TRACE_COUNTS (re-exported from tgmm_jax.streaming): how often each jitted fit program was traced (compiled)

REFINES = ("none", "em")
# ``n_components`` chosen per dataset: "auto" = the most probable K under the learned P(K | X)
# (tgmm_jax.number_of_components) among those the checkpoint can fit; "bic" = the lowest BIC of every such K.
AUTO_MODES = ("auto", "bic")
# "auto" warns when the learned posterior puts more than this on K above what the checkpoint can fit.
UNFITTABLE_MASS_WARNING = 0.5
MISSING = ("error", "allow")  # ``missing``: a NaN in X is an error, or a missing value
# With missing values the network reads points whose missing coordinates are filled from their nearest
# neighbours (``tgmm_jax.imputation``), so exact missing-data EM steps always follow: at least this many,
# whatever ``refine`` says (``em_steps`` when refine="em" asks for more).
MISSING_EM_STEPS = 5
COVARIANCE_TYPES = ("spherical", "diag")  # the estimator's (tgmm_jax.mixture also has the fixed "isotropic")
# Mean per-feature variance of the training tasks (U[-5, 5] means, unit noise, K in 2..5): 6.4-7.4 for
# d = 2, 8, 32 (256 tasks per K of sample_tasks). ``standardize``'s first pass rescales data to it.
TRAINING_VARIANCE = 6.5
VARIANCE_ITERS = 2  # variance M-steps (weights and means held) that give a network estimate its variances
# ``standardize=True`` refuses data whose scale (root mean squared distance to the mean) lies outside
# [MIN_SCALE, MAX_SCALE]: its variances (scale^2) would underflow or overflow float64. ``standardize=False``
# computes in float32 in the data's units and refuses |x - mean| above MAX_RAW.
MIN_SCALE, MAX_SCALE, MAX_RAW = 1e-150, 1e150, 1e15
TOL = 1e-3  # converged_: one more EM step changes the mean log-likelihood by less (sklearn's default tol)

# Shapes. The network's N is padded (masked points) up to a power of two >= MIN_BUCKET, so a fitted shape
# serves every N of its bucket without compiling again (7 buckets up to LARGE_N).
MIN_BUCKET = 32
# Above LARGE_N points the network (its set attention and the greedy/smooth seedings are O(N^2) in memory)
# reads SUBSAMPLE points drawn uniformly without replacement (seeded by random_state), and the EM steps then
# run on all points, streamed in blocks of STREAM_BLOCK (memory O(N K d); the blocks are padded to a power
# of two of them, one compiled program per bucket).
LARGE_N = 2048
SUBSAMPLE = 2048
STREAM_BLOCK = 4096
# Fits (datasets x candidate Ks) per jitted call of ``fit_batch``/``"bic"``: larger batches run in chunks. It was
# lowered to 64 as a guard against EM steps that drifted in programs of 128 fits with a known noise variance;
# the cause was XLA:CPU miscompiling the unit-variance log-densities (``_unit_as_none``), now avoided, and 128
# fits per call give each dataset's own fit again (tests/test_estimator_noise.py).
FIT_TASKS = 64
PREDICT_CHUNK = 65536  # rows per chunk in predict / score_samples / predict_proba: memory O(chunk K d)


def bucket_size(n: int) -> int:
    """The padded length of ``n`` points: the next power of two, at least ``MIN_BUCKET``."""
    return max(MIN_BUCKET, 1 << max(int(n) - 1, 0).bit_length())


# ----------------------------------------------------------------------------------------------------
# The batched fit: one jitted call per (model, steps, restarts, shapes).


def _restart_starts(n_restarts: int, k_max: int, key, points_BxNxD, mask_BxN, k_B):
    """``n_restarts`` k-means++ starts per task (``mixture.seeding``: greedy k-means++, then the hard-partition
    M-step of its centres, as the ``em_kmeanspp`` baseline), unit scales (``_with_variances`` estimates them):
    MixtureParams with leading dims [R, B]."""
    data = fused.prepare_chunk(points_BxNxD, mask_BxN, learn_variances=False)
    b = points_BxNxD.shape[0]
    # One set of draws serves every dataset of the batch, so a dataset's starts do not depend on the batch it
    # is fitted in (fit_batch equals one fit per dataset); the seeding's draws exclude 0.
    shape = (n_restarts, k_max, seeding.kmeanspp_trials(k_max))
    tiny = jnp.finfo(points_BxNxD.dtype).tiny
    u = jax.random.uniform(jax.random.fold_in(key, 0), shape, points_BxNxD.dtype, minval=tiny)
    u = jnp.broadcast_to(u, (b, *shape))
    comp_BxK = jnp.arange(k_max)[None, :] < k_B[:, None]
    start = seeding.kmeanspp_state(u, data, k_B, comp_BxK, learn_variances=False)
    comp_RxBxK = jnp.broadcast_to(comp_BxK, (n_restarts, b, k_max))
    means = jnp.swapaxes(start.means_CxRxKxD, 0, 1) + data.centre_CxD[None, :, None, :]
    means = jnp.where(comp_RxBxK[..., None], means, 0.0)
    return MixtureParams(jnp.swapaxes(start.weights_CxRxK, 0, 1), means, jnp.ones_like(means), comp_RxBxK)


def _with_variances(
    points_BxNxD, mask_BxN, params: MixtureParams, covariance_type: str, observed=None
) -> MixtureParams:
    """``VARIANCE_ITERS`` variance M-steps with the weights and means held (``mixture.variance_step``, or its
    missing-data form where ``observed`` is given); unit variances for ``"isotropic"`` (a known noise
    variance: 1 in the fit's coordinates)."""
    if covariance_type == "isotropic":
        return params.replace(scales=jnp.ones_like(params.means))
    if observed is None:
        step = functools.partial(mixture.variance_step, points_BxNxD, mask_BxN)
    else:
        step = functools.partial(mixture.missing.variance_step, points_BxNxD, mask_BxN, observed_NxD=observed)
    return jax.lax.fori_loop(0, VARIANCE_ITERS, lambda _, p: step(p, covariance_type), params)


def _unit_as_none(params: MixtureParams, covariance_type: str) -> MixtureParams:
    """``params`` as the mixture kernels (``tgmm_jax.gmm``) should see them: for ``"isotropic"`` (a known noise
    variance, 1 in the fit's coordinates) without scales (None: the kernels' unit-variance form), never as
    ``jnp.ones`` scales. Unit scales are a constant in the compiled program, and XLA:CPU (jaxlib 0.10.2)
    miscompiles a matmul with a constant broadcast operand (here 1 / scales^2) when its YNNPACK fusion takes the
    matmul in, which depends on the shapes: in programs of 16 datasets x 10 starts (or 128 fits without
    restarts) the log-likelihoods came out several nats per point too high, so the restarts' selection kept bad
    fits and the EM steps drifted (tests/test_estimator_noise.py)."""
    return params.replace(scales=None) if covariance_type == "isotropic" else params


def _em_step(
    points_BxNxD, mask_BxN, params: MixtureParams, covariance_type: str, observed=None
) -> MixtureParams:
    """One EM step (``mixture.missing``'s exact missing-data step where ``observed`` is given); ``"isotropic"``
    (a known noise variance, 1 in the fit's coordinates) keeps unit scales (run without: ``_unit_as_none``)."""
    fit = _unit_as_none(params, covariance_type)
    if observed is None:
        out = mixture.em_step(points_BxNxD, mask_BxN, fit, covariance_type)
    else:
        out = mixture.missing.em_step(points_BxNxD, mask_BxN, fit, covariance_type, observed)
    return out.replace(scales=params.scales) if covariance_type == "isotropic" else out


def _em(
    points_BxNxD, mask_BxN, params: MixtureParams, steps: int, covariance_type: str, observed=None
) -> MixtureParams:
    return jax.lax.fori_loop(
        0, steps, lambda _, p: _em_step(points_BxNxD, mask_BxN, p, covariance_type, observed), params
    )


def _log_likelihood(
    points_BxNxD, mask_BxN, params: MixtureParams, covariance_type: str, observed=None
) -> jax.Array:
    """Mean log-likelihood per point: [B]; the observed-data one (``mixture.missing``) where ``observed`` is
    given; ``"isotropic"``: unit variance, whatever ``params.scales`` holds (``_unit_as_none``)."""
    params = _unit_as_none(params, covariance_type)
    if observed is None:
        return mixture.log_likelihood(points_BxNxD, mask_BxN, params)
    return mixture.missing.log_likelihood(points_BxNxD, mask_BxN, params, observed)


def _pooled_variance(params: MixtureParams) -> jax.Array:
    """The weight-averaged variance of each task's components (mean over dimensions): [B]."""
    w_BxK = jnp.where(params.component_mask, params.weights, 0.0)
    var_BxK = jnp.mean(jnp.square(params.scales), axis=-1)
    return jnp.sum(w_BxK * var_BxK, axis=-1) / jnp.maximum(jnp.sum(w_BxK, axis=-1), 1e-30)


def _nan_to_worst(loglik):
    return jnp.where(jnp.isnan(loglik), -jnp.inf, loglik)


@functools.partial(jax.jit, static_argnames=("n_restarts", "k_max"))
def _kmeanspp_starts(n_restarts: int, k_max: int, key, points_BxNxD, mask_BxN, k_B):
    count_trace("kmeanspp_starts")
    return _restart_starts(n_restarts, k_max, key, points_BxNxD, mask_BxN, k_B)


_FIT_STATICS = ("model", "refine_steps", "n_restarts", "covariance_type", "passes", "network_variances")


@functools.partial(jax.jit, static_argnames=_FIT_STATICS)
def _fit_tasks(
    model, refine_steps: int, n_restarts: int, covariance_type: str, passes: int, network_variances: bool,
    params, key, points_BxNxD, mask_BxN, k_B,
):  # fmt: skip
    """``_fit_body`` on complete data (see there)."""
    count_trace("fit_tasks")
    return _fit_body(
        model, refine_steps, n_restarts, covariance_type, passes, network_variances,
        params, key, points_BxNxD, mask_BxN, k_B,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=_FIT_STATICS)
def _fit_tasks_missing(
    model, refine_steps: int, n_restarts: int, covariance_type: str, passes: int, network_variances: bool,
    params, key, imputed_BxNxD, mask_BxN, k_B, observed_BxNxD,
):  # fmt: skip
    """``_fit_body`` with missing coordinates: ``imputed_BxNxD`` holds the observed values and, at the missing
    coordinates (``observed_BxNxD`` False), a filling (``tgmm_jax.imputation``; see there)."""
    count_trace("fit_tasks_missing")
    return _fit_body(
        model, refine_steps, n_restarts, covariance_type, passes, network_variances,
        params, key, imputed_BxNxD, mask_BxN, k_B, observed_BxNxD,
    )  # fmt: skip


def _fit_body(
    model, refine_steps: int, n_restarts: int, covariance_type: str, passes: int, network_variances: bool,
    params, key, points_BxNxD, mask_BxN, k_B, observed=None,
):  # fmt: skip
    """The network (``scoring.model_method(model)``) on the tasks, its variances (``_with_variances``), then
    ``refine_steps`` EM steps; ``passes`` = 2 runs the network a second time on the points divided by the
    first fit's pooled within-component standard deviation (unit noise, the training tasks' scale) and keeps
    the pass of higher log-likelihood (the second on ties). ``n_restarts`` > 0 adds as many EM runs from
    k-means++ starts; per task the fit of highest log-likelihood wins (the network's on ties). Everything is
    in the coordinates of ``points``. ``covariance_type="isotropic"``: the noise variance is known and is 1 in
    these coordinates (a noise-conditioned network is told so; else it is estimated, and a noise-conditioned
    network is told it is unknown). ``network_variances``: keep the network's own (spherical) variances
    instead of the variance M-steps. Returns the estimate (scales always set), its mean log-likelihood and
    that after one more EM step.

    ``observed`` [B, N, D] (True = observed; None: every coordinate is): missing coordinates. The network and
    the k-means++ seeding read ``points_BxNxD`` as given (filled by the caller; a network trained with masks,
    ``ModelConfig.readin_mask``, is also told ``observed``);
    the variance steps, EM steps and log-likelihoods are ``mixture.missing``'s exact observed-data ones."""
    k_max = max(model.ks)
    b, n, d = points_BxNxD.shape
    comp_BxK = jnp.arange(k_max)[None, :] < k_B[:, None]
    zeros_BxK = jnp.zeros((b, k_max), points_BxNxD.dtype)
    known = covariance_type == "isotropic"
    network = scoring.model_method(model, 0, noise="known" if known else "unknown")

    def one_pass(scale_B):
        task = GMMTask(  # scales: the noise a noise-conditioned network is told when it is known
            points_BxNxD / scale_B[:, None, None], mask_BxN, jnp.zeros((b, n), jnp.int32), zeros_BxK,
            jnp.zeros((b, k_max, d)), jnp.ones((b, k_max, d)) / scale_B[:, None, None], comp_BxK, k_B,
        )  # fmt: skip
        est, _ = network(params, key, task, observed=observed)
        scales = jnp.ones_like(est.means) if est.scales is None else est.scales
        est = est.replace(means=est.means * scale_B[:, None, None], scales=scales * scale_B[:, None, None])
        if not network_variances:
            est = _with_variances(points_BxNxD, mask_BxN, est, covariance_type, observed)
        est = _em(points_BxNxD, mask_BxN, est, refine_steps, covariance_type, observed)
        return est, _nan_to_worst(_log_likelihood(points_BxNxD, mask_BxN, est, covariance_type, observed))

    def next_pass(_, carry):
        best, best_ll, scale_B = carry
        est, ll = one_pass(scale_B)
        better_B = ll >= best_ll  # a later pass wins ties: it sees the data nearer the training scale
        best = jax.tree.map(
            lambda a, o: jnp.where(better_B.reshape((b,) + (1,) * (a.ndim - 1)), a, o), est, best
        )
        pooled_B = _pooled_variance(est)
        ok_B = jnp.isfinite(pooled_B) & (pooled_B > 0)
        return best, jnp.maximum(ll, best_ll), jnp.where(ok_B, jnp.sqrt(jnp.where(ok_B, pooled_B, 1.0)), 1.0)

    # the passes run in one loop, so the network is traced (and compiled) once
    dtype = points_BxNxD.dtype
    none_yet = MixtureParams(
        zeros_BxK,
        jnp.zeros((b, k_max, d), dtype),
        jnp.ones((b, k_max, d), dtype),
        jnp.zeros((b, k_max), bool),
    )
    init = (none_yet, jnp.full((b,), -jnp.inf, dtype), jnp.ones((b,), dtype))
    estimate, loglik_B, _ = jax.lax.fori_loop(0, passes, next_pass, init)
    if n_restarts:
        start = _restart_starts(n_restarts, k_max, key, points_BxNxD, mask_BxN, k_B)
        fit_one = functools.partial(
            _with_variances, points_BxNxD, mask_BxN, covariance_type=covariance_type, observed=observed
        )
        fits = jax.vmap(
            lambda p: _em(points_BxNxD, mask_BxN, fit_one(params=p), refine_steps, covariance_type, observed)
        )(start)
        loglik = functools.partial(
            _log_likelihood, points_BxNxD, mask_BxN, covariance_type=covariance_type, observed=observed
        )
        ll_RxB = jax.vmap(loglik)(fits)
        all_ll = jnp.concatenate([loglik_B[None], _nan_to_worst(ll_RxB)])
        best_B = jnp.argmax(all_ll, axis=0)
        stacked = jax.tree.map(lambda a, f: jnp.concatenate([a[None], f]), estimate, fits)
        estimate = jax.tree.map(lambda a: jax.vmap(lambda x, i: x[i], in_axes=(1, 0))(a, best_B), stacked)
        loglik_B = jnp.take_along_axis(all_ll, best_B[None], axis=0)[0]
    following = _em_step(points_BxNxD, mask_BxN, estimate, covariance_type, observed)
    next_B = _log_likelihood(points_BxNxD, mask_BxN, following, covariance_type, observed)
    return estimate, loglik_B, next_B


def n_parameters(k, d: int, covariance_type: str, noise_known: bool = False):
    """Free parameters of a K-component fit, as scikit-learn's ``GaussianMixture._n_parameters``: K - 1
    weights, K d means, and K (spherical) or K d (diag) variances, none when the noise variance is known
    (``noise_known``; ``standardize``'s centre and scale are the same for every K and left out)."""
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    variances = 0 if noise_known else (k if covariance_type == "spherical" else k * d)
    return (k - 1) + k * d + variances


# ----------------------------------------------------------------------------------------------------
# Input checks: every message names the problem.


def check_points(X, name: str = "X", missing: str = "error") -> np.ndarray:
    """``X`` as a finite float64 [n_samples, n_features] array, or a ValueError saying what is wrong.

    Accepts NumPy/JAX arrays, nested lists and pandas DataFrames (pandas is not imported here); scipy.sparse
    matrices are refused (the models need every coordinate). ``missing="allow"``: NaN entries are kept (missing
    values; pandas' NA becomes NaN), but a row with every entry missing is refused (it carries no information)
    and infinity is still an error."""
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    if _is_sparse(X):
        raise ValueError(f"{name}: sparse input is not supported; densify it first (e.g. X.toarray())")
    if type(X).__module__.startswith("pandas") and hasattr(X, "to_numpy"):  # DataFrame (or Series)
        try:
            X = X.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must hold real numbers; a pandas column is not numeric ({e})") from None
    arr = np.asarray(X)
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers: Complex data not supported (got dtype {arr.dtype})")
    if arr.dtype == object:  # e.g. a list of mixed ints and floats: numbers are accepted
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:  # a TypeError, as NumPy's and sklearn's check_array raise it
            raise TypeError(
                f"{name} must hold real numbers; an entry of dtype object is not one ({e})"
            ) from None
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers (float32/float64); got dtype {arr.dtype}")
    if arr.ndim == 1:
        raise ValueError(
            f"{name} must be 2-D [n_samples, n_features]; got a 1-D array of shape {arr.shape} "
            "(Reshape your data: X.reshape(-1, 1) for one feature, X.reshape(1, -1) for one sample)"
        )
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_samples, n_features]; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        what = "sample" if arr.shape[0] == 0 else "feature"
        raise ValueError(
            f"{name} is empty: found 0 {what}(s) (shape={arr.shape}) while a minimum of 1 is required."
        )
    arr = np.asarray(arr, np.float64)  # no copy when already float64 (nothing here writes to it)
    nan = np.isnan(arr)
    bad = ~np.isfinite(arr) & ~nan if missing == "allow" else ~np.isfinite(arr)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        hint = (
            "infinity is never a missing value"
            if missing == "allow"
            else "pass missing='allow' to treat NaN as missing values"
        )
        raise ValueError(
            f"{name} contains NaN or infinity ({int(bad.sum())} entries; first at row {row}, column {col}, "
            f"counting from 0; {hint})"
        )
    if missing == "allow" and nan.any():
        empty_N = nan.all(axis=1)
        if empty_N.any():
            row = int(np.argmax(empty_N))
            raise ValueError(
                f"{name}: row {row} (counting from 0) has every value missing (NaN)"
                + (f", as have {int(empty_N.sum()) - 1} more rows" if empty_N.sum() > 1 else "")
                + "; such a row carries no information: drop it"
            )
    return arr


def _is_sparse(X) -> bool:
    sparse = sys.modules.get("scipy.sparse")  # X cannot be a scipy.sparse matrix unless it is imported
    return sparse is not None and sparse.issparse(X)


# scikit-learn's helpers, without importing it (~1 s, mostly scipy.stats): experiments.fit never needs it


def _check_random_state(seed) -> np.random.RandomState:
    """``sklearn.utils.check_random_state``: None (NumPy's global RandomState), an int, or a RandomState."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral):
        return np.random.RandomState(seed)
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"{seed!r} cannot be used to seed a numpy.random.RandomState instance")


def _check_fitted(est) -> None:
    """``sklearn.utils.validation.check_is_fitted``: fitted when an attribute ends in '_'."""
    if not any(v.endswith("_") and not v.startswith("__") for v in vars(est)):
        from sklearn.exceptions import NotFittedError

        raise NotFittedError(
            f"This {type(est).__name__} instance is not fitted yet. Call 'fit' with appropriate arguments "
            "before using this estimator."
        )


def _logsumexp(a_NxK: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """log sum exp over the last axis, shifted by the row's maximum (a row of -inf gives -inf)."""
    top_Nx1 = np.max(a_NxK, axis=-1, keepdims=True)
    top_Nx1 = np.where(np.isfinite(top_Nx1), top_Nx1, 0.0)
    with np.errstate(divide="ignore"):
        out_Nx1 = np.log(np.sum(np.exp(a_NxK - top_Nx1), axis=-1, keepdims=True)) + top_Nx1
    return out_Nx1 if keepdims else out_Nx1[..., 0]


def _shipped_for(k: int, name: str) -> str:
    """The suffix of an error or warning naming the shipped checkpoints (other than ``name``) trained on ``k``;
    '' when there are none."""
    others = [n for n in pretrained.fitting(k) if n != name]
    return (
        f"; shipped checkpoint(s) trained on K = {k}: " + ", ".join(f"checkpoint={n!r}" for n in others)
        if others
        else ""
    )


def _check_k(k, trained: tuple[int, ...], name: str) -> None:
    integer = isinstance(k, (int, np.integer)) and not isinstance(k, bool)
    if not integer or (int(k) != 1 and int(k) not in trained):
        suggestion = _shipped_for(int(k), name) if integer and int(k) > 1 else ""
        raise ValueError(
            f"n_components={k!r} is not in the trained set of checkpoint {name!r}: {trained} "
            f"(K=1 is fitted in closed form; or use n_components='auto' or 'bic'){suggestion}"
        )


# ----------------------------------------------------------------------------------------------------
# Pieces of the fit that need no network: K = 1, duplicate points.


def _distinct_rows(x_NxD: np.ndarray, cap: int) -> int:
    """The number of distinct rows of ``x``, counted up to ``cap`` (``cap`` passes over the data at most;
    usually the first rows already hold ``cap`` distinct ones)."""
    if x_NxD.shape[0] > 4096 and _distinct_rows(x_NxD[:4096], cap) >= cap:
        return cap
    left_N = np.ones(x_NxD.shape[0], bool)
    count = 0
    while count < cap and left_N.any():
        row_D = x_NxD[int(np.argmax(left_N))]
        left_N &= np.any(x_NxD != row_D, axis=1)
        count += 1
    return count


def _one_component_missing(x_NxD: np.ndarray, covariance_type: str) -> tuple[np.ndarray, np.ndarray, float]:
    """``_one_component`` with NaN = missing: the observed-data maximum likelihood (the limit of missing-data
    EM). With a diagonal covariance the dimensions are independent, so each mean is its column's observed
    mean and each variance its observed mean squared deviation (pooled over every observed entry for
    "spherical"); the mean log-likelihood sums each point's observed coordinates only."""
    obs_NxD = ~np.isnan(x_NxD)
    n_D = obs_NxD.sum(axis=0)
    mean_D = np.nanmean(x_NxD, axis=0)
    sq_D = np.nansum(np.square(x_NxD - mean_D), axis=0)
    second_D = sq_D / n_D
    frac_D = n_D / x_NxD.shape[0]  # observed coordinates per point, per dimension
    if covariance_type == "isotropic":
        return mean_D, np.ones_like(mean_D), -0.5 * float(np.sum(frac_D * (np.log(2.0 * np.pi) + second_D)))
    if covariance_type == "spherical":
        second_D = np.full_like(second_D, sq_D.sum() / n_D.sum())
    var_D = second_D + VARIANCE_REG
    loglik = -0.5 * float(np.sum(frac_D * (np.log(2.0 * np.pi * var_D) + second_D / var_D)))
    return mean_D, np.sqrt(var_D), loglik


def _one_component(x_NxD: np.ndarray, covariance_type: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The K = 1 maximum-likelihood fit in closed form: (mean [D], per-dimension standard deviations [D] (the
    variance of ``covariance_type`` plus ``VARIANCE_REG``, as EM's), mean log-likelihood). NaN = missing
    (``_one_component_missing``)."""
    if np.isnan(x_NxD).any():
        return _one_component_missing(x_NxD, covariance_type)
    mean_D = x_NxD.mean(axis=0)
    second_D = np.square(x_NxD - mean_D).mean(axis=0)
    if covariance_type == "isotropic":  # a known noise variance: 1 in the fit's coordinates
        return mean_D, np.ones_like(mean_D), -0.5 * float(np.sum(np.log(2.0 * np.pi) + second_D))
    if covariance_type == "spherical":
        second_D = np.full_like(second_D, second_D.mean())
    var_D = second_D + VARIANCE_REG
    loglik = -0.5 * float(np.sum(np.log(2.0 * np.pi * var_D) + second_D / var_D))
    return mean_D, np.sqrt(var_D), loglik


def _standardize(
    pts_NxD: np.ndarray, standardize: bool, where: str, noise_variance=None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(points in the fit's coordinates (float64), centre [D], scale): x = (points - centre) / scale.

    ``noise_variance`` v (known, in the data's units): scale = sqrt(v), so the noise has unit variance in the
    fit's coordinates, whatever ``standardize`` says; refused where the points lie more than ``MAX_RAW`` noise
    standard deviations from their mean (float32 would lose them).

    ``standardize``: scale = (root mean squared distance to the centre) / sqrt(TRAINING_VARIANCE), so the
    network's first pass sees the training tasks' spread; computed after an exact power-of-two rescaling, so
    nothing overflows for any finite float64 input. Else scale 1 (the data's units).

    NaN entries (missing values) stay NaN: the centre is each column's mean over its observed values, the
    spread the root mean squared deviation over every observed entry, so the fit stays scale-equivariant. A
    column with no observed value is refused (nothing could be said about it)."""
    empty_D = np.isnan(pts_NxD).all(axis=0)
    if empty_D.any():
        raise ValueError(
            f"{where}: column {int(np.argmax(empty_D))} (counting from 0) has no observed value (every entry is "
            "NaN); drop it"
        )
    top = float(np.nanmax(np.abs(pts_NxD)))
    p = 1.0 if top == 0.0 else float(2.0 ** np.frexp(top)[1])  # |pts / p| < 1, exactly
    y_NxD = pts_NxD / p
    centre_D = np.nanmean(y_NxD, axis=0)
    x_NxD = y_NxD - centre_D
    if noise_variance is not None:
        noise_std = float(np.sqrt(noise_variance))
        x_NxD = x_NxD * (p / noise_std)
        big = float(np.nanmax(np.abs(x_NxD)))
        if not big <= MAX_RAW:
            raise ValueError(
                f"{where} has values {big:.3g} noise standard deviations from its mean with "
                f"noise_variance={noise_variance!r}; the fit needs them below {MAX_RAW:g} (is noise_variance "
                "in the data's units?)"
            )
        return x_NxD, centre_D * p, noise_std
    if not standardize:
        x_NxD = x_NxD * p
        big = float(np.nanmax(np.abs(x_NxD)))
        if not big <= MAX_RAW:
            raise ValueError(
                f"{where} has values {big:.3g} from its mean; with standardize=False the fit runs in float32 "
                f"in the data's units and needs them below {MAX_RAW:g} (use standardize=True)"
            )
        return x_NxD, centre_D * p, 1.0
    spread = float(np.sqrt(np.nanmean(np.square(x_NxD))))
    if spread == 0.0:  # every observed value equal to its column's mean: nothing to rescale
        return x_NxD, centre_D * p, 1.0
    scale = spread / np.sqrt(TRAINING_VARIANCE)
    data_scale = scale * p
    if not MIN_SCALE <= data_scale <= MAX_SCALE:
        raise ValueError(
            f"{where} has a spread (root mean squared distance to the mean) of {spread * p:.3g}, outside "
            f"[{MIN_SCALE:g}, {MAX_SCALE:g}]: its variances would under- or overflow float64; rescale it first"
        )
    return x_NxD / scale, centre_D * p, data_scale


class TGMMEstimatorCore:
    """Gaussian mixture fitted in context by a trained TGMM, with scikit-learn's API and attribute names.

    ``TGMMEstimator`` is this class with scikit-learn's ``DensityMixin`` and ``BaseEstimator`` (``get_params``,
    ``clone``, pipelines, grid search); ``TGMMEstimatorCore`` has the same parameters, methods and attributes
    without importing scikit-learn (~1 s of ``experiments.fit``'s start, which uses it).

    Parameters
      n_components  K: 1 (closed form: weight 1, the mean of X, no network) or one of the checkpoint's trained
                    set (2..5 for the shipped model). ``"auto"``: K is the most probable under the learned
                    posterior P(K | X) (``tgmm_jax.number_of_components``: a network trained on K = 1..8,
                    N = 32..128; it reads at most 128 points, a seeded subsample of larger data) among K = 1
                    and the trained set that the data can identify (K <= distinct points); one K is fitted,
                    ``posterior_n_components_`` holds P(K = 1..8 | X), and a UserWarning says when more than
                    half of the posterior lies above the largest K the checkpoint fits. ``"bic"``: K = 1 and
                    every trained K, the trained ones in one batched call, the lowest BIC kept
                    (``bic_by_k_`` holds them all; a K above the number of distinct points is never picked).
                    On held-out tasks of the posterior's prior (results/k_posterior/), the posterior finds the
                    true K 9.5 points more often than BIC over K = 1..8 at N <= 128, with far better calibrated
                    probabilities; on pure Gaussian noise both answer K = 1. With a known ``noise_variance`` the
                    posterior is told it (its noise head; datasets with missing values excepted): 13.1 points
                    over that BIC, 5.1 over BIC told the noise too.
      checkpoint    ``"pretrained"`` (``$TGMM_CHECKPOINT_DIR`` if set, else the shipped dimension-free model,
                    which serves every n_features), a shipped name, or a path to an orbax training workdir or
                    an exported checkpoint directory. Nothing is downloaded.
      refine        ``"none"``: the network's estimate; ``"em"``: then ``em_steps`` EM steps from it.
      em_steps      EM iterations when ``refine="em"`` (also those of each restart), and on large N (below).
      n_restarts    with ``refine="em"``: this many extra EM runs (``em_steps`` each) from k-means++ starts
                    (seeded by ``random_state``); per dataset the fit of highest log-likelihood is kept, the
                    network's start on ties (TGMM is the first restart).
      covariance_type  ``"spherical"`` (default; one variance per component, ``covariances_`` [K]) or
                    ``"diag"`` (one per component and feature, [K, d]), estimated as scikit-learn's
                    ``GaussianMixture`` of that type does (plus ``VARIANCE_REG`` = 1e-6 in the fit's standardised
                    coordinates): with ``refine="none"`` by ``VARIANCE_ITERS`` variance M-steps around the
                    network's means and weights, with ``refine="em"`` then by every EM step.
      noise_variance  None (default): the within-component variances are estimated (``covariance_type``).
                    A number v > 0: every component's noise is known to be isotropic with variance v, in the
                    data's units (the paper's setting is ``noise_variance=1.0``): the fit runs on X / sqrt(v)
                    (one pass, whatever ``standardize`` says), a noise-conditioned checkpoint is told the
                    value, the EM steps keep it, ``covariances_`` holds v and ``bic``/``aic`` count no variance
                    parameters. A noise-conditioned checkpoint (``ModelConfig.noise="conditioned"``) with
                    None is told the noise is unknown and estimates it (scale-equivariant, one pass; with
                    ``"spherical"`` its own per-component variances are kept).
      standardize   True (default): any units. The networks were trained on tasks with unit within-component
                    noise (means in [-5, 5]^d). Each dataset is centred and divided by
                    s1 = (root mean squared distance to the mean) / sqrt(TRAINING_VARIANCE); the network
                    fits it and its variances are estimated (pass 1); then the data is divided by the pooled
                    within-component standard deviation of that fit, so the network sees unit noise, and
                    fitted again (pass 2); the pass of higher log-likelihood is kept and mapped back to the
                    data's units. Every step is scale-equivariant, so the labels do not depend on the units
                    and the parameters scale with them (tested for c X, c in [1e-6, 1e6]). Data whose spread
                    lies outside [MIN_SCALE, MAX_SCALE] = [1e-150, 1e150] is refused (its variances would
                    leave float64). False: X is taken to be at the training scale (the paper's setting) and
                    the network reads it as given (only centred), one pass, float32 in the data's units
                    (|x - mean| above 1e15 is refused).
      missing       ``"error"`` (default): a NaN in X is a ValueError (as is infinity, always). ``"allow"``: NaN
                    entries are missing values (missing at random). A row with every value missing is refused
                    (a ValueError naming it: it carries no information), as is a column with none observed.
                    The centre and spread of ``standardize`` come from the observed values only (the labels
                    stay unit-free). The network, which was not trained with masks, reads the points with each
                    missing value filled by the mean of that coordinate over the point's 5 nearest neighbours,
                    by the coordinates both observe (``tgmm_jax.imputation``); from its estimate, exact
                    missing-data EM steps run (``tgmm_jax.mixture.missing``: the E-step marginalises the
                    missing coordinates, the M-step uses their expected sufficient statistics), at least
                    ``MISSING_EM_STEPS`` (5) of them even with ``refine="none"`` (``em_steps`` when
                    ``refine="em"`` asks for more); ``n_restarts`` seeds k-means++ on the filled points and
                    runs the same exact EM; the best observed-data log-likelihood is kept. ``noise_variance``
                    works as without missing values. ``score_samples``, ``score``, ``predict``,
                    ``predict_proba``, ``bic`` and ``aic`` use the density of each row's observed
                    coordinates (the missing ones marginalised). Data with missing values is limited to
                    ``LARGE_N`` points per dataset (refused above: the streamed EM has no missing-data form).
                    Without any NaN in X, ``"allow"`` gives exactly the default's fit.
      random_state  int, RandomState or None: seeds the k-means++ restarts, the subsample of large data and
                    ``sample`` (as in sklearn).

    Sizes and compilation. The network's program is compiled once per (checkpoint, d, number of tasks,
    refine settings, N bucket): N is padded with masked points (which change nothing) up to the next power of
    two, at least ``MIN_BUCKET`` (32), so a new N in a bucket already seen reuses the compiled program.
    Up to ``LARGE_N`` (2048) points the network reads all of them; its set attention and the greedy/smoothed
    seedings of the shipped model build N x N arrays (about 0.2 GB per dataset and K at N = 2048). Above
    ``LARGE_N``, the network reads ``SUBSAMPLE`` (2048) points drawn uniformly without replacement (seeded by
    ``random_state``), and then ``em_steps`` EM steps run on all the points, whatever ``refine`` says (with
    ``n_restarts``, from every start; the best full-data log-likelihood is kept), streamed in blocks of
    ``STREAM_BLOCK`` points (``tgmm_jax.streaming``): memory O(N K d), any N that fits in memory as an array.
    ``em_steps=0`` keeps the subsample's estimate (still scored on all points). ``predict``, ``score`` and
    the rest work in chunks of ``PREDICT_CHUNK`` rows: O(N K d) as well.

    Duplicate points. With fewer distinct points than ``n_components`` the mixture is not identifiable: the
    fit warns (``sklearn.exceptions.ConvergenceWarning``) and sets ``converged_=False``; if every point is the
    same, the K components are that point (the K = 1 fit repeated) with equal weights 1 / K.

    Fitted attributes: ``weights_`` [K], ``means_`` [K, d], ``covariances_`` ([K] for ``"spherical"``, [K, d]
    for ``"diag"``; in the data's units), ``covariance_type_``, ``precisions_cholesky_``, ``converged_``
    (one more EM step would change the mean log-likelihood by less than ``TOL``; True for K = 1), ``n_iter_``
    (EM steps run), ``lower_bound_`` (mean log-likelihood of X), ``n_components_``, ``n_features_in_``,
    ``bic_by_k_`` ({K: BIC} of every K fitted), ``posterior_n_components_`` (``"auto"``: P(K = 1..8 | X),
    index 0 is K = 1; None otherwise).
    """

    def __init__(
        self,
        n_components=3,
        *,
        checkpoint="pretrained",
        refine="none",
        em_steps=5,
        n_restarts=0,
        covariance_type="spherical",
        noise_variance=None,
        standardize=True,
        missing="error",
        random_state=None,
    ):
        self.n_components = n_components
        self.checkpoint = checkpoint
        self.refine = refine
        self.em_steps = em_steps
        self.n_restarts = n_restarts
        self.covariance_type = covariance_type
        self.noise_variance = noise_variance
        self.standardize = standardize
        self.missing = missing
        self.random_state = random_state

    # -- configuration ---------------------------------------------------------------------------------

    def _setup(self, d: int) -> tuple[pretrained.Checkpoint, tuple[int, ...]]:
        if self.refine not in REFINES:
            raise ValueError(f"refine must be one of {REFINES}, got {self.refine!r}")
        for name in ("em_steps", "n_restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}"
            )
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise ValueError(f"standardize must be True or False, got {self.standardize!r}")
        if not (isinstance(self.missing, str) and self.missing in MISSING):
            raise ValueError(f"missing must be one of {MISSING}, got {self.missing!r}")
        v = self.noise_variance
        if v is not None and (
            isinstance(v, (bool, np.bool_))
            or not isinstance(v, (int, float, np.integer, np.floating))
            or not (np.isfinite(v) and v > 0)
        ):
            raise ValueError(f"noise_variance must be None (estimated) or a finite number > 0, got {v!r}")
        if self.n_restarts and self.refine != "em":
            raise ValueError("n_restarts > 0 needs refine='em' (the restarts are EM runs)")
        ckpt = load_checkpoint(self.checkpoint)
        trained = tuple(int(k) for k in ckpt.spec.ks)
        if not ckpt.model_config.dimension_free and d != ckpt.spec.dim:
            raise ValueError(
                f"X has {d} features but checkpoint {ckpt.name!r} was trained for d={ckpt.spec.dim} only "
                f"(its read-in is fixed); use the dimension-free checkpoint '{pretrained.DEFAULT}'"
            )
        k = self.n_components
        if isinstance(k, str) and k in AUTO_MODES:
            return ckpt, tuple(sorted({1, *trained}))
        _check_k(k, trained, ckpt.name)
        return ckpt, (int(k),)

    def _seed(self) -> int:
        return int(_check_random_state(self.random_state).randint(2**31 - 1))

    # -- fitting ----------------------------------------------------------------------------------------

    def fit_batch(self, X, mask=None, n_components=None) -> MixtureParams:
        """Fits every dataset of ``X`` [B, N, d] (``mask`` [B, N], True = real point; default all) in one
        jitted call (datasets above ``LARGE_N`` points: see the class docstring); ``n_components`` [B]
        optionally gives each dataset its own K (default: the estimator's, ``"auto"`` included). Returns
        ``MixtureParams`` (NumPy float64; weights [B, K_max], means [B, K_max, d], scales [B, K_max, d] (standard
        deviations, equal over d for "spherical"), ``component_mask`` marking each dataset's K). The estimator is unchanged."""
        return self._fit_batch(X, mask, n_components)[0]

    def _fit_batch(self, X, mask, n_components=None, checked: bool = False):
        arr = np.asarray(X)
        if arr.ndim != 3:
            raise ValueError(f"fit_batch expects X of shape [B, N, d]; got shape {arr.shape}")
        mask_BxN = np.ones(arr.shape[:2], bool) if mask is None else np.asarray(mask).astype(bool)
        if mask_BxN.shape != arr.shape[:2]:
            raise ValueError(f"mask must be [B, N] = {arr.shape[:2]}, got shape {mask_BxN.shape}")
        b, _, d = arr.shape
        if b == 0:
            raise ValueError(f"fit_batch got no datasets: X has shape {arr.shape}")
        if checked:  # fit: X passed check_points already
            points_BxNxD = arr
        else:
            # padded points may hold anything (NaN): only the real ones are checked
            real = np.where(mask_BxN[..., None], arr, 0) if arr.dtype.kind in "fiu" else arr
            points_BxNxD = check_points(real.reshape(-1, d), "X", self.missing).reshape(arr.shape)
        ckpt, ks = self._setup(d)
        trained = tuple(int(k) for k in ckpt.spec.ks)
        cand_BxS = np.tile(np.asarray(ks, np.int32), (b, 1))  # candidate Ks: one, or 1 + the trained ("auto")
        if n_components is not None:
            k_B = np.asarray(n_components)
            if k_B.shape != (b,):
                raise ValueError(f"n_components must be [B] = ({b},) in fit_batch, got shape {k_B.shape}")
            for k in np.unique(k_B):
                _check_k(k.item(), trained, ckpt.name)
            cand_BxS = k_B.astype(np.int32)[:, None]
        count_B = mask_BxN.sum(axis=1)
        short_B = count_B < cand_BxS.min(axis=1)
        if short_B.any():
            i = int(np.argmax(short_B))
            raise ValueError(
                f"dataset {i} has {int(count_B[i])} samples but n_components={int(cand_BxS[i].min())} "
                f"needs at least {int(cand_BxS[i].min())}"
            )
        seed = self._seed()
        cov = self.covariance_type
        k_max = max(trained)
        # per dataset: the real points centred (the models are translation invariant) and, with
        # standardize, rescaled; the fit runs in these coordinates and maps back at the end
        xs, centre_BxD, scale_B = [], np.zeros((b, d)), np.ones(b)
        for i in range(b):
            pts_NxD = points_BxNxD[i] if mask_BxN[i].all() else points_BxNxD[i][mask_BxN[i]]
            where = "X" if b == 1 else f"dataset {i}"
            x_NxD, centre_BxD[i], scale_B[i] = _standardize(
                pts_NxD, bool(self.standardize), where, self.noise_variance
            )
            xs.append(x_NxD)
        nan_B = np.array([np.isnan(x).any() for x in xs])
        large_B = count_B > LARGE_N
        if (nan_B & large_B).any():
            i = int(np.argmax(nan_B & large_B))
            raise ValueError(
                f"{'X' if b == 1 else f'dataset {i}'} has {int(count_B[i])} points and missing values: "
                f"missing='allow' fits at most LARGE_N = {LARGE_N} points per dataset (the streamed EM of "
                "larger data has no missing-data form); fit a subsample, or impute the missing values first"
            )
        # observed coordinates per point: the log-likelihood's change of units (d without missing values)
        obs_B = np.array(
            [d if not nan_B[i] else np.mean(np.sum(~np.isnan(x), axis=1)) for i, x in enumerate(xs)]
        )
        # NaN never equals itself: for counting, a missing value is one more value (+inf), equal to itself
        distinct_B = np.array([_distinct_rows(np.where(np.isnan(x), np.inf, x), k_max + 1) for x in xs])
        posterior_BxK = None
        if n_components is None and self.n_components == "auto":  # the learned P(K | X) picks each K
            posterior_BxK, cand_BxS = self._posterior_choice(
                xs, cand_BxS, count_B, distinct_B, seed, ckpt.name
            )

        # every candidate K of every dataset: task (b, j) has K = cand[b, j]; K = 1 in closed form
        s = cand_BxS.shape[1]
        weights = np.zeros((b, s, k_max))
        means = np.zeros((b, s, k_max, d))
        scales = np.ones((b, s, k_max, d))
        comp = np.zeros((b, s, k_max), bool)
        loglik_BxS, next_BxS = np.full((b, s), np.nan), np.full((b, s), np.nan)
        iters_BxS = np.zeros((b, s), np.int64)
        net_BxS = cand_BxS > 1
        if net_BxS.any():
            cols = np.flatnonzero(net_BxS.any(axis=0))
            k_BxC = np.where(net_BxS[:, cols], cand_BxS[:, cols], trained[0]).astype(np.int32)
            key, rng = jax.random.key(seed), np.random.default_rng(seed)
            groups = (
                (~large_B & ~nan_B, self._fit_small),
                (large_B, self._fit_large),
                (nan_B, self._fit_missing),
            )
            per_call = max(1, FIT_TASKS // len(cols))  # datasets per jitted call (FIT_TASKS fits at most)
            for group, fit_group in groups:
                group_rows = np.flatnonzero(group)
                for start in range(0, group_rows.size, per_call):
                    rows = group_rows[start : start + per_call]
                    est, ll_GxC, next_GxC, steps = fit_group(
                        ckpt, key, rng, [xs[i] for i in rows], k_BxC[rows]
                    )
                    at = np.ix_(rows, cols)
                    weights[at], means[at], comp[at] = est.weights, est.means, est.component_mask
                    scales[at] = est.scales
                    loglik_BxS[at], next_BxS[at], iters_BxS[at] = ll_GxC, next_GxC, steps
        one_fits = {}
        for i, j in zip(*np.nonzero(cand_BxS == 1)):
            one_fits[i] = one_fits.get(i) or _one_component(xs[i], self._fit_covariance())
            mean_D, scale_D, ll = one_fits[i]
            weights[i, j], means[i, j], comp[i, j] = 0.0, 0.0, False
            weights[i, j, 0], means[i, j, 0], comp[i, j, 0] = 1.0, mean_D, True
            scales[i, j], scales[i, j, 0] = 1.0, scale_D
            loglik_BxS[i, j] = next_BxS[i, j] = ll
            iters_BxS[i, j] = 0

        change_BxS = np.abs(next_BxS - loglik_BxS)
        loglik_BxS = loglik_BxS - obs_B[:, None] * np.log(scale_B)[:, None]  # in the data's units
        p_BxS = n_parameters(cand_BxS, d, cov, self.noise_variance is not None)
        bic_BxS = -2.0 * loglik_BxS * count_B[:, None] + p_BxS * np.log(count_B)[:, None]
        bic_BxS = np.where(cand_BxS <= count_B[:, None], bic_BxS, np.inf)
        bic_BxS = np.where(np.isnan(bic_BxS), np.inf, bic_BxS)
        # a K above the number of distinct points is not identifiable: never picked (unless it is the only K)
        pick_B = np.argmin(np.where(cand_BxS <= distinct_B[:, None], bic_BxS, np.inf), axis=1)
        at = (np.arange(b), pick_B)
        chosen = MixtureParams(weights[at], means[at], scales[at], comp[at])
        k_B = cand_BxS[at]
        converged_B = change_BxS[at] < TOL
        degenerate_B = k_B > distinct_B
        for i in np.flatnonzero(degenerate_B):
            converged_B[i] = False
            if distinct_B[i] == 1:  # every point the same: K copies of the K = 1 fit, equal weights
                mean_D, scale_D, ll = one_fits.get(i) or _one_component(xs[i], self._fit_covariance())
                k = int(k_B[i])
                chosen.weights[i, :k], chosen.means[i, :k] = 1.0 / k, mean_D
                chosen.scales[i, :k] = scale_D
                loglik_BxS[i, pick_B[i]] = ll - obs_B[i] * np.log(scale_B[i])
        if degenerate_B.any():
            i = int(np.argmax(degenerate_B))
            where = "X" if b == 1 else f"dataset {i}"
            from sklearn.exceptions import ConvergenceWarning  # only here: its import takes ~1 s

            warnings.warn(
                f"{where} has {int(distinct_B[i])} distinct point(s) but n_components={int(k_B[i])}: "
                "components repeat and the fit is not identifiable (converged_=False)"
                + (f"; {int(degenerate_B.sum())} datasets in all" if degenerate_B.sum() > 1 else ""),
                ConvergenceWarning,
                stacklevel=3,
            )
        real_BxK = chosen.component_mask.astype(bool)
        means = np.where(
            real_BxK[..., None], chosen.means * scale_B[:, None, None] + centre_BxD[:, None], 0.0
        )
        out_scales = np.where(real_BxK[..., None], chosen.scales * scale_B[:, None, None], 1.0)
        fitted = MixtureParams(chosen.weights, means, out_scales, real_BxK)
        bad_B = ~(np.isfinite(fitted.weights).all(axis=1) & np.isfinite(means).all(axis=(1, 2)))
        bad_B |= ~np.all(np.isfinite(out_scales) & (out_scales > 0), axis=(1, 2))
        if bad_B.any():  # never hand back NaN: an internal failure, not a fit
            i = int(np.argmax(bad_B))
            raise FloatingPointError(
                f"the fit of {'X' if b == 1 else f'dataset {i}'} gave non-finite or zero parameters; "
                "please report this with the data's shape and scale"
            )
        info = dict(
            loglik=loglik_BxS[at],
            converged=converged_B,
            n_iter=iters_BxS[at],
            bic=(
                {int(k): bic_BxS[:, j] for j, k in enumerate(cand_BxS[0])}
                if posterior_BxK is None
                else {"chosen": bic_BxS[:, 0]}
            ),
            posterior=posterior_BxK,
            checkpoint=ckpt,
        )
        return fitted, info

    def _posterior_choice(self, xs, cand_BxS, count_B, distinct_B, seed, ckpt_name):
        """(P(K = 1..k_max | X) [B, k_max], the chosen K [B, 1]): per dataset the most probable K among the
        candidates (1 and the checkpoint's trained Ks) that its points can identify (K <= samples, K <=
        distinct points), the largest of them standing for itself and every K above it (its probability is
        P(K >= it)); a warning when the posterior prefers K above what the checkpoint ``ckpt_name`` can fit
        (naming the shipped checkpoints that fit K_max)."""
        from tgmm_jax.number_of_components import load_k_posterior, posterior_over_k

        kpost = load_k_posterior()
        # a known noise_variance: xs are in noise units (``_standardize``), so the noise variance there is 1
        known = self.noise_variance is not None and kpost.model.noise_head
        posterior_BxK = posterior_over_k(kpost, xs, seed, noise_variance=1.0 if known else None)
        ks_BxS = cand_BxS[:, cand_BxS[0] <= kpost.k_max]
        fits_BxS = (ks_BxS <= count_B[:, None]) & (ks_BxS <= distinct_B[:, None])
        fits_BxS[:, 0] |= ~fits_BxS.any(axis=1)  # K = 1 is always possible
        prob_BxS = np.take_along_axis(posterior_BxK, ks_BxS - 1, axis=1)
        top_B = np.where(fits_BxS, np.arange(ks_BxS.shape[1]), -1).max(axis=1)  # the largest fitting K
        above_top_B = 1.0 - np.take_along_axis(np.cumsum(posterior_BxK, axis=1), ks_BxS - 1, axis=1)
        prob_BxS[np.arange(len(xs)), top_B] += above_top_B[np.arange(len(xs)), top_B]
        prob_BxS = np.where(fits_BxS, prob_BxS, -1.0)
        chosen_Bx1 = np.take_along_axis(ks_BxS, prob_BxS.argmax(axis=1)[:, None], axis=1)
        above_B = posterior_BxK[:, ks_BxS.max() :].sum(axis=1)
        if (above_B > UNFITTABLE_MASS_WARNING).any():
            i = int(np.argmax(above_B))
            where = "X" if len(xs) == 1 else f"dataset {i}"
            warnings.warn(
                f"{where}: the learned posterior puts {above_B[i]:.2f} of its mass on K > {int(ks_BxS.max())}, "
                f"more components than the checkpoint can fit; n_components={int(chosen_Bx1[i, 0])} is the most "
                "probable K it can fit (posterior_n_components_ holds P(K | X) for K = 1.."
                f"{kpost.k_max}){_shipped_for(kpost.k_max, ckpt_name)}",
                UserWarning,
                stacklevel=4,
            )
        return posterior_BxK, chosen_Bx1.astype(np.int32)

    def _fit_small(self, ckpt, key, rng, xs, k_GxC):
        """The network (and ``refine``'s EM, restarts) on datasets of at most ``LARGE_N`` points, padded to
        their bucket: (MixtureParams [G, C, ...] float64, loglik [G, C], after one more step [G, C],
        steps)."""
        del rng
        (g, c), d = k_GxC.shape, xs[0].shape[1]
        n = bucket_size(max(x.shape[0] for x in xs))
        points = np.zeros((g, c, n, d), np.float32)
        mask = np.zeros((g, c, n), bool)
        for i, x in enumerate(xs):
            points[i, :, : x.shape[0]], mask[i, :, : x.shape[0]] = x, True
        steps = int(self.em_steps) if self.refine == "em" else 0
        estimate, loglik_T, next_T = export_cache.call(  # _fit_tasks(...), traced once per cache entry
            _fit_tasks,
            (
                ckpt.model,
                steps,
                int(self.n_restarts),
                self._fit_covariance(),
                self._passes(ckpt),
                self._network_variances(ckpt),
            ),
            (ckpt.params, key, points.reshape(g * c, n, d), mask.reshape(g * c, n), k_GxC.reshape(-1)),
        )

        def to_gc(a):
            return np.asarray(a, np.float64).reshape((g, c) + a.shape[1:])

        estimate = jax.tree.map(to_gc, estimate)
        estimate = estimate.replace(component_mask=estimate.component_mask.astype(bool))
        return estimate, to_gc(loglik_T), to_gc(next_T), steps

    def _fit_missing(self, ckpt, key, rng, xs, k_GxC):
        """Datasets (at most ``LARGE_N`` points) with missing values (NaN): the network and the k-means++
        seeding of the restarts read the points with each missing value filled from the point's nearest
        neighbours (``tgmm_jax.imputation``); the variance steps, at least ``MISSING_EM_STEPS`` EM steps and the
        log-likelihoods are the exact missing-data ones of ``mixture.missing``. Returns as ``_fit_small``."""
        del rng
        (g, c), d = k_GxC.shape, xs[0].shape[1]
        n = bucket_size(max(x.shape[0] for x in xs))
        points = np.zeros((g, c, n, d), np.float32)
        observed = np.ones((g, c, n, d), bool)
        mask = np.zeros((g, c, n), bool)
        for i, x in enumerate(xs):
            obs_NxD = ~np.isnan(x)
            points[i, :, : x.shape[0]] = imputation.nearest_neighbour_impute(x)
            observed[i, :, : x.shape[0]], mask[i, :, : x.shape[0]] = obs_NxD, True
        steps = max(MISSING_EM_STEPS, int(self.em_steps) if self.refine == "em" else 0)
        estimate, loglik_T, next_T = export_cache.call(  # _fit_tasks_missing(...), traced once per entry
            _fit_tasks_missing,
            (
                ckpt.model,
                steps,
                int(self.n_restarts),
                self._fit_covariance(),
                self._passes(ckpt),
                self._network_variances(ckpt),
            ),
            (
                ckpt.params,
                key,
                points.reshape(g * c, n, d),
                mask.reshape(g * c, n),
                k_GxC.reshape(-1),
                observed.reshape(g * c, n, d),
            ),
        )

        def to_gc(a):
            return np.asarray(a, np.float64).reshape((g, c) + a.shape[1:])

        estimate = jax.tree.map(to_gc, estimate)
        estimate = estimate.replace(component_mask=estimate.component_mask.astype(bool))
        return estimate, to_gc(loglik_T), to_gc(next_T), steps

    def _passes(self, ckpt) -> int:
        """Network passes: 2 (the second at the first's noise scale) only where the noise is estimated, the data
        standardised and the network assumes unit noise; a noise-conditioned network is scale-equivariant."""
        unit_noise = ckpt.model_config.noise != "conditioned"
        return 2 if self.standardize and self.noise_variance is None and unit_noise else 1

    def _fit_covariance(self) -> str:
        """The fit's covariance type: ``"isotropic"`` (unit variance in the fit's coordinates) for a known
        ``noise_variance``, else ``covariance_type``."""
        return "isotropic" if self.noise_variance is not None else self.covariance_type

    def _network_variances(self, ckpt) -> bool:
        """Keep a noise-conditioned network's own spherical variances (estimated noise, spherical type)."""
        return (
            ckpt.model_config.noise == "conditioned"
            and self.noise_variance is None
            and self.covariance_type == "spherical"
        )

    def _fit_large(self, ckpt, key, rng, xs, k_GxC):
        """Datasets above ``LARGE_N`` points: the network (both passes, with variances) on a uniform subsample
        of ``SUBSAMPLE`` points (and the k-means++ starts of ``n_restarts``), then ``em_steps`` EM steps on all
        points in blocks; the best start per task by full-data log-likelihood. Returns as ``_fit_small``."""
        c = k_GxC.shape[1]
        cov = self._fit_covariance()
        sub_GxMxD = np.stack(
            [x[np.sort(rng.choice(x.shape[0], SUBSAMPLE, replace=False))] for x in xs]
        ).astype(np.float32)
        points = np.repeat(sub_GxMxD, c, axis=0)
        mask = np.ones(points.shape[:2], bool)
        k_T = k_GxC.reshape(-1)
        estimate, _, _ = export_cache.call(
            _fit_tasks,
            (ckpt.model, 0, 0, cov, self._passes(ckpt), self._network_variances(ckpt)),
            (ckpt.params, key, points, mask, k_T),
        )
        starts = jax.tree.map(lambda a: np.asarray(a)[None], estimate)
        r = int(self.n_restarts)
        if r:
            extra = _kmeanspp_starts(r, max(ckpt.model.ks), key, points, mask, k_T)
            # the restarts' variances: the network's pooled one, so the first streamed E-step is sensible
            pooled_T = np.asarray(_pooled_variance(estimate))
            extra = extra.replace(
                scales=np.broadcast_to(np.sqrt(pooled_T)[None, :, None, None], extra.means.shape)
            )
            starts = jax.tree.map(lambda a, e: np.concatenate([a, np.asarray(e)]), starts, extra)
        steps = int(self.em_steps)
        outs, lls, nexts = [], [], []
        for i, x in enumerate(xs):
            used = -(-x.shape[0] // STREAM_BLOCK)
            x_MxLxD, mask_MxL, used = to_blocks(x, STREAM_BLOCK, 1 << (used - 1).bit_length())
            start = jax.tree.map(
                lambda a, i=i: a[:, i * c : (i + 1) * c].reshape(((r + 1) * c,) + a.shape[2:]), starts
            )
            if cov == "isotropic":  # known noise: unit variance in the fit's coordinates, no scales
                start = start.replace(scales=None)
            fit, ll_T, next_T = stream_em(x_MxLxD, mask_MxL, used, start, steps, cov)
            if cov == "isotropic":
                fit = fit.replace(scales=jnp.ones_like(fit.means))
            ll_RxC = np.asarray(ll_T, np.float64).reshape(r + 1, c)
            best_C = np.argmax(np.where(np.isnan(ll_RxC), -np.inf, ll_RxC), axis=0)  # the network's on ties
            take = best_C * c + np.arange(c)
            outs.append(jax.tree.map(lambda a, take=take: np.asarray(a, np.float64)[take], fit))
            lls.append(ll_RxC[best_C, np.arange(c)])
            nexts.append(np.asarray(next_T, np.float64)[take])
        estimate = jax.tree.map(lambda *a: np.stack(a), *outs)
        estimate = estimate.replace(component_mask=estimate.component_mask.astype(bool))
        return estimate, np.stack(lls), np.stack(nexts), steps

    def fit(self, X, y=None):
        """Fits one dataset ``X`` [n_samples, n_features]; returns self."""
        del y
        X = check_points(X, missing=self.missing)
        fitted, info = self._fit_batch(X[None], None, checked=True)
        k = int(fitted.component_mask[0].sum())
        self.weights_ = fitted.weights[0, :k]
        self.means_ = fitted.means[0, :k]
        variances_KxD = np.square(fitted.scales[0, :k])
        if self.noise_variance is not None:  # known: exactly the value given (not sqrt(v)^2)
            variances_KxD = np.full_like(variances_KxD, float(self.noise_variance))
        self.covariance_type_ = self.covariance_type
        self.covariances_ = (
            variances_KxD[:, 0].copy() if self.covariance_type == "spherical" else variances_KxD
        )
        self.precisions_cholesky_ = 1.0 / np.sqrt(self.covariances_)
        self.converged_ = bool(info["converged"][0])
        self.n_iter_ = int(info["n_iter"][0])
        self.lower_bound_ = float(info["loglik"][0])
        self.n_components_ = k
        self.n_features_in_ = X.shape[1]
        if info["posterior"] is None:
            self.bic_by_k_ = {kk: float(v[0]) for kk, v in info["bic"].items()}
            self.posterior_n_components_ = None
        else:  # "auto": one K fitted; P(K = 1..k_max | X) as an array (index 0 is K = 1)
            self.bic_by_k_ = {k: float(info["bic"]["chosen"][0])}
            self.posterior_n_components_ = info["posterior"][0]
        self.checkpoint_name_ = info["checkpoint"].name
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X, y).predict(X)

    # -- the fitted mixture (float64 NumPy) ---------------------------------------------------------------

    def _check_X(self, X) -> np.ndarray:
        _check_fitted(self)
        X = check_points(X, missing=getattr(self, "missing", "error"))
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but TGMMEstimator is expecting {self.n_features_in_} features "
                "as input (the number it was fitted on)"
            )
        return X

    def _log_joint(self, X) -> np.ndarray:
        """log(w_k) + log N(x | mu_k, diag(var_k)) [N, K] of the fitted parameters, in float64 NumPy: the
        host form of ``gmm.component_log_density`` (the fit's float32 JAX core), so that ``score``,
        ``predict_proba`` and ``bic`` agree with scikit-learn's and SciPy's float64 densities to 1e-10 (tested);
        a missing coordinate (NaN) is marginalised."""
        var_KxD = np.broadcast_to(
            self.covariances_[:, None] if self.covariances_.ndim == 1 else self.covariances_,
            self.means_.shape,
        )
        log_det_K = np.sum(np.log(2.0 * np.pi * var_KxD), axis=-1)
        with np.errstate(divide="ignore"):
            log_w_K = np.log(self.weights_)
        out_NxK = np.empty((X.shape[0], self.means_.shape[0]))
        for start in range(0, X.shape[0], PREDICT_CHUNK):  # memory O(chunk K d), never N x N
            x_CxD = X[start : start + PREDICT_CHUNK]
            if np.isnan(x_CxD).any():  # missing values: the density of each row's observed coordinates
                obs_CxD = ~np.isnan(x_CxD)
                diff_CxKxD = np.where(obs_CxD[:, None, :], x_CxD[:, None, :] - self.means_[None], 0.0)
                sq_CxK = np.sum(diff_CxKxD**2 / var_KxD[None], axis=-1)
                log_det_CxK = obs_CxD.astype(np.float64) @ np.log(2.0 * np.pi * var_KxD).T
                out_NxK[start : start + PREDICT_CHUNK] = log_w_K[None] - 0.5 * (sq_CxK + log_det_CxK)
                continue
            sq_CxK = np.sum((x_CxD[:, None, :] - self.means_[None]) ** 2 / var_KxD[None], axis=-1)
            out_NxK[start : start + PREDICT_CHUNK] = log_w_K[None] - 0.5 * (sq_CxK + log_det_K[None])
        return out_NxK

    def score_samples(self, X) -> np.ndarray:
        """log p(x) of each sample: [n_samples]; with ``missing="allow"``, the density of a row's observed
        coordinates (its missing ones marginalised)."""
        return _logsumexp(self._log_joint(self._check_X(X)))

    def score(self, X, y=None) -> float:
        """Mean log-likelihood per sample."""
        del y
        return float(np.mean(self.score_samples(X)))

    def predict_proba(self, X) -> np.ndarray:
        """Posterior p(component | x): [n_samples, n_components_]."""
        log_joint = self._log_joint(self._check_X(X))
        return np.exp(log_joint - _logsumexp(log_joint, keepdims=True))

    def predict(self, X) -> np.ndarray:
        return np.argmax(self._log_joint(self._check_X(X)), axis=1)

    def _n_parameters(self) -> int:
        return n_parameters(
            self.n_components_, self.n_features_in_, self.covariance_type_, self.noise_variance is not None
        )

    def bic(self, X) -> float:
        """-2 log L + p log N with p = ``n_parameters`` (counted as scikit-learn's ``GaussianMixture``)."""
        X = self._check_X(X)
        return -2.0 * self.score(X) * X.shape[0] + self._n_parameters() * np.log(X.shape[0])

    def aic(self, X) -> float:
        X = self._check_X(X)
        return -2.0 * self.score(X) * X.shape[0] + 2.0 * self._n_parameters()

    def sample(self, n_samples: int = 1):
        """(X [n_samples, d], component labels [n_samples]) drawn from the fitted mixture (``random_state``)."""
        _check_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        rng = _check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_ / self.weights_.sum())
        y = np.repeat(np.arange(self.n_components_), counts)
        std = np.sqrt(self.covariances_[:, None] if self.covariances_.ndim == 1 else self.covariances_)
        X = self.means_[y] + std[y] * rng.standard_normal((n_samples, self.n_features_in_))
        return X, y

    def to_sklearn(self):
        """A fitted ``sklearn.mixture.GaussianMixture`` holding these parameters (spherical or diag)."""
        from sklearn.mixture import GaussianMixture

        _check_fitted(self)
        out = GaussianMixture(self.n_components_, covariance_type=self.covariance_type_)
        out.weights_ = self.weights_.copy()
        out.means_ = self.means_.copy()
        out.covariances_ = self.covariances_.copy()
        out.precisions_cholesky_ = 1.0 / np.sqrt(self.covariances_)
        out.precisions_ = 1.0 / self.covariances_
        out.converged_, out.n_iter_, out.lower_bound_ = self.converged_, self.n_iter_, self.lower_bound_
        out.n_features_in_ = self.n_features_in_
        return out


def __getattr__(name: str):
    """``TGMMEstimator`` (``tgmm_jax._estimator_sklearn``) is built on first use: it imports scikit-learn."""
    if name == "TGMMEstimator":
        from tgmm_jax._estimator_sklearn import TGMMEstimator

        globals()["TGMMEstimator"] = TGMMEstimator
        return TGMMEstimator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
