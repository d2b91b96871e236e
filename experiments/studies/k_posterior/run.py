"""How many clusters: the learned P(K | X) (``KPosterior``) against BIC, AIC and variational Bayes.

    python -m experiments.studies.k_posterior.run --workdir=runs/k_posterior --results=results/k_posterior/

Held-out tasks from the training prior (experiments/train_k_posterior.py ``task_spec``: Algorithm 1 without the
cosine filter, means U[-5, 5]^D, unit isotropic noise, weights sort(U[0.2, 0.8]^K) normalised), drawn with a
seed the training stream never uses, in cells D in ``--dims``, N in ``--ns`` (fixed N per cell), true K in 1..8,
``--tasks`` tasks per cell in chunks of ``CHUNK`` (each chunk its own key, so a larger ``--tasks`` reuses the
chunks already computed). Every method sees the same tasks:

* ``model``: argmax of the learned P(K | X). It was trained on N <= 128 (``n_max`` of the run): a task with more
  points is read through a seeded subsample of ``n_max`` points (without replacement), so the model never reads
  an N outside its training range; ``model_all`` is the same network reading all points (only where N > n_max).
* ``ablation`` (with ``--ablation_workdir``): a second trained KPosterior run read exactly as ``model`` (the same
  tasks, the same subsamples; ``ablation_all`` where N > n_max), scored as it is everywhere except the targets
  (the model's alone); the study runs it on the set network without the likelihood evidence.
* ``model_noise`` (with ``--noise_workdir``): a run with the noise head (``KPosterior(noise_head=True)``) read
  as ``model`` (same tasks, same subsamples) but told the noise variance of the prior, 1: the known-noise
  setting. Its targets are reported beside the model's, against ``bic`` and against ``bic_known``.
* ``bic_known``, ``aic_known`` (with ``--bic_known_noise``): BIC and AIC told the noise variance too:
  unit-variance EM per K = 1..8 (``baselines.em``, the best of ``--n_init`` k-means++ restarts), p = K D + (K - 1)
  (``known_noise_criteria``); ``bic_known_softmax`` its probabilities. The fair classical match of
  ``model_noise``.
* ``bic``, ``aic``: EM with learned spherical variances for each K = 1..8, scikit-learn
  ``GaussianMixture(covariance_type="spherical", n_init=1, init_params="k-means++")`` run from 10 k-means++
  seeds, the best non-collapsed restart kept (max_iter 100, tol 1e-3, reg_covar 1e-6); p = K D + K + (K - 1) free parameters; the K of least
  criterion. ``bic_softmax``: P(K) proportional to exp(-BIC_K / 2), the probabilities of the log-loss comparison,
  mixed with 1e-3 of the uniform distribution (a K whose 10 restarts all collapsed has probability 0 otherwise).
  Restarts where a component collapsed on a point are excluded (``em_restarts``); ``bic_raw``/``aic_raw`` keep
  them, as sklearn's own ``n_init`` does.
* ``bgm``: scikit-learn ``BayesianGaussianMixture(n_components=8, covariance_type="spherical", max_iter=500)``
  (Dirichlet-process weights, concentration 1/8, k-means init); K = the number of components whose weight is
  above ``--bgm_threshold`` (0.03, about half the smallest weight the K = 8 prior typically draws); the weights
  are cached, so other thresholds are reported as a sensitivity check.
* ``bayes``: the Bayes posterior P(K | X) under this prior and the uniform prior on K, from log p(X | K) for
  K = 1..8 by annealed importance sampling with resampling (baselines/bayes_k.py, ``BAYES_CONFIG``), on the
  first ``--bayes_tasks`` tasks of chunk 0 of each cell with N in ``--bayes_ns`` (512 left out by default: the
  cost grows with N). It is the reference the others are measured against on those tasks: K accuracy, log-loss
  of the true K, agreement with its argmax, and KL(bayes || method) for the model, the ablation and the
  BIC-softmax (``bayes`` in each cell, ``summary.bayes``). The settings and their check: ``BAYES_CONFIG``.

Cached per (D, N, K, chunk) under ``results/<...>/cache/`` (baselines, bic_known, model, ablation and model_noise
separately;
rerunning skips finished blocks); ``--methods=baselines`` runs the classical methods alone (no trained model needed);
``--methods=bayes`` computes the Bayes blocks (``bayes_d*_n*_k*_c0.npz``, which record their task count and AIS
settings; a block cached with other ones is an error, not silently reused), then analyses.
Writes ``k_posterior.json``, ``k_posterior.png`` (accuracy against true K per cell) and
``k_posterior_reliability.png`` (reliability of the top-K probability: model, ablation and BIC-softmax).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from baselines.bayes_k import JUMP_UNIFORM, BayesKConfig, log_evidence
from tgmm_jax.tasks import TaskSpec, sample_tasks

K_MAX = 8
CHUNK = 32
BGM_THRESHOLDS = (0.01, 0.03, 1.0 / 16)
# A restart whose smallest component variance is below this times the data's variance has collapsed on a point.
DEGENERATE_VARIANCE = 1e-3
# Mixed into the BIC-softmax's probabilities (uniform weight) before its log-loss (``smoothed_log_softmax``).
SMOOTHING = 1e-3
# The AIS settings of the Bayes reference: what the time allowed (N = 32 blocks of 16 tasks ~55 s, N = 128
# ~200-350 s on the loaded 2-core CPU). Doubling check on the 16 tasks of a cell (K within 10 nats of the best):
# D = 2, N = 32, K = 4: 2x temperatures moves log p(X | K) by 0.25 nat on average (max 1.0), 2x particles by
# 0.26 (max 0.9), against a median gap of 0.53 nat between the two best K (the posterior is spread: the argmax
# moves on 2 and 6 of 16 tasks, total variation between the posteriors 0.11); D = 8, N = 32, K = 6: 2x
# temperatures moves it by 1.3 nats (max 7.9) against a median gap of 1.5, argmax moved on 5 of 16, TV 0.30:
# not converged there. A check that needs no rerun: over tasks drawn from the prior, the mean posterior of each
# K must be 1/8 (``summary.bayes.by_dn.*.mean_posterior``): D = 2, N = 32 meets it within its standard error; D = 8,
# N = 32 gives K = 6 0.074 +- 0.018 and K = 7 0.176 +- 0.028 (particles stuck in a wrong configuration of the
# true K let K + 1 win; 10 of 82 tasks with a top probability > 0.95 are wrong).
BAYES_CONFIG = BayesKConfig(particles=8, temperatures=1200, k_max=K_MAX)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command (tests import this module beside others
    that define flags of the same names)."""
    flags.DEFINE_string("workdir", "runs/k_posterior", "The trained KPosterior run.")
    flags.DEFINE_string(
        "ablation_workdir",
        "",
        "A second trained KPosterior run read on the same tasks and subsamples (method `ablation`); '': none.",
    )
    flags.DEFINE_string(
        "noise_workdir",
        "",
        "A trained KPosterior run with the noise head (``--noise_head``), read on the same tasks and subsamples "
        "told the noise variance (1) (method `model_noise`); '': none.",
    )
    flags.DEFINE_bool(
        "bic_known_noise",
        False,
        "Also BIC and AIC with the noise variance known (1): unit-variance EM, the best of --n_init k-means++ "
        "restarts per K (method `bic_known`), the fair classical match of `model_noise`.",
    )
    flags.DEFINE_string("results", "results/k_posterior/", "Output directory.")
    flags.DEFINE_list("dims", ["2", "8"], "Data dimensions.")
    flags.DEFINE_list("ns", ["32", "128", "512"], "Points per task.")
    flags.DEFINE_integer("tasks", 64, f"Tasks per (D, N, K) cell, a multiple of {CHUNK}.")
    flags.DEFINE_integer("seed", 2026, "Seed of the held-out tasks (training uses fold_in(seed 0, 1)).")
    flags.DEFINE_integer("n_init", 10, "k-means++ restarts of the EM of BIC/AIC.")
    flags.DEFINE_float("bgm_threshold", 0.03, "Weight above which a BGM component counts.")
    flags.DEFINE_enum(
        "methods",
        "all",
        ["all", "baselines", "model", "bayes", "none"],
        "Which blocks to compute (`model`: the model's and the ablation's); all but `baselines` then analyse every "
        "cell whose blocks are cached (`none`: only that).",
    )
    flags.DEFINE_integer(
        "bayes_tasks", 16, f"Tasks per cell (the first of chunk 0, <= {CHUNK}) of the Bayes reference."
    )
    flags.DEFINE_list("bayes_ns", ["32", "128"], "The N's where the Bayes reference is computed.")


