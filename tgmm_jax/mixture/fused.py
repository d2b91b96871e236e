"""The E and M steps of ``steps`` in fused form, on chunks of padded tasks with R fits (restarts) per task.

The inner loop of every batched EM-type fit (the ``baselines`` EM, two-round EM, gradient EM and their
k-means++ / random-point starts in ``seeding``). The mixture is the one of ``tgmm_jax.gmm`` and the M-step is
``steps.moments`` (isotropic, or "diag" when variances are learned); what differs from ``steps`` is the
arithmetic layout, chosen for speed on chunks of many small fits:
  * the data are centred per task and turned into features once per fit (x for unit variance,
    [x, x^2] for diagonal variances), so the E-step is ONE matmul and the M-step is ONE matmul;
  * the log-likelihood used for the stopping rule comes out of the E-step's log-sum-exp (no second pass),
    and per-point constants are dropped from it (they cancel in the change, and dropping them keeps
    float32 resolution for large D; ``log_likelihood_offset`` adds them back);
  * logits are laid out [C, R, K, N] (points minor), and the softmax over the few components is unrolled,
    which XLA:CPU fuses into one elementwise pass (reductions over a short minor axis are slow there).
The expansion x.mu - ||mu||^2 / 2 needs the centring: ``steps`` (any batch dims, any units) keeps the
difference form of ``gmm.log_joint``.
Why a second form of the E-step and not ``steps.e_step`` on ``gmm.log_joint``: the kernel centres on each
mixture's mean and expands around it on every call, which on a chunk of R fits per task forms the points'
features R times per iteration, and its log-sum-exp reduces over the short minor K axis; this form builds
the features once per chunk and unrolls the softmax. On CPU, 20 EM steps of 64 tasks x 10 fits (K 5, N 128)
took 5.3-8.5x longer through ``steps.em_step`` than here (D 2 and 8, isotropic and diagonal; median of 7
calls, 2 cores at load ~5).
What is shared: the mixture (``tgmm_jax.gmm``), the M-step (``steps.moments``) and ``VARIANCE_REG``; the
tests hold both forms to scikit-learn's ``GaussianMixture``, not to each other.
Shapes: C tasks in a chunk, R fits per task, K components (padded), N points (padded), D dims, F features.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from tgmm_jax.mixture.steps import moments

HIGHEST = jax.lax.Precision.HIGHEST
_LOG_2PI = math.log(2.0 * math.pi)
# Above this many components the softmax uses XLA reductions instead of an unrolled elementwise pass.
_MAX_UNROLLED_K = 8


@struct.dataclass
class ChunkData:
    """Per-chunk data, centred on each task's mean of real points; padded points are zero."""

    feats_CxNxF: jax.Array  # x, or [x, x^2] when variances are learned
    feats_CxFxN: jax.Array  # the same, transposed once for the E-step matmul
    mask_CxN: jax.Array  # float 1 = real point
    num_points_C: jax.Array  # float
    centre_CxD: jax.Array
    sq_norm_mean_C: jax.Array  # mean over real points of ||x - centre||^2 (for the unit-variance constant)


@struct.dataclass
class FitState:
    """R mixtures per task, in centred coordinates."""

    weights_CxRxK: jax.Array
    means_CxRxKxD: jax.Array
    variances_CxRxKxD: jax.Array | None  # None: unit variance, known


def centre_of(points_CxNxD: jax.Array, point_mask_CxN: jax.Array) -> jax.Array:
    """Mean of each task's real points: [C, D]."""
    # where() and not a product: padded rows may hold anything, even NaN, and must not leak in.
    x_CxNxD = jnp.where(point_mask_CxN[..., None], points_CxNxD, 0.0)
    count_C = jnp.maximum(jnp.sum(point_mask_CxN, axis=-1), 1).astype(x_CxNxD.dtype)
    return jnp.sum(x_CxNxD, axis=1) / count_C[:, None]


def prepare_chunk(points_CxNxD: jax.Array, point_mask_CxN: jax.Array, learn_variances: bool) -> ChunkData:
    """Centres the points and builds the matmul features once for all iterations and restarts."""
    mask_CxN = point_mask_CxN.astype(points_CxNxD.dtype)
    num_points_C = jnp.maximum(jnp.sum(mask_CxN, axis=-1), 1.0)
    centre_CxD = centre_of(points_CxNxD, point_mask_CxN)
    x_CxNxD = jnp.where(point_mask_CxN[..., None], points_CxNxD - centre_CxD[:, None, :], 0.0)
    sq_norm_mean_C = jnp.sum(x_CxNxD**2, axis=(1, 2)) / num_points_C
    feats = jnp.concatenate([x_CxNxD, x_CxNxD**2], axis=-1) if learn_variances else x_CxNxD
    return ChunkData(feats, jnp.swapaxes(feats, 1, 2), mask_CxN, num_points_C, centre_CxD, sq_norm_mean_C)


def _log_weights(weights, component_mask):
    """log pi with -inf on padded and dead (zero-weight) components."""
    live = component_mask & (weights > 0)
    return jnp.where(live, jnp.log(jnp.where(live, weights, 1.0)), -jnp.inf)


