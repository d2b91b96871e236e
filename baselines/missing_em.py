"""Baselines for tasks with missing coordinates (NaN in ``task.points``): exact EM and mean imputation + EM.

  em_missing      exact missing-data EM (``tgmm_jax.mixture.missing``: the E-step marginalises the missing
                  coordinates, the M-step uses their expected sufficient statistics), ``n_init`` k-means++
                  restarts seeded on the mean-imputed points; the restart with the best observed-data
                  log-likelihood wins.
  em_mean_impute  every missing coordinate replaced by its dimension's mean of observed values, then the EM
                  baseline (``baselines.em``, k-means++ x ``n_init``) on the completed points.

Both take ``fn(key, task) -> (MixtureParams, info)`` like every baseline and accept complete tasks too: then
``em_mean_impute`` is ``em_kmeanspp`` exactly, and ``em_missing`` starts from the same k-means++ seeds and
runs the same EM (the complete-data core) to the same fits. A point with no observed coordinate carries no
information and is left out of the fit (``tgmm_jax.mixture.missing``).

Stopping is ``baselines.em``'s: |change of the mean observed-data log-likelihood| < ``tol``, or ``max_iter``
iterations; a restart's score is its log-likelihood at its last E-step, and with learned variances a restart
with a component below two points' worth of mass loses to any non-degenerate one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from baselines import draws, em, inits
from baselines.chunking import default_chunk_size, map_task_chunks
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.mixture import COVARIANCE_TYPES, fused, m_step, missing
from tgmm_jax.tasks import GMMTask

# The EM baseline's variants as the mixture core's covariance types.
_COVARIANCE_OF_VARIANT = {"isotropic": "isotropic", "anisotropic": "diag"}


@dataclasses.dataclass(frozen=True)
class MissingEMConfig:
    """Static settings of ``em_missing`` (hashable: one compilation per config and shape)."""

    variant: str = "isotropic"  # 'isotropic': unit variance, known; 'anisotropic': diagonal, learned
    covariance_type: str | None = None  # overrides the variant's: 'isotropic' | 'spherical' | 'diag'
    n_init: int = 10
    max_iter: int = 100
    tol: float = 1e-5
    chunk_size: int | None = None  # tasks per chunk; None: sized for the cache

    def __post_init__(self):
        em.check_variant(self.variant)
        if self.covariance_type is not None and self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be None or one of {COVARIANCE_TYPES}, got {self.covariance_type!r}"
            )
        em._check_int("n_init", self.n_init, 1)
        em._check_int("max_iter", self.max_iter, 1)
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        if self.chunk_size is not None:
            em._check_int("chunk_size", self.chunk_size, 1)

    @property
    def covariance(self) -> str:
        return self.covariance_type or _COVARIANCE_OF_VARIANT[self.variant]


def _run_fit(points_NxD, observed_NxD, point_mask_N, params: MixtureParams, covariance_type, max_iter, tol):
    """Exact missing-data EM of one fit until |change of the mean log-likelihood| < tol or max_iter:
    (params after the last M-step, log-likelihood at the last E-step, n_iter, converged)."""
    num = missing.count(point_mask_N, observed_NxD, points_NxD.dtype)

    def cond(carry):
        _, _, n_iter, converged = carry
        return ~converged & (n_iter < max_iter)

    def body(carry):
        params, last_ll, n_iter, _ = carry
        stats = missing.statistics(points_NxD, point_mask_N, params, observed_NxD)
        ll = stats.log_likelihood / jnp.maximum(num, 1.0)
        new = m_step(stats, num, params.component_mask, covariance_type)
        return new, ll, n_iter + 1, jnp.abs(ll - last_ll) < tol  # last_ll = -inf at first: never

    start = (params, jnp.asarray(-jnp.inf, points_NxD.dtype), jnp.int32(0), jnp.asarray(False))
    return jax.lax.while_loop(cond, body, start)


def _fit_em_missing(
    key: jax.Array, task: GMMTask, config: MissingEMConfig = MissingEMConfig()
) -> tuple[MixtureParams, dict]:
    """Fits every task of the batch (NaN = missing). Returns (MixtureParams [B, K_max, ...], info of [B]
    arrays: n_iter, converged, loglik (mean observed-data log-likelihood per informative point at the kept
    fit's last E-step), valid, and degenerate where variances are learned)."""
    cov = config.covariance
    learn_variances = cov != "isotropic"
    batch, n, d = task.points.shape
    k_max = task.component_mask.shape[-1]
    r = config.n_init
    observed_BxNxD = missing.observed_of(task.points) & task.point_mask[..., None]
    filled_BxNxD = missing.mean_impute(task.points, task.point_mask, observed_BxNxD)
    seeds_B = draws.task_seeds(key, batch)
    chunk = config.chunk_size or default_chunk_size(batch, n * (4 * d + 3 * r * k_max + r * n // 4))

    def fit_chunk(args):
        seeds_C, task_C, filled_C, observed_C = args
        # k-means++ on the mean-imputed points, centred on each task's observed means (the imputed points'
        # mean); EM runs in the same centred coordinates, on the observed coordinates only.
        data = fused.prepare_chunk(filled_C, task_C.point_mask, learn_variances)
        init = inits.initial_state("kmeans++", seeds_C, data, task_C, r, learn_variances)
        centre_Cx1x1xD = data.centre_CxD[:, None, None, :]
        scales = None
        if learn_variances:
            var = init.variances_CxRxKxD
            if cov == "spherical":
                var = jnp.broadcast_to(jnp.mean(var, axis=-1, keepdims=True), var.shape)
            scales = jnp.sqrt(var)
        mask_CxRxK = jnp.broadcast_to(task_C.component_mask[:, None, :], init.weights_CxRxK.shape)
        params = MixtureParams(init.weights_CxRxK, init.means_CxRxKxD, scales, mask_CxRxK)
        x_CxNxD = filled_C - centre_Cx1x1xD[:, 0]

        def one(x, o, m, p):
            return _run_fit(x, o, m, p, cov, config.max_iter, config.tol)

        over_fits = jax.vmap(one, in_axes=(None, None, None, 0))
        params, ll_CxR, n_iter_CxR, converged_CxR = jax.vmap(over_fits)(
            x_CxNxD, observed_C, task_C.point_mask, params
        )
        params = params.replace(means=params.means + centre_Cx1x1xD)
        return params, ll_CxR, n_iter_CxR, converged_CxR

    params, ll_BxR, n_iter_BxR, converged_BxR = map_task_chunks(
        fit_chunk, (seeds_B, task, filled_BxNxD, observed_BxNxD), batch, chunk
    )

    score_BxR = jnp.where(jnp.isnan(ll_BxR), -jnp.inf, ll_BxR)
    info = {}
    if learn_variances:
        n_Bx1 = missing.count(task.point_mask, observed_BxNxD, score_BxR.dtype)[:, None]
        tiny_BxRxK = task.component_mask[:, None, :] & (params.weights * n_Bx1[..., None] < 2.0)
        degenerate_BxR = jnp.any(tiny_BxRxK, axis=-1)
        any_ok_Bx1 = jnp.any(~degenerate_BxR, axis=-1, keepdims=True)
        score_BxR = jnp.where(degenerate_BxR & any_ok_Bx1, -jnp.inf, score_BxR)
    best_B = jnp.argmax(score_BxR, axis=-1)

    def pick(a):
        return jnp.take_along_axis(a, best_B.reshape((batch, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0]

    best = jax.tree.map(pick, params)
    mask_BxK = task.component_mask
    weights = jnp.where(mask_BxK, best.weights, 0.0)
    means = jnp.where(mask_BxK[..., None], best.means, 0.0)
    scales = None if best.scales is None else jnp.where(mask_BxK[..., None], best.scales, 1.0)
    info.update(
        n_iter=pick(n_iter_BxR),
        converged=pick(converged_BxR),
        loglik=pick(ll_BxR),
        valid=fused.finite_estimates(weights, means, scales),
    )
    if learn_variances:
        info["degenerate"] = pick(degenerate_BxR)
    return MixtureParams(weights, means, scales, mask_BxK), info


MEAN_IMPUTE_DEFAULT = em.EMConfig(init="kmeans++", n_init=10)


def _fit_em_mean_impute(key: jax.Array, task: GMMTask, config: em.EMConfig = MEAN_IMPUTE_DEFAULT):
    """``baselines.em`` (its config: init, restarts, variant) on the mean-imputed points."""
    filled = missing.mean_impute(task.points, task.point_mask)
    return em.fit_em(key, task.replace(points=filled), config=config)


fit_em_missing = jax.jit(_fit_em_missing, static_argnames=("config",))
fit_em_mean_impute = jax.jit(_fit_em_mean_impute, static_argnames=("config",))