def held_out_tasks(seed: int, dim: int, n: int, k: int, chunk: int):
    """``CHUNK`` tasks of the training prior with K = k components and exactly n points (numpy)."""
    spec = TaskSpec(dim=dim, ks=(k,), n_max=n, cos_threshold=1.0, variable_n=False)
    key = jax.random.PRNGKey(seed)
    for v in (dim, n, k, chunk):
        key = jax.random.fold_in(key, v)
    task = sample_tasks(key, spec, CHUNK)
    return np.asarray(task.points, np.float64), np.asarray(task.num_components)


def num_parameters(k: int, dim: int) -> int:
    """Free parameters of a spherical mixture: means K D, variances K, weights K - 1."""
    return k * dim + k + (k - 1)


def em_restarts(
    points_NxD: np.ndarray, k: int, n_init: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood [n_init], degenerate [n_init]) of ``n_init`` EM runs from k-means++ seeds.

    Each run is ``GaussianMixture(k, covariance_type="spherical", n_init=1, init_params="k-means++")`` with its
    own random_state; a run is degenerate when a component's variance fell below DEGENERATE_VARIANCE times the
    data's mean per-coordinate variance (a component collapsed on a point: its likelihood is unbounded, capped
    only by sklearn's reg_covar 1e-6).
    """
    from sklearn.mixture import GaussianMixture

    n = points_NxD.shape[0]
    floor = DEGENERATE_VARIANCE * float(np.mean(np.var(points_NxD, axis=0)))
    loglik, degenerate = np.empty(n_init), np.empty(n_init, bool)
    for r in range(n_init):
        gm = GaussianMixture(
            k, covariance_type="spherical", n_init=1, init_params="k-means++", random_state=seed * 1000 + r
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(points_NxD)
        loglik[r] = gm.score(points_NxD) * n
        degenerate[r] = bool(np.min(gm.covariances_) < floor)
    return loglik, degenerate


def criteria(loglik_K: np.ndarray, n: int, dim: int) -> dict:
    """BIC = -2 log L + p log n and AIC = -2 log L + 2 p for K = 1..len(loglik_K) (log L = -inf gives +inf)."""
    p = np.array([num_parameters(k, dim) for k in range(1, loglik_K.size + 1)], np.float64)
    return {"bic": -2.0 * loglik_K + p * np.log(n), "aic": -2.0 * loglik_K + 2.0 * p}


def information_criteria(points_NxD: np.ndarray, k_max: int = K_MAX, n_init: int = 10, seed: int = 0) -> dict:
    """BIC and AIC for K = 1..k_max (arrays [k_max]) from the best of ``n_init`` EM restarts per K.

    ``bic``/``aic``: the best non-degenerate restart (+inf when all ``n_init`` are degenerate, so that K is never
    chosen); ``bic_raw``/``aic_raw``: the best restart whatever it is (sklearn's own ``n_init`` rule).
    """
    n, dim = points_NxD.shape
    loglik, loglik_raw, degenerate = np.empty(k_max), np.empty(k_max), np.empty(k_max)
    for k in range(1, k_max + 1):
        ll, deg = em_restarts(points_NxD, k, n_init, seed)
        loglik_raw[k - 1] = ll.max()
        loglik[k - 1] = ll[~deg].max() if (~deg).any() else -np.inf
        degenerate[k - 1] = deg.sum()
    out = {"loglik": loglik, "loglik_raw": loglik_raw, "degenerate_restarts": degenerate}
    out.update(criteria(loglik, n, dim))
    out.update({f"{name}_raw": v for name, v in criteria(loglik_raw, n, dim).items()})
    return out


def bgm_weights(points_NxD: np.ndarray, k_max: int = K_MAX, seed: int = 0) -> np.ndarray:
    """The fitted weights [k_max] of sklearn's spherical BayesianGaussianMixture with k_max components."""
    from sklearn.mixture import BayesianGaussianMixture

    bgm = BayesianGaussianMixture(
        n_components=k_max, covariance_type="spherical", max_iter=500, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bgm.fit(points_NxD)
    return np.asarray(bgm.weights_)


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    x = x - np.max(x, axis=-1, keepdims=True)
    return x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))


