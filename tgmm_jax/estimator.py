"""A scikit-learn-style Gaussian-mixture estimator on a trained TGMM: ``TGMMEstimator``.

    from tgmm_jax.estimator import TGMMEstimator
    gm = TGMMEstimator(n_components=3).fit(X)          # X: [n_samples, n_features], any n_features
    labels = gm.predict(X); gm.means_, gm.weights_, gm.covariances_

The default checkpoint is the dimension-free clustering model shipped in ``tgmm_jax/pretrained/`` (nothing
downloads). Fitting runs the same method function as ``tgmm_jax.scoring`` (``scoring.model_method``: the
network's forward, then ``refine.em_refine`` EM steps when ``refine="em"``), jitted once per shape bucket
(``bucket_size``: N is padded with masked points up to a power of two, so new N rarely compile again); above
``LARGE_N`` points the network reads a seeded subsample and EM runs on all points in blocks
(``tgmm_jax.streaming``), so memory stays O(N K d). K = 1 is closed form. Predictions on a fitted estimator
are float64 NumPy, like ``sklearn.mixture.GaussianMixture``.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from tgmm_jax import gmm, pretrained, scoring
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.pretrained import load_checkpoint
from tgmm_jax.refine import VARIANCE_REG, em_refine, em_step
from tgmm_jax.streaming import TRACE_COUNTS, count_trace, stream_em, to_blocks
from tgmm_jax.tasks import GMMTask

__all__ = [
    "LARGE_N", "MIN_BUCKET", "PREDICT_CHUNK", "REFINES", "STREAM_BLOCK", "SUBSAMPLE", "TOL", "TRACE_COUNTS",
    "TRAINING_VARIANCE", "TGMMEstimator", "bucket_size", "check_points", "n_parameters",
]  # fmt: skip
# TRACE_COUNTS (re-exported from tgmm_jax.streaming): how often each jitted fit program was traced (compiled)

REFINES = ("none", "em")
# Mean per-feature variance of the training tasks (U[-5, 5] means, unit noise, K in 2..5): 6.4-7.4 for
# d = 2, 8, 32 (256 tasks per K of sample_tasks). ``standardize=True`` rescales data to it.
TRAINING_VARIANCE = 6.5
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
PREDICT_CHUNK = 65536  # rows per chunk in predict / score_samples / predict_proba: memory O(chunk K d)


def bucket_size(n: int) -> int:
    """The padded length of ``n`` points: the next power of two, at least ``MIN_BUCKET``."""
    return max(MIN_BUCKET, 1 << max(int(n) - 1, 0).bit_length())


# ----------------------------------------------------------------------------------------------------
# The batched fit: one jitted call per (model, steps, restarts, shapes).


def _kmeanspp_start(key, points_NxD, mask_N, k, k_max: int, with_scales: bool) -> MixtureParams:
    """k-means++ seeding (D^2 sampling over real points) and the hard-assignment M-step of its centres."""
    mask_N = mask_N.astype(bool)

    def pick(j, state):
        centres_KxD, d2_N = state
        logits_N = jnp.where(mask_N, jnp.log(jnp.maximum(d2_N, 1e-30)), -jnp.inf)
        c_D = points_NxD[jax.random.categorical(jax.random.fold_in(key, j), logits_N)]
        return centres_KxD.at[j].set(c_D), jnp.minimum(d2_N, jnp.sum((points_NxD - c_D[None]) ** 2, axis=-1))

    init = (
        jnp.zeros((k_max, points_NxD.shape[-1]), points_NxD.dtype),
        jnp.ones(mask_N.shape, points_NxD.dtype),
    )
    centres_KxD, _ = jax.lax.fori_loop(0, k_max, pick, init)
    comp_K = jnp.arange(k_max) < k
    sq_NxK = jnp.sum((points_NxD[:, None, :] - centres_KxD[None]) ** 2, axis=-1)
    hard_NxK = (
        jax.nn.one_hot(jnp.argmin(jnp.where(comp_K[None], sq_NxK, jnp.inf), axis=-1), k_max) * mask_N[:, None]
    )
    count_K = jnp.sum(hard_NxK, axis=0)
    means_KxD = jnp.where(
        count_K[:, None] > 0, hard_NxK.T @ points_NxD / jnp.maximum(count_K, 1)[:, None], centres_KxD
    )
    weights_K = jnp.where(comp_K, count_K / jnp.maximum(jnp.sum(mask_N), 1), 0.0)
    scales = jnp.ones_like(means_KxD) if with_scales else None
    return MixtureParams(weights_K, jnp.where(comp_K[:, None], means_KxD, 0.0), scales, comp_K)


def _restart_starts(n_restarts: int, k_max: int, with_scales: bool, key, points_BxNxD, mask_BxN, k_B):
    """``n_restarts`` k-means++ starts per task: MixtureParams with leading dims [R, B]."""
    b = points_BxNxD.shape[0]
    keys_RxB = jax.vmap(lambda r: jax.random.split(jax.random.fold_in(key, r), b))(jnp.arange(n_restarts))
    return jax.vmap(  # over restarts, then tasks
        jax.vmap(lambda kk, x, m, k: _kmeanspp_start(kk, x, m, k, k_max, with_scales)),
        in_axes=(0, None, None, None),
    )(keys_RxB, points_BxNxD, mask_BxN, k_B)


@functools.partial(jax.jit, static_argnames=("n_restarts", "k_max", "with_scales"))
def _kmeanspp_starts(n_restarts: int, k_max: int, with_scales: bool, key, points_BxNxD, mask_BxN, k_B):
    count_trace("kmeanspp_starts")
    return _restart_starts(n_restarts, k_max, with_scales, key, points_BxNxD, mask_BxN, k_B)


@functools.partial(jax.jit, static_argnames=("model", "refine_steps", "n_restarts"))
def _fit_tasks(model, refine_steps: int, n_restarts: int, params, key, points_BxNxD, mask_BxN, k_B):
    """The method ``scoring.model_method(model, refine_steps)`` on the tasks, then (``n_restarts`` > 0) as many
    EM runs of ``refine_steps`` steps from k-means++ starts; per task the fit of highest log-likelihood wins
    (the network's on ties). Returns the estimate, its mean log-likelihood and that after one more EM step."""
    count_trace("fit_tasks")
    k_max = max(model.ks)
    b, n, d = points_BxNxD.shape
    comp_BxK = jnp.arange(k_max)[None, :] < k_B[:, None]
    zeros = jnp.zeros((b, k_max), points_BxNxD.dtype)
    task = GMMTask(
        points_BxNxD, mask_BxN, jnp.zeros((b, n), jnp.int32), zeros, jnp.zeros((b, k_max, d)),
        jnp.ones((b, k_max, d)), comp_BxK, k_B,
    )  # fmt: skip
    estimate, _ = scoring.model_method(model, refine_steps)(params, key, task)
    loglik_B = gmm.mean_log_likelihood(points_BxNxD, mask_BxN, estimate)
    if n_restarts:
        start = _restart_starts(
            n_restarts, k_max, estimate.scales is not None, key, points_BxNxD, mask_BxN, k_B
        )
        fits = jax.vmap(lambda p: em_refine(points_BxNxD, mask_BxN, p, refine_steps))(start)
        ll_RxB = jax.vmap(lambda p: gmm.mean_log_likelihood(points_BxNxD, mask_BxN, p))(fits)
        all_ll = jnp.concatenate([loglik_B[None], ll_RxB])
        best_B = jnp.argmax(jnp.where(jnp.isnan(all_ll), -jnp.inf, all_ll), axis=0)
        stacked = jax.tree.map(lambda a, f: jnp.concatenate([a[None], f]), estimate, fits)
        estimate = jax.tree.map(lambda a: jax.vmap(lambda x, i: x[i], in_axes=(1, 0))(a, best_B), stacked)
        loglik_B = jnp.take_along_axis(all_ll, best_B[None], axis=0)[0]
    next_B = gmm.mean_log_likelihood(points_BxNxD, mask_BxN, em_step(points_BxNxD, mask_BxN, estimate))
    return estimate, loglik_B, next_B


def n_parameters(k, d: int, diag_scales: bool):
    """Free parameters of a K-component fit: K - 1 weights, K d means, K d scales when estimated (the
    isotropic model fixes unit variance; ``standardize``'s one scale is the same for every K and left out)."""
    return (k - 1) + k * d + (k * d if diag_scales else 0)


# ----------------------------------------------------------------------------------------------------
# Input checks: every message names the problem.


def check_points(X, name: str = "X") -> np.ndarray:
    """``X`` as a finite float64 [n_samples, n_features] array, or a ValueError saying what is wrong.

    Accepts NumPy/JAX arrays, nested lists and pandas DataFrames (pandas is not imported here); scipy.sparse
    matrices are refused (the models need every coordinate)."""
    if _is_sparse(X):
        raise ValueError(f"{name}: sparse input is not supported; densify it first (e.g. X.toarray())")
    if type(X).__module__.startswith("pandas") and hasattr(X, "to_numpy"):  # DataFrame (or Series)
        try:
            X = X.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must hold real numbers; a pandas column is not numeric ({e})") from None
    arr = np.asarray(X)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers (float32/float64); got dtype {arr.dtype}")
    if arr.ndim == 1:
        raise ValueError(
            f"{name} must be 2-D [n_samples, n_features]; got a 1-D array of shape {arr.shape} "
            "(for one feature pass X.reshape(-1, 1))"
        )
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_samples, n_features]; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    arr = np.asarray(arr, np.float64)  # no copy when already float64 (nothing here writes to it)
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains NaN or infinity ({int(bad.sum())} entries; first at row {row}, column {col}, "
            "counting from 0)"
        )
    return arr