def component_logits(data: ChunkData, state: FitState, component_mask_CxK: jax.Array) -> jax.Array:
    """log pi_k + log N(x_n; mu_k, Sigma_k) up to a per-point constant: [C, R, K, N]."""
    mask_Cx1xK = component_mask_CxK[:, None, :]
    log_w_CxRxK = _log_weights(state.weights_CxRxK, mask_Cx1xK)
    mu = state.means_CxRxKxD
    if state.variances_CxRxKxD is None:
        # -||x - mu||^2 / 2 = x.mu - ||mu||^2 / 2 - ||x||^2 / 2; the last term is per point: dropped.
        coef_CxRxKxF = mu
        bias_CxRxK = log_w_CxRxK - 0.5 * jnp.sum(mu**2, axis=-1)
    else:
        prec = 1.0 / state.variances_CxRxKxD
        coef_CxRxKxF = jnp.concatenate([mu * prec, -0.5 * prec], axis=-1)
        bias_CxRxK = log_w_CxRxK - 0.5 * jnp.sum(mu**2 * prec - jnp.log(prec), axis=-1)
    logits = jnp.einsum("crkf,cfn->crkn", coef_CxRxKxF, data.feats_CxFxN, precision=HIGHEST)
    return logits + bias_CxRxK[..., None]


def softmax_components(logits_CxRxKxN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(responsibilities [C, R, K, N], log-sum-exp over components [C, R, N])."""
    k = logits_CxRxKxN.shape[2]
    if k > _MAX_UNROLLED_K:
        lse = jax.nn.logsumexp(logits_CxRxKxN, axis=2)
        return jnp.exp(logits_CxRxKxN - lse[:, :, None, :]), lse
    # Max and sum over the components: unrolled elementwise ops on [C, R, N] slices. The exp is one op on
    # the whole array (one exp per component would make one large kernel each: slow to compile). The
    # barrier materialises the max: fused into the exp kernel, it was recomputed for every component.
    top = logits_CxRxKxN[:, :, 0]
    for j in range(1, k):
        top = jnp.maximum(top, logits_CxRxKxN[:, :, j])
    logits_CxRxKxN, top = jax.lax.optimization_barrier((logits_CxRxKxN, top))
    exps = jnp.exp(logits_CxRxKxN - top[:, :, None, :])
    total = exps[:, :, 0]
    for j in range(1, k):
        total = total + exps[:, :, j]
    return exps * (1.0 / total)[:, :, None, :], top + jnp.log(total)


def e_step(data: ChunkData, state: FitState, component_mask_CxK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(responsibilities [C, R, K, N] zero on padded points, reduced mean log-likelihood [C, R])."""
    resp, lse_CxRxN = softmax_components(component_logits(data, state, component_mask_CxK))
    resp = resp * data.mask_CxN[:, None, None, :]
    mask_Cx1xN = data.mask_CxN[:, None, :]
    # where(): a padded point's lse may be -inf or NaN; it must not reach the sum.
    loglik_CxR = jnp.sum(jnp.where(mask_Cx1xN > 0, lse_CxRxN, 0.0), axis=-1) / data.num_points_C[:, None]
    return resp, loglik_CxR


def m_step(data: ChunkData, resp_CxRxKxN: jax.Array, learn_variances: bool) -> FitState:
    """Weights, means (and diagonal variances) from responsibilities: ``steps.moments`` of their sums.

    A component with no mass gets weight 0 and mean 0 (the task's centre), and stays dead, as in
    standard EM. Variances use E[x^2] - mu^2 (as sklearn does), clipped at 0, plus ``VARIANCE_REG``.
    """
    nk_CxRxK = jnp.sum(resp_CxRxKxN, axis=-1)
    sums_CxRxKxF = jnp.einsum("crkn,cnf->crkf", resp_CxRxKxN, data.feats_CxNxF, precision=HIGHEST)
    d = data.centre_CxD.shape[-1]
    second = sums_CxRxKxF[..., d:] if learn_variances else None
    covariance_type = "diag" if learn_variances else "isotropic"
    weights, means, variances = moments(
        nk_CxRxK, sums_CxRxKxF[..., :d], second, data.num_points_C[:, None], covariance_type
    )
    return FitState(weights, means, variances)


def log_likelihood_offset(data: ChunkData, learn_variances: bool) -> jax.Array:
    """What to add to the reduced log-likelihood of ``e_step`` to get the true mean log-likelihood: [C]."""
    d = data.centre_CxD.shape[-1]
    const = -0.5 * d * _LOG_2PI
    if learn_variances:
        return jnp.full_like(data.num_points_C, const)
    return const - 0.5 * data.sq_norm_mean_C


def final_estimates(state: FitState, centre_CxD: jax.Array, component_mask_CxK: jax.Array):
    """(weights [C, K], means [C, K, D], scales [C, K, D] or None) of each task's first fit (R = 1),
    in data coordinates: 0 on padded components (scales 1), scales = sqrt(variances) when learned."""
    weights = jnp.where(component_mask_CxK, state.weights_CxRxK[:, 0], 0.0)
    means = jnp.where(component_mask_CxK[..., None], state.means_CxRxKxD[:, 0] + centre_CxD[:, None, :], 0.0)
    scales = None
    if state.variances_CxRxKxD is not None:
        scales = jnp.where(component_mask_CxK[..., None], jnp.sqrt(state.variances_CxRxKxD[:, 0]), 1.0)
    return weights, means, scales


def finite_estimates(weights_BxK, means_BxKxD, scales_BxKxD=None) -> jax.Array:
    """Per task, whether every estimated number is finite: [B] bool (``info['valid']`` of the EM-type fits)."""
    finite_B = jnp.all(jnp.isfinite(weights_BxK), axis=-1) & jnp.all(jnp.isfinite(means_BxKxD), axis=(-2, -1))
    if scales_BxKxD is not None:
        finite_B &= jnp.all(jnp.isfinite(scales_BxKxD), axis=(-2, -1))
    return finite_B