def smoothed_log_softmax(x: np.ndarray, eps: float = SMOOTHING) -> np.ndarray:
    """log((1 - eps) softmax(x) + eps / K): the BIC-softmax's probabilities, never 0 (a K whose every restart
    collapsed has BIC = +inf, and the true K there would give an infinite log-loss). The model's are not smoothed."""
    return np.log((1.0 - eps) * np.exp(log_softmax_np(x)) + eps / x.shape[-1])


def subsample(points_BxNxD: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Each task's points reduced to a seeded random subset of m (no replacement); as is when N <= m."""
    b, n, _ = points_BxNxD.shape
    if n <= m:
        return points_BxNxD
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(n, m, replace=False) for _ in range(b)])
    return np.take_along_axis(points_BxNxD, idx[:, :, None], axis=1)


def _cache_path(results: str, group: str, dim: int, n: int, k: int, chunk: int) -> str:
    return os.path.join(results, "cache", f"{group}_d{dim}_n{n}_k{k}_c{chunk}.npz")


def _save(path: str, **arrays) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def baseline_block(results, seed, dim, n, k, chunk, n_init) -> dict:
    path = _cache_path(results, "baselines", dim, n, k, chunk)
    if os.path.exists(path):
        return dict(np.load(path))
    points, _ = held_out_tasks(seed, dim, n, k, chunk)
    out = {}
    for i, x in enumerate(points):
        ic = information_criteria(x, K_MAX, n_init, seed=i)
        ic["bgm_weights"] = bgm_weights(x, K_MAX, seed=i)
        for name, v in ic.items():
            out.setdefault(name, []).append(v)
    out = {name: np.stack(v) for name, v in out.items()}
    _save(path, **out)
    return out


def known_noise_criteria(
    points_BxNxD: np.ndarray, k_max: int = K_MAX, n_init: int = 10, seed: int = 0
) -> dict:
    """BIC and AIC [B, k_max] of mixtures whose noise variance is known (1): for each K, the best of ``n_init``
    k-means++ restarts of unit-variance EM (``baselines.em``, isotropic, max_iter 100, tol 1e-5); p = K D +
    (K - 1) free parameters (no variance). No restart can collapse (the variance is fixed)."""
    from baselines.em import EMConfig, fit_em
    from tgmm_jax.tasks import GMMTask

    b, n, d = points_BxNxD.shape
    config = EMConfig(variant="isotropic", init="kmeans++", n_init=n_init, max_iter=100)
    loglik = np.empty((b, k_max))
    for k in range(1, k_max + 1):
        task = GMMTask(
            points=jnp.asarray(points_BxNxD, jnp.float32),
            point_mask=jnp.ones((b, n), bool),
            labels=jnp.zeros((b, n), jnp.int32),
            weights=jnp.zeros((b, k_max)),
            means=jnp.zeros((b, k_max, d)),
            scales=jnp.ones((b, k_max, d)),
            component_mask=jnp.broadcast_to(jnp.arange(k_max)[None] < k, (b, k_max)),
            num_components=jnp.full((b,), k, jnp.int32),
        )
        _, info = fit_em(jax.random.PRNGKey(_stable_seed(seed, k)), task, config)
        loglik[:, k - 1] = np.asarray(info["loglik"], np.float64) * n
    p = np.array([k * d + k - 1 for k in range(1, k_max + 1)], np.float64)
    return {"loglik": loglik, "bic": -2.0 * loglik + p * np.log(n), "aic": -2.0 * loglik + 2.0 * p}