def _is_sparse(X) -> bool:
    import scipy.sparse  # scipy is a dependency (scipy.special above); the sparse module loads lazily

    return scipy.sparse.issparse(X)


def _check_k(k, trained: tuple[int, ...], name: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or (int(k) != 1 and int(k) not in trained):
        raise ValueError(
            f"n_components={k!r} is not in the trained set of checkpoint {name!r}: {trained} "
            "(K=1 is fitted in closed form; or use n_components='auto')"
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


def _one_component(x_NxD: np.ndarray, with_scales: bool) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The K = 1 maximum-likelihood fit in closed form: (mean [D], per-dimension scales [D] (the variance plus
    ``VARIANCE_REG``, as EM's) or None for unit variance, mean log-likelihood)."""
    mean_D = x_NxD.mean(axis=0)
    second_D = np.square(x_NxD - mean_D).mean(axis=0)
    var_D = second_D + VARIANCE_REG if with_scales else np.ones_like(second_D)
    loglik = -0.5 * float(np.sum(np.log(2.0 * np.pi * var_D) + second_D / var_D))
    return mean_D, (np.sqrt(var_D) if with_scales else None), loglik


class TGMMEstimator(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted in context by a trained TGMM, with scikit-learn's API and attribute names.

    Parameters
      n_components  K: 1 (closed form: weight 1, the mean of X, no network) or one of the checkpoint's trained
                    set (2..5 for the shipped model); or ``"auto"``: K = 1 and every trained K, the trained
                    ones in one batched call, the lowest BIC kept (``bic_by_k_`` holds them all; a K above
                    the number of distinct points is never picked).
      checkpoint    ``"pretrained"`` (``$TGMM_CHECKPOINT_DIR`` if set, else the shipped dimension-free model,
                    which serves every n_features), a shipped name, or a path to an orbax training workdir or
                    an exported checkpoint directory. Nothing is downloaded.
      refine        ``"none"``: the network's estimate; ``"em"``: then ``em_steps`` EM steps from it.
      em_steps      EM iterations when ``refine="em"`` (also those of each restart), and on large N (below).
      n_restarts    with ``refine="em"``: this many extra EM runs (``em_steps`` each) from k-means++ starts
                    (seeded by ``random_state``); per dataset the fit of highest log-likelihood is kept, the
                    network's start on ties (TGMM is the first restart).
      standardize   the models assume unit component variance at the training scale (means in [-5, 5]).
                    True maps each dataset by x -> (x - mean) / s, s^2 = (mean per-feature variance) /
                    TRAINING_VARIANCE, fits, and maps the parameters back (covariances_ become s^2). Use it
                    for data in other units; it keeps the ratio of noise to spread, which no rescaling can fix.
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

    Fitted attributes: ``weights_`` [K], ``means_`` [K, d], ``covariances_`` ([K] spherical variances for an
    isotropic model, [K, d] diagonal for an anisotropic one), ``precisions_cholesky_``, ``converged_``
    (one more EM step would change the mean log-likelihood by less than ``TOL``; True for K = 1), ``n_iter_``
    (EM steps run), ``lower_bound_`` (mean log-likelihood of X), ``n_components_``, ``n_features_in_``.
    """

    def __init__(
        self,
        n_components=3,
        *,
        checkpoint="pretrained",
        refine="none",
        em_steps=5,
        n_restarts=0,
        standardize=False,
        random_state=None,
    ):
        self.n_components = n_components
        self.checkpoint = checkpoint
        self.refine = refine
        self.em_steps = em_steps
        self.n_restarts = n_restarts
        self.standardize = standardize
        self.random_state = random_state

    # -- configuration ---------------------------------------------------------------------------------

    def _setup(self, d: int) -> tuple[pretrained.Checkpoint, tuple[int, ...]]:
        if self.refine not in REFINES:
            raise ValueError(f"refine must be one of {REFINES}, got {self.refine!r}")
        for name in ("em_steps", "n_restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
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
        if isinstance(k, str) and k == "auto":
            return ckpt, tuple(sorted({1, *trained}))
        _check_k(k, trained, ckpt.name)
        return ckpt, (int(k),)

    def _seed(self) -> int:
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    # -- fitting ----------------------------------------------------------------------------------------

    def fit_batch(self, X, mask=None, n_components=None) -> MixtureParams:
        """Fits every dataset of ``X`` [B, N, d] (``mask`` [B, N], True = real point; default all) in one
        jitted call (datasets above ``LARGE_N`` points: see the class docstring); ``n_components`` [B]
        optionally gives each dataset its own K (default: the estimator's, ``"auto"`` included). Returns
        ``MixtureParams`` (NumPy float64; weights [B, K_max], means [B, K_max, d], scales None for unit
        variance, ``component_mask`` marking each dataset's K). The estimator is unchanged."""
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
            points_BxNxD = check_points(real.reshape(-1, d), "X").reshape(arr.shape)
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
        with_scales = ckpt.spec.variant == "anisotropic"
        k_max = max(trained)
        # per dataset: the real points, centred in float64 (the models are translation invariant), rescaled
        xs, centre_BxD, scale_B = [], np.zeros((b, d)), np.ones(b)
        for i in range(b):
            pts_NxD = points_BxNxD[i] if mask_BxN[i].all() else points_BxNxD[i][mask_BxN[i]]
            centre_BxD[i] = pts_NxD.mean(axis=0)
            x_NxD = pts_NxD - centre_BxD[i]
            if self.standardize:
                scale_B[i] = np.sqrt(max(float(np.mean(x_NxD**2)), 1e-300) / TRAINING_VARIANCE)
                x_NxD /= scale_B[i]
            xs.append(x_NxD)
        distinct_B = np.array([_distinct_rows(x, k_max + 1) for x in xs])

        # every candidate K of every dataset: task (b, j) has K = cand[b, j]; K = 1 in closed form
        s = cand_BxS.shape[1]
        weights = np.zeros((b, s, k_max))
        means = np.zeros((b, s, k_max, d))
        scales = np.ones((b, s, k_max, d)) if with_scales else None
        comp = np.zeros((b, s, k_max), bool)
        loglik_BxS, next_BxS = np.full((b, s), np.nan), np.full((b, s), np.nan)
        iters_BxS = np.zeros((b, s), np.int64)
        net_BxS = cand_BxS > 1
        if net_BxS.any():
            cols = np.flatnonzero(net_BxS.any(axis=0))
            k_BxC = np.where(net_BxS[:, cols], cand_BxS[:, cols], trained[0]).astype(np.int32)
            key, rng = jax.random.key(seed), np.random.default_rng(seed)
            large_B = count_B > LARGE_N
            for group, fit_group in ((~large_B, self._fit_small), (large_B, self._fit_large)):
                rows = np.flatnonzero(group)
                if rows.size == 0:
                    continue
                est, ll_GxC, next_GxC, steps = fit_group(ckpt, key, rng, [xs[i] for i in rows], k_BxC[rows])
                at = np.ix_(rows, cols)
                weights[at], means[at], comp[at] = est.weights, est.means, est.component_mask
                if scales is not None and est.scales is not None:
                    scales[at] = est.scales
                loglik_BxS[at], next_BxS[at], iters_BxS[at] = ll_GxC, next_GxC, steps
        one_fits = {}
        for i, j in zip(*np.nonzero(cand_BxS == 1)):
            one_fits[i] = one_fits.get(i) or _one_component(xs[i], with_scales)
            mean_D, scale_D, ll = one_fits[i]
            weights[i, j], means[i, j], comp[i, j] = 0.0, 0.0, False
            weights[i, j, 0], means[i, j, 0], comp[i, j, 0] = 1.0, mean_D, True
            if scales is not None:
                scales[i, j], scales[i, j, 0] = 1.0, scale_D
            loglik_BxS[i, j] = next_BxS[i, j] = ll
            iters_BxS[i, j] = 0

        change_BxS = np.abs(next_BxS - loglik_BxS)
        loglik_BxS = loglik_BxS - d * np.log(scale_B)[:, None]
        p_BxS = n_parameters(cand_BxS, d, with_scales)
        bic_BxS = -2.0 * loglik_BxS * count_B[:, None] + p_BxS * np.log(count_B)[:, None]
        bic_BxS = np.where(cand_BxS <= count_B[:, None], bic_BxS, np.inf)
        bic_BxS = np.where(np.isnan(bic_BxS), np.inf, bic_BxS)
        # a K above the number of distinct points is not identifiable: never picked (unless it is the only K)
        pick_B = np.argmin(np.where(cand_BxS <= distinct_B[:, None], bic_BxS, np.inf), axis=1)
        at = (np.arange(b), pick_B)
        chosen = MixtureParams(weights[at], means[at], None if scales is None else scales[at], comp[at])
        k_B = cand_BxS[at]
        converged_B = change_BxS[at] < TOL
        degenerate_B = k_B > distinct_B
        for i in np.flatnonzero(degenerate_B):
            converged_B[i] = False
            if distinct_B[i] == 1:  # every point the same: K copies of the K = 1 fit, equal weights
                mean_D, scale_D, ll = one_fits.get(i) or _one_component(xs[i], with_scales)
                k = int(k_B[i])
                chosen.weights[i, :k], chosen.means[i, :k] = 1.0 / k, mean_D
                if chosen.scales is not None:
                    chosen.scales[i, :k] = scale_D
                loglik_BxS[i, pick_B[i]] = ll - d * np.log(scale_B[i])
        if degenerate_B.any():
            i = int(np.argmax(degenerate_B))
            where = "X" if b == 1 else f"dataset {i}"
            warnings.warn(
                f"{where} has {int(distinct_B[i])} distinct point(s) but n_components={int(k_B[i])}: "
                "components repeat and the fit is not identifiable (converged_=False)"
                + (f"; {int(degenerate_B.sum())} datasets in all" if degenerate_B.sum() > 1 else ""),
                ConvergenceWarning,
                stacklevel=3,
            )
        means = chosen.means * scale_B[:, None, None] + centre_BxD[:, None]
        means = np.where(chosen.component_mask[..., None], means, 0.0)
        out_scales = chosen.scales
        if self.standardize:
            base = np.ones_like(means) if out_scales is None else out_scales
            out_scales = np.where(chosen.component_mask[..., None], base * scale_B[:, None, None], 1.0)
        fitted = MixtureParams(chosen.weights, means, out_scales, chosen.component_mask.astype(bool))
        info = dict(
            loglik=loglik_BxS[at],
            converged=converged_B,
            n_iter=iters_BxS[at],
            bic={int(k): bic_BxS[:, j] for j, k in enumerate(cand_BxS[0])},
            checkpoint=ckpt,
        )
        return fitted, info

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
        estimate, loglik_T, next_T = _fit_tasks(
            ckpt.model,
            steps,
            int(self.n_restarts),
            ckpt.params,
            key,
            points.reshape(g * c, n, d),
            mask.reshape(g * c, n),
            k_GxC.reshape(-1),
        )

        def to_gc(a):
            return np.asarray(a, np.float64).reshape((g, c) + a.shape[1:])

        estimate = jax.tree.map(to_gc, estimate)
        estimate = estimate.replace(component_mask=estimate.component_mask.astype(bool))
        return estimate, to_gc(loglik_T), to_gc(next_T), steps

    def _fit_large(self, ckpt, key, rng, xs, k_GxC):
        """Datasets above ``LARGE_N`` points: the network on a uniform subsample of ``SUBSAMPLE`` points (and
        the k-means++ starts of ``n_restarts``), then ``em_steps`` EM steps on all points in blocks; the best
        start per task by full-data log-likelihood. Returns as ``_fit_small``."""
        c = k_GxC.shape[1]
        sub_GxMxD = np.stack(
            [x[np.sort(rng.choice(x.shape[0], SUBSAMPLE, replace=False))] for x in xs]
        ).astype(np.float32)
        points = np.repeat(sub_GxMxD, c, axis=0)
        mask = np.ones(points.shape[:2], bool)
        k_T = k_GxC.reshape(-1)
        estimate, _, _ = _fit_tasks(ckpt.model, 0, 0, ckpt.params, key, points, mask, k_T)
        starts = jax.tree.map(lambda a: np.asarray(a)[None], estimate)
        r = int(self.n_restarts)
        if r:
            extra = _kmeanspp_starts(
                r, max(ckpt.model.ks), estimate.scales is not None, key, points, mask, k_T
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
            fit, ll_T, next_T = stream_em(x_MxLxD, mask_MxL, used, start, steps)
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
        X = check_points(X)
        fitted, info = self._fit_batch(X[None], None, checked=True)
        k = int(fitted.component_mask[0].sum())
        self.weights_ = fitted.weights[0, :k]
        self.means_ = fitted.means[0, :k]
        ckpt = info["checkpoint"]
        if ckpt.spec.variant == "anisotropic":
            self.covariance_type_ = "diag"
            self.covariances_ = (
                np.square(fitted.scales[0, :k]) if fitted.scales is not None else np.ones((k, X.shape[1]))
            )
        else:
            self.covariance_type_ = "spherical"
            var = 1.0 if fitted.scales is None else float(fitted.scales[0, 0, 0]) ** 2
            self.covariances_ = np.full(k, var)
        self.precisions_cholesky_ = 1.0 / np.sqrt(self.covariances_)
        self.converged_ = bool(info["converged"][0])
        self.n_iter_ = int(info["n_iter"][0])
        self.lower_bound_ = float(info["loglik"][0])
        self.n_components_ = k
        self.n_features_in_ = X.shape[1]
        self.bic_by_k_ = {kk: float(v[0]) for kk, v in info["bic"].items()}
        self.checkpoint_name_ = ckpt.name
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X, y).predict(X)

    # -- the fitted mixture (float64 NumPy) ---------------------------------------------------------------

    def _check_X(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = check_points(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but the mixture was fitted on {self.n_features_in_}"
            )
        return X

    def _log_joint(self, X) -> np.ndarray:
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
            sq_CxK = np.sum((x_CxD[:, None, :] - self.means_[None]) ** 2 / var_KxD[None], axis=-1)
            out_NxK[start : start + PREDICT_CHUNK] = log_w_K[None] - 0.5 * (sq_CxK + log_det_K[None])
        return out_NxK

    def score_samples(self, X) -> np.ndarray:
        """log p(x) of each sample: [n_samples]."""
        return logsumexp(self._log_joint(self._check_X(X)), axis=1)

    def score(self, X, y=None) -> float:
        """Mean log-likelihood per sample."""
        del y
        return float(np.mean(self.score_samples(X)))

    def predict_proba(self, X) -> np.ndarray:
        """Posterior p(component | x): [n_samples, n_components_]."""
        log_joint = self._log_joint(self._check_X(X))
        return np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))

    def predict(self, X) -> np.ndarray:
        return np.argmax(self._log_joint(self._check_X(X)), axis=1)

    def _n_parameters(self) -> int:
        return n_parameters(self.n_components_, self.n_features_in_, self.covariance_type_ == "diag")

    def bic(self, X) -> float:
        """-2 log L + p log N with p = ``n_parameters`` (unit variances are fixed, not counted)."""
        X = self._check_X(X)
        return -2.0 * self.score(X) * X.shape[0] + self._n_parameters() * np.log(X.shape[0])

    def aic(self, X) -> float:
        X = self._check_X(X)
        return -2.0 * self.score(X) * X.shape[0] + 2.0 * self._n_parameters()

    def sample(self, n_samples: int = 1):
        """(X [n_samples, d], component labels [n_samples]) drawn from the fitted mixture (``random_state``)."""
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_ / self.weights_.sum())
        y = np.repeat(np.arange(self.n_components_), counts)
        std = np.sqrt(self.covariances_[:, None] if self.covariances_.ndim == 1 else self.covariances_)
        X = self.means_[y] + std[y] * rng.standard_normal((n_samples, self.n_features_in_))
        return X, y

    def to_sklearn(self):
        """A fitted ``sklearn.mixture.GaussianMixture`` holding these parameters (spherical or diag)."""
        from sklearn.mixture import GaussianMixture

        check_is_fitted(self)
        out = GaussianMixture(self.n_components_, covariance_type=self.covariance_type_)
        out.weights_ = self.weights_.copy()
        out.means_ = self.means_.copy()
        out.covariances_ = self.covariances_.copy()
        out.precisions_cholesky_ = 1.0 / np.sqrt(self.covariances_)
        out.precisions_ = 1.0 / self.covariances_
        out.converged_, out.n_iter_, out.lower_bound_ = self.converged_, self.n_iter_, self.lower_bound_
        out.n_features_in_ = self.n_features_in_
        return out