def bic_known_block(results, seed, dim, n, k, chunk, n_init) -> dict:
    """``known_noise_criteria`` of a chunk's tasks, cached under ``bic_known``."""
    path = _cache_path(results, "bic_known", dim, n, k, chunk)
    if os.path.exists(path):
        return dict(np.load(path))
    points, _ = held_out_tasks(seed, dim, n, k, chunk)
    out = known_noise_criteria(points, K_MAX, n_init, seed=_stable_seed(seed, dim, n, k, chunk))
    _save(path, **out)
    return out


def model_block(results, seed, dim, n, k, chunk, apply_fn, n_read, group: str = "model") -> dict:
    """log P(K | X) [CHUNK, K_MAX] of a trained run on a seeded subsample of ``n_read`` points per task (the
    subsample depends on the task alone, not on ``group``: the model and the ablation read the same points),
    and ``log_probs_all`` on every point where n > n_read; cached under ``group``."""
    path = _cache_path(results, group, dim, n, k, chunk)
    if os.path.exists(path):
        return dict(np.load(path))
    points, _ = held_out_tasks(seed, dim, n, k, chunk)
    sub = subsample(points, n_read, seed=_stable_seed(seed, dim, n, k, chunk))
    out = {"log_probs": np.asarray(apply_fn(jnp.asarray(sub, jnp.float32)))}
    if n > n_read:
        out["log_probs_all"] = np.asarray(apply_fn(jnp.asarray(points, jnp.float32)))
    _save(path, **out)
    return out


def run_config(workdir: str) -> dict:
    """The training config of a KPosterior run (its ``config.json``)."""
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)


def learned_apply(workdir: str, known_noise: bool = False):
    """The jitted log P(K | X) of a trained run, on tasks whose every point counts: [B, N, D] -> [B, K_MAX]
    (``load`` builds the run's own model, the likelihood evidence included when its config asks for it);
    ``known_noise``: told the prior's noise variance, 1 (a run with the noise head)."""
    from experiments.train_k_posterior import load

    model, params, _ = load(workdir)
    return posterior_apply(model, params, workdir, known_noise)


def posterior_apply(model, params, source: str, known_noise: bool = False):
    """The jitted log P(K | X) of ``model`` with ``params`` on tasks whose every point counts: [B, N, D] ->
    [B, K_MAX]; a model of another K_max (``source`` names it) is refused. ``known_noise``: the model is told
    the noise variance of the prior (1), which needs its noise head."""
    if model.k_max != K_MAX:
        raise ValueError(f"{source} predicts K = 1..{model.k_max}, the study K = 1..{K_MAX}")
    if known_noise and not model.noise_head:
        raise ValueError(f"{source} has no noise head: it cannot be told the noise variance")
    if known_noise:
        return jax.jit(lambda x: model.apply(params, x, jnp.ones(x.shape[:2], bool), jnp.ones(x.shape[:1])))
    return jax.jit(lambda x: model.apply(params, x, jnp.ones(x.shape[:2], bool)))


def _lazy(make, *args):
    """A function that builds ``make(*args)`` on its first call and forwards to it: a run whose blocks are all
    cached is never loaded (its checkpoints need not exist, only its config.json)."""
    built = []

    def call(x):
        if not built:
            built.append(make(*args))
        return built[0](x)

    return call


def load_blocks(
    results, dims, ns, chunks, bayes_tasks: int, ablation: bool, optional: tuple = ()
) -> tuple[dict, list]:
    """The cached blocks of every cell, chunks joined: ({(dim, n, k): {'baselines', 'model', 'ablation' (None
    unless ``ablation`` and cached for each joined chunk), each group of ``optional`` (e.g. 'model_noise',
    'bic_known'; None unless cached for each joined chunk), 'bayes' (None if absent)}}, [tasks per cell]). A
    cell joins the chunks whose baselines and model blocks are both cached; a cell with none is left out."""

    def join(loaded):
        return {key: np.concatenate([part[key] for part in loaded]) for key in loaded[0].files}

    blocks, counts = {}, []
    for d in dims:
        for n in ns:
            for k in range(1, K_MAX + 1):
                done = [
                    c
                    for c in chunks
                    if all(
                        os.path.exists(_cache_path(results, g, d, n, k, c)) for g in ("baselines", "model")
                    )
                ]
                if not done:
                    continue
                counts.append(CHUNK * len(done))
                block = {
                    g: join([np.load(_cache_path(results, g, d, n, k, c)) for c in done])
                    for g in ("baselines", "model")
                }
                paths = [_cache_path(results, "ablation", d, n, k, c) for c in done]
                has_ablation = ablation and all(os.path.exists(p) for p in paths)
                block["ablation"] = join([np.load(p) for p in paths]) if has_ablation else None
                for group in optional:
                    paths = [_cache_path(results, group, d, n, k, c) for c in done]
                    has = all(os.path.exists(p) for p in paths)
                    block[group] = join([np.load(p) for p in paths]) if has else None
                block["bayes"] = load_bayes(results, d, n, k, bayes_tasks) if bayes_tasks else None
                blocks[(d, n, k)] = block
    return blocks, counts


def bayes_block(results, seed, dim, n, k, tasks, config: BayesKConfig = BAYES_CONFIG) -> dict:
    """log p(X | K) [tasks, K_MAX] by AIS on the first ``tasks`` tasks of chunk 0 of the cell, cached."""
    path = _cache_path(results, "bayes", dim, n, k, 0)
    settings = _bayes_settings(config, tasks)
    if os.path.exists(path):
        out = dict(np.load(path))
        if str(out.pop("settings")) != settings:
            raise ValueError(
                f"{path} was computed with other settings ({out} vs {settings}); remove it to recompute"
            )
        return out
    points, _ = held_out_tasks(seed, dim, n, k, 0)
    key = jax.random.PRNGKey(_stable_seed(seed, dim, n, k, 0, 0xBA7E5))
    res = log_evidence(key, points[:tasks], None, config)
    out = {"log_evidence": np.asarray(res["log_evidence"], np.float64), "ess": np.asarray(res["ess"])}
    _save(path, settings=np.array(settings), **out)
    return out


def _bayes_settings(config: BayesKConfig, tasks: int) -> str:
    return json.dumps(
        {"tasks": tasks, "jump_uniform": JUMP_UNIFORM, **dataclasses.asdict(config)}, sort_keys=True
    )


def load_bayes(results, dim, n, k, tasks, config: BayesKConfig = BAYES_CONFIG) -> dict | None:
    """The cached Bayes block of a cell, None if absent; a ValueError if it holds other settings."""
    if not os.path.exists(_cache_path(results, "bayes", dim, n, k, 0)):
        return None
    return bayes_block(results, None, dim, n, k, tasks, config)


def _stable_seed(*values) -> int:
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0] % (2**31))


# ------------------------------------------------------------------------------------------------------
# Analysis of the cached blocks.


def reliability(probs_TxK: np.ndarray, true_k_T: np.ndarray, bins: int = 10) -> dict:
    """Top-K confidence binned in [0, 1]: per bin the count, mean confidence and accuracy; and the ECE."""
    conf = probs_TxK.max(-1)
    correct = (probs_TxK.argmax(-1) + 1 == true_k_T).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if not sel.any():
            rows.append(
                {"lo": edges[b], "hi": edges[b + 1], "count": 0, "confidence": None, "accuracy": None}
            )
            continue
        c, a = float(conf[sel].mean()), float(correct[sel].mean())
        ece += sel.mean() * abs(c - a)
        rows.append(
            {"lo": edges[b], "hi": edges[b + 1], "count": int(sel.sum()), "confidence": c, "accuracy": a}
        )
    return {"bins": rows, "ece": float(ece)}


def kl_rows(log_p_TxK: np.ndarray, log_q_TxK: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, from log-probabilities (terms where p = 0 count 0)."""
    p = np.exp(log_p_TxK)
    return np.sum(np.where(p > 0, p * (log_p_TxK - log_q_TxK), 0.0), axis=-1)


def bayes_cell(
    bayes: dict,
    base: dict,
    model: dict | None,
    k: int,
    bgm_threshold: float,
    ablation: dict | None = None,
    model_noise: dict | None = None,
    bic_known: dict | None = None,
) -> dict:
    """The Bayes posterior against the other methods on the tasks it was computed on (the first of the cell)."""
    bayes_lp = log_softmax_np(bayes["log_evidence"])
    t = bayes_lp.shape[0]
    preds = {
        "bayes": bayes_lp.argmax(-1) + 1,
        "bic": base["bic"][:t].argmin(-1) + 1,
        "aic": base["aic"][:t].argmin(-1) + 1,
        "bgm": (base["bgm_weights"][:t] > bgm_threshold).sum(-1),
    }
    log_probs = {"bayes": bayes_lp, "bic_softmax": smoothed_log_softmax(-0.5 * base["bic"][:t])}
    preds["bic_softmax"] = preds["bic"]
    if bic_known is not None:
        preds["bic_known"] = bic_known["bic"][:t].argmin(-1) + 1
        log_probs["bic_known_softmax"] = smoothed_log_softmax(-0.5 * bic_known["bic"][:t])
    for name, learned in (("model", model), ("ablation", ablation), ("model_noise", model_noise)):
        if learned is not None:
            log_probs[name] = learned["log_probs"][:t].astype(np.float64)
            preds[name] = log_probs[name].argmax(-1) + 1
    return {
        "tasks": int(t),
        "accuracy": {m: float(np.mean(p == k)) for m, p in preds.items() if not m.endswith("_softmax")},
        "agrees_with_bayes": {
            m: float(np.mean(p == preds["bayes"])) for m, p in preds.items() if m != "bayes"
        },
        "logloss": {m: float(-lp[:, k - 1].mean()) for m, lp in log_probs.items()},
        "kl_from_bayes": {
            m: float(kl_rows(bayes_lp, lp).mean()) for m, lp in log_probs.items() if m != "bayes"
        },
        "bayes_top_probability": float(np.exp(bayes_lp).max(-1).mean()),
        "mean_posterior": np.exp(bayes_lp).mean(0).tolist(),
    }


def _bayes_summary(cells: list, dims, ns) -> dict:
    """Per (D, N) and over all: the means over true K of each Bayes comparison (cells that have one)."""

    def mean(group, metric):
        methods = sorted({m for c in group for m in c["bayes"][metric]})
        return {
            m: float(np.mean([c["bayes"][metric][m] for c in group if m in c["bayes"][metric]]))
            for m in methods
        }

    out, by_dn = {}, {}
    with_bayes = [c for c in cells if "bayes" in c]
    for d in dims:
        for n in ns:
            group = [c for c in with_bayes if c["dim"] == d and c["n"] == n]
            if group:
                by_dn[f"d{d}_n{n}"] = {
                    "tasks": int(sum(c["bayes"]["tasks"] for c in group)),
                    "true_ks": sorted(c["k"] for c in group),
                    **{
                        m: mean(group, m)
                        for m in ("accuracy", "agrees_with_bayes", "logloss", "kl_from_bayes")
                    },
                }
    for d in dims:
        for n in ns:
            group = [c for c in with_bayes if c["dim"] == d and c["n"] == n]
            if group and len(group) == K_MAX:  # every true K: the tasks are draws of the prior
                by_dn[f"d{d}_n{n}"]["mean_posterior"] = np.mean(
                    [c["bayes"]["mean_posterior"] for c in group], axis=0
                ).tolist()
    if with_bayes:
        out = {
            "tasks": int(sum(c["bayes"]["tasks"] for c in with_bayes)),
            **{m: mean(with_bayes, m) for m in ("accuracy", "agrees_with_bayes", "logloss", "kl_from_bayes")},
        }
    return {"all": out, "by_dn": by_dn}


def analyse(blocks: dict, dims, ns, tasks, n_read: int, bgm_threshold: float, n_init: int = 10) -> dict:
    """blocks[(dim, n, k)] = {'baselines': {...}, 'model': {...} or None, 'ablation' and 'bayes': {...}
    (optional)} (chunks joined) -> the JSON."""
    cells, pooled = [], {}
    for dim in dims:
        for n in ns:
            for k in range(1, K_MAX + 1):
                block = blocks.get((dim, n, k))
                if block is None:
                    continue
                base, model, ablation = block["baselines"], block.get("model"), block.get("ablation")
                model_noise, bic_known = block.get("model_noise"), block.get("bic_known")
                true = np.full(base["bic"].shape[0], k)
                preds = {
                    "bic": base["bic"].argmin(-1) + 1,
                    "aic": base["aic"].argmin(-1) + 1,
                    "bic_raw": base["bic_raw"].argmin(-1) + 1,
                    "aic_raw": base["aic_raw"].argmin(-1) + 1,
                    "bgm": (base["bgm_weights"] > bgm_threshold).sum(-1),
                }
                for t in BGM_THRESHOLDS:
                    preds[f"bgm@{t:.3g}"] = (base["bgm_weights"] > t).sum(-1)
                bic_lp = smoothed_log_softmax(-0.5 * base["bic"])
                logloss = {
                    "bic_softmax": float(-bic_lp[:, k - 1].mean()),
                    "bic_raw_softmax": float(-smoothed_log_softmax(-0.5 * base["bic_raw"])[:, k - 1].mean()),
                }
                probs = {"bic_softmax": np.exp(bic_lp)}
                if bic_known is not None:
                    preds["bic_known"] = bic_known["bic"].argmin(-1) + 1
                    preds["aic_known"] = bic_known["aic"].argmin(-1) + 1
                    known_lp = smoothed_log_softmax(-0.5 * bic_known["bic"])
                    logloss["bic_known_softmax"] = float(-known_lp[:, k - 1].mean())
                    probs["bic_known_softmax"] = np.exp(known_lp)
                for name, learned in (("model", model), ("ablation", ablation), ("model_noise", model_noise)):
                    if learned is None:
                        continue
                    preds[name] = learned["log_probs"].argmax(-1) + 1
                    logloss[name] = float(-learned["log_probs"][:, k - 1].mean())
                    probs[name] = np.exp(learned["log_probs"])
                    if "log_probs_all" in learned:
                        preds[f"{name}_all"] = learned["log_probs_all"].argmax(-1) + 1
                        logloss[f"{name}_all"] = float(-learned["log_probs_all"][:, k - 1].mean())
                cell = {
                    "dim": dim,
                    "n": n,
                    "k": k,
                    "tasks": int(true.size),
                    "accuracy": {m: float(np.mean(p == true)) for m, p in preds.items()},
                    "mean_k": {m: float(np.mean(p)) for m, p in preds.items()},
                    "logloss": logloss,
                    "degenerate_restarts": (base["degenerate_restarts"].mean(0) / n_init).tolist(),
                }
                if block.get("bayes") is not None:
                    cell["bayes"] = bayes_cell(
                        block["bayes"], base, model, k, bgm_threshold, ablation, model_noise, bic_known
                    )
                    probs_b = np.exp(log_softmax_np(block["bayes"]["log_evidence"]))
                    pooled.setdefault("bayes", {"probs": [], "true": []})
                    pooled["bayes"]["probs"].append(probs_b)
                    pooled["bayes"]["true"].append(np.full(probs_b.shape[0], k))
                cells.append(cell)
                for m, p in probs.items():
                    pooled.setdefault(m, {"probs": [], "true": []})
                    pooled[m]["probs"].append(p)
                    pooled[m]["true"].append(true)
    methods = sorted({m for c in cells for m in c["accuracy"]})

    def mean_over(metric, method, **where):
        vals = [
            c[metric][method]
            for c in cells
            if method in c[metric] and all(c[key] in vals_ for key, vals_ in where.items())
        ]
        return float(np.mean(vals)) if vals else None

    small = [n for n in ns if n <= 128]
    summary = {
        "accuracy": {m: mean_over("accuracy", m) for m in methods},
        "accuracy_n_le_128": {m: mean_over("accuracy", m, n=small) for m in methods},
        "accuracy_by_dn": {
            f"d{d}_n{n}": {m: mean_over("accuracy", m, dim=[d], n=[n]) for m in methods}
            for d in dims
            for n in ns
        },
        "logloss": {
            m: mean_over("logloss", m)
            for m in (
                "model",
                "bic_softmax",
                "bic_raw_softmax",
                "model_all",
                "ablation",
                "ablation_all",
                "model_noise",
                "model_noise_all",
                "bic_known_softmax",
            )
        },
        "logloss_n_le_128": {
            m: mean_over("logloss", m, n=small)
            for m in (
                "model",
                "bic_softmax",
                "bic_raw_softmax",
                "ablation",
                "model_noise",
                "bic_known_softmax",
            )
        },
        "k1_rate": {m: mean_over("accuracy", m, k=[1]) for m in methods},
        "k1_rate_n_le_128": {m: mean_over("accuracy", m, k=[1], n=small) for m in methods},
    }
    bayes_summary = _bayes_summary(cells, dims, ns)
    if bayes_summary["by_dn"]:
        summary["bayes"] = bayes_summary
    rel = {m: reliability(np.concatenate(v["probs"]), np.concatenate(v["true"])) for m, v in pooled.items()}
    targets = {}
    acc_s = summary["accuracy_n_le_128"]
    if acc_s.get("model") is not None:
        targets.update(_targets(summary, "model", ""))
    if acc_s.get("model_noise") is not None:  # the same targets for the model told the noise variance
        targets.update(_targets(summary, "model_noise", "noise_known_"))
        if acc_s.get("bic_known") is not None:  # and against BIC told it too
            targets["noise_known_accuracy_beats_bic_by_10_points_n_le_128"]["model_noise_minus_bic_known"] = (
                acc_s["model_noise"] - acc_s["bic_known"]
            )
    return {
        "settings": {
            "dims": list(dims),
            "ns": list(ns),
            "ks": list(range(1, K_MAX + 1)),
            "tasks_per_cell": tasks,
            "model_reads_at_most": n_read,
            "bgm_threshold": bgm_threshold,
            "bgm_thresholds_sensitivity": list(BGM_THRESHOLDS),
        },
        "cells": cells,
        "summary": summary,
        "reliability": rel,
        "targets": targets,
    }


def _targets(summary: dict, method: str, prefix: str) -> dict:
    """The issue's three targets for ``method`` (keys prefixed by ``prefix``): K accuracy over BIC at N <= 128
    by 10 points, log-loss under the BIC-softmax's, K = 1 answered on at least 95% of pure noise."""
    gap = summary["accuracy_n_le_128"][method] - summary["accuracy_n_le_128"]["bic"]
    ll, k1 = summary["logloss"], summary["k1_rate"][method]
    return {
        f"{prefix}accuracy_beats_bic_by_10_points_n_le_128": {f"{method}_minus_bic": gap, "met": gap >= 0.10},
        f"{prefix}logloss_beats_bic_softmax": {
            method: ll[method],
            "bic_softmax": ll["bic_softmax"],
            "met": ll[method] < ll["bic_softmax"],
        },
        f"{prefix}k1_answers_1_at_least_95pct": {method: k1, "met": k1 >= 0.95},
    }


COLORS = {
    "model": "C0",
    "model_all": "C9",
    "ablation": "C4",
    "model_noise": "C5",
    "bic": "C1",
    "bic_known": "C8",
    "aic": "C2",
    "bgm": "C3",
}


def plot(saved: dict, path: str, reliability_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims, ns = saved["settings"]["dims"], saved["settings"]["ns"]
    fig, axes = plt.subplots(len(dims), len(ns), figsize=(4 * len(ns), 3.2 * len(dims)), squeeze=False)
    for i, d in enumerate(dims):
        for j, n in enumerate(ns):
            ax = axes[i][j]
            cells = [c for c in saved["cells"] if c["dim"] == d and c["n"] == n]
            for m, color in COLORS.items():
                pts = [(c["k"], c["accuracy"][m]) for c in cells if m in c["accuracy"]]
                if pts:
                    ks, acc = zip(*pts, strict=True)
                    ax.plot(ks, acc, "o-", color=color, label=m, ms=3)
            pts = [
                (c["k"], c["bayes"]["accuracy"]["bayes"], c["bayes"]["tasks"]) for c in cells if "bayes" in c
            ]
            if pts:
                ks, acc, t = zip(*pts, strict=True)
                ax.plot(ks, acc, "s--", color="k", label=f"bayes (first {t[0]} tasks)", ms=3)
            ax.set_title(f"D = {d}, N = {n}")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("true K")
            if j == 0:
                ax.set_ylabel("K accuracy")
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for m, color in (
        ("model", "C0"),
        ("ablation", "C4"),
        ("model_noise", "C5"),
        ("bic_softmax", "C1"),
        ("bic_known_softmax", "C8"),
        ("bayes", "k"),
    ):
        if m not in saved["reliability"]:
            continue
        rows = [r for r in saved["reliability"][m]["bins"] if r["count"]]
        ax.plot(
            [r["confidence"] for r in rows],
            [r["accuracy"] for r in rows],
            "o-",
            color=color,
            label=f"{m} (ECE {saved['reliability'][m]['ece']:.3f})",
        )
    ax.set_xlabel("top-K probability")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability of P(K | X), all cells")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(reliability_path, dpi=110)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.tasks % CHUNK:
        raise app.UsageError(f"--tasks must be a multiple of {CHUNK}")
    if not 0 <= FLAGS.bayes_tasks <= CHUNK:
        raise app.UsageError(f"--bayes_tasks must lie in [0, {CHUNK}], got {FLAGS.bayes_tasks}")
    bayes_ns = [int(n) for n in FLAGS.bayes_ns]
    dims, ns = [int(d) for d in FLAGS.dims], [int(n) for n in FLAGS.ns]
    results, seed = FLAGS.results, FLAGS.seed
    os.makedirs(results, exist_ok=True)
    chunks = range(FLAGS.tasks // CHUNK)
    order = sorted(
        ((d, n, k, c) for d in dims for n in ns for k in range(1, K_MAX + 1) for c in chunks),
        key=lambda t: (t[3], t[1], t[0], t[2]),
    )  # chunk 0 of every cell first, small N first
    learned = {"model": FLAGS.workdir, "ablation": FLAGS.ablation_workdir, "model_noise": FLAGS.noise_workdir}
    learned = {group: workdir for group, workdir in learned.items() if workdir}
    if FLAGS.methods == "baselines":  # no trained run needed
        learned = {}
    n_read = run_config(FLAGS.workdir)["n_max"] if learned else None
    for workdir in learned.values():
        if run_config(workdir)["n_max"] != n_read:
            raise app.UsageError(
                f"{workdir} reads at most {run_config(workdir)['n_max']} points, {FLAGS.workdir} {n_read}: the "
                "model and the ablation must read the same subsamples"
            )
    apply_fns = {}
    if FLAGS.methods in ("all", "model"):  # each run loaded on its first uncached block
        apply_fns = {
            group: _lazy(learned_apply, workdir, group == "model_noise") for group, workdir in learned.items()
        }
    t0 = time.time()
    for d, n, k, c in order:
        for group, apply_fn in apply_fns.items():
            model_block(results, seed, d, n, k, c, apply_fn, n_read, group)
        if FLAGS.methods in ("all", "baselines"):
            baseline_block(results, seed, d, n, k, c, FLAGS.n_init)
            if FLAGS.bic_known_noise:
                bic_known_block(results, seed, d, n, k, c, FLAGS.n_init)
        if FLAGS.methods in ("all", "bayes") and c == 0 and n in bayes_ns and FLAGS.bayes_tasks:
            bayes_block(results, seed, d, n, k, FLAGS.bayes_tasks)
        print(f"[{time.time() - t0:6.0f} s] D={d} N={n} K={k} chunk {c}", flush=True)
    if FLAGS.methods == "baselines":
        return
    optional = tuple(
        g for g, on in (("model_noise", "model_noise" in learned), ("bic_known", FLAGS.bic_known_noise)) if on
    )
    blocks, counts = load_blocks(
        results, dims, ns, chunks, FLAGS.bayes_tasks, "ablation" in learned, optional
    )
    if not blocks:
        raise app.UsageError(f"no cell has both its baseline and model blocks in {results}/cache")
    lacking = [key for key, block in blocks.items() if "ablation" in learned and block["ablation"] is None]
    if lacking:
        print(f"no ablation blocks (for every chunk of the model's) in {len(lacking)} cells: {lacking}")
    tasks = counts[0] if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
    saved = analyse(blocks, dims, ns, tasks, n_read, FLAGS.bgm_threshold, FLAGS.n_init)
    saved["settings"].update(
        {
            "workdir": FLAGS.workdir,
            "ablation_workdir": FLAGS.ablation_workdir,
            "noise_workdir": FLAGS.noise_workdir,
            "bic_known_noise": FLAGS.bic_known_noise,
            "runs": {group: run_config(workdir) for group, workdir in learned.items()},
            "seed": seed,
            "n_init": FLAGS.n_init,
        }
    )
    if "bayes" in saved["summary"]:
        saved["settings"]["bayes"] = json.loads(_bayes_settings(BAYES_CONFIG, FLAGS.bayes_tasks))
    with open(os.path.join(results, "k_posterior.json"), "w") as f:
        json.dump(saved, f, indent=1)
    plot(
        saved, os.path.join(results, "k_posterior.png"), os.path.join(results, "k_posterior_reliability.png")
    )
    print(json.dumps(saved["summary"], indent=1))
    print(json.dumps(saved["targets"], indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
