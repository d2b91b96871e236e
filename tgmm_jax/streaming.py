"""Full-data EM in O(N K d) memory: the E- and M-steps of ``refine.em_refine`` streamed over blocks of points.

One dataset's points [N, D] are cut into blocks of ``block`` rows (``to_blocks``: [M, block, D] and a point
mask, the last block and any whole blocks past the data padded), and a jitted loop over the first
``num_blocks`` blocks accumulates, per task and component, the sufficient statistics of an EM step: the
responsibility mass sum_n r_nk, sum_n r_nk x_n and (for mixtures with scales) sum_n r_nk x_n^2, with the
log-likelihood sum_n log p(x_n) of the current mixture on the way. Nothing of size N x K or N x N is ever
built: memory is the data plus one block's [T, block, K] responsibilities.

The mixtures are a batch of T tasks on the same data (``MixtureParams`` with weights [T, K], means [T, K, D]:
e.g. the candidate Ks and restarts of one dataset), so the data is never copied per task. The step is the one
of ``refine.em_refine`` (weights = mean responsibility, means = responsibility-weighted means, diagonal
variances E[x^2] - mu^2 clipped at 0 plus ``VARIANCE_REG``, a component without mass at the data's centre),
run like it in coordinates centred on the data's mean (tested equal to it); or the spherical or diagonal
M-step of ``tgmm_jax.mixture`` for any ``covariance_type``. ``num_blocks`` is an argument, not
a shape: arrays padded to a bucket of blocks serve every N in that bucket with one compiled program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tgmm_jax import gmm, mixture
from tgmm_jax.gmm import MixtureParams

TRACE_COUNTS: dict[str, int] = {}  # function name -> times traced (each trace is one compilation)


def count_trace(name: str) -> None:
    TRACE_COUNTS[name] = TRACE_COUNTS.get(name, 0) + 1


def to_blocks(
    points_NxD: np.ndarray, block: int, num_blocks: int | None = None, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray, int]:
    """(points [M, block, D] zero-padded, point mask [M, block], the number of blocks holding points).

    ``num_blocks`` (M, at least the blocks the points need; default exactly those) lets callers pad to a
    bucket so that one compiled program serves many N. Host-side NumPy; one copy of the points."""
    n, d = points_NxD.shape
    used = max(-(-n // block), 1)
    m = used if num_blocks is None else int(num_blocks)
    if m < used:
        raise ValueError(f"{n} points need {used} blocks of {block}, got num_blocks={m}")
    flat_x = np.zeros((m * block, d), dtype)
    flat_x[:n] = points_NxD
    flat_mask = np.zeros(m * block, bool)
    flat_mask[:n] = True
    return flat_x.reshape(m, block, d), flat_mask.reshape(m, block), used


def _statistics(x_MxLxD, mask_MxL, num_blocks, shift_D, params: MixtureParams):
    """Sums over the real points of the first ``num_blocks`` blocks, with x -> x - shift: (mass [T, K],
    sum r x [T, K, D], sum r x^2 [T, K, D] or None, sum log p(x) [T])."""
    t, k = params.weights.shape
    block, d = x_MxLxD.shape[1:]
    hi = jax.lax.Precision.HIGHEST
    second = params.scales is not None

    def body(i, acc):
        mass_TxK, first_TxKxD, second_TxKxD, loglik_T = acc
        m_L = mask_MxL[i]
        x_LxD = jnp.where(m_L[:, None], x_MxLxD[i] - shift_D[None, :], 0.0)
        log_joint_TxLxK = gmm.log_joint(jnp.broadcast_to(x_LxD[None], (t, block, d)), params)
        resp_TxLxK, block_loglik_T = mixture.e_step(log_joint_TxLxK, jnp.broadcast_to(m_L[None], (t, block)))
        mass_TxK = mass_TxK + jnp.sum(resp_TxLxK, axis=1)
        first_TxKxD = first_TxKxD + jnp.einsum("tlk,ld->tkd", resp_TxLxK, x_LxD, precision=hi)
        if second:
            second_TxKxD = second_TxKxD + jnp.einsum("tlk,ld->tkd", resp_TxLxK, x_LxD**2, precision=hi)
        loglik_T = loglik_T + block_loglik_T
        return mass_TxK, first_TxKxD, second_TxKxD, loglik_T

    zeros_TxKxD = jnp.zeros((t, k, d), jnp.float32)
    init = (jnp.zeros((t, k), jnp.float32), zeros_TxKxD, zeros_TxKxD, jnp.zeros((t,), jnp.float32))
    mass_TxK, first_TxKxD, second_TxKxD, loglik_T = jax.lax.fori_loop(0, num_blocks, body, init)
    return mass_TxK, first_TxKxD, second_TxKxD if second else None, loglik_T


def _m_step(stats, count, params: MixtureParams, covariance_type: str) -> MixtureParams:
    """``mixture.m_step`` from the summed statistics (centred coordinates)."""
    mass_TxK, first_TxKxD, second_TxKxD, loglik_T = stats
    if second_TxKxD is None:
        second_TxKxD = jnp.zeros_like(first_TxKxD)  # unused by the isotropic M-step
    summed = mixture.Statistics(mass_TxK, first_TxKxD, second_TxKxD, loglik_T)
    return mixture.m_step(summed, count, params.component_mask, covariance_type)


def _shift(params: MixtureParams, shift_D) -> MixtureParams:
    means = jnp.where(params.component_mask[..., None], params.means + shift_D[None, None, :], 0.0)
    return params.replace(means=means)


def _centre(x_MxLxD, mask_MxL, num_blocks):
    """(mean of the real points [D], their number) over the first ``num_blocks`` blocks."""

    def body(i, acc):
        total_D, count = acc
        m_L = mask_MxL[i]
        return total_D + jnp.sum(jnp.where(m_L[:, None], x_MxLxD[i], 0.0), axis=0), count + jnp.sum(m_L)

    init = (jnp.zeros(x_MxLxD.shape[-1], jnp.float32), jnp.zeros((), jnp.int32))
    total_D, count = jax.lax.fori_loop(0, num_blocks, body, init)
    count_f = jnp.maximum(count, 1).astype(jnp.float32)
    return total_D / count_f, count_f


@functools.partial(jax.jit, static_argnames=("steps", "covariance_type"))
def stream_em(x_MxLxD, mask_MxL, num_blocks, params: MixtureParams, steps: int, covariance_type=None):
    """``steps`` EM steps of every task of ``params`` on the points of the first ``num_blocks`` blocks.

    ``covariance_type`` (``mixture.COVARIANCE_TYPES``): None is ``refine.em_refine``'s, "diag" for a mixture
    with scales and "isotropic" (unit variance) without. Returns (the mixtures after ``steps`` steps, their mean log-likelihood [T], the mean log-likelihood after
    one more step [T]): ``steps`` + 2 passes over the data, plus one for its centre."""
    count_trace("stream_em")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if covariance_type is None:
        covariance_type = "isotropic" if params.scales is None else "diag"
    if (covariance_type == "isotropic") != (params.scales is None):
        raise ValueError(
            f"covariance_type={covariance_type!r} needs scales {'None' if params.scales is None else 'set'}"
        )
    centre_D, count = _centre(x_MxLxD, mask_MxL, num_blocks)

    def em(p):
        stats = _statistics(x_MxLxD, mask_MxL, num_blocks, centre_D, p)
        return _m_step(stats, count, p, covariance_type), stats[-1] / count

    def step(_, carry):
        p, _ = carry
        return em(p)

    centred = _shift(params, -centre_D)
    zeros_T = jnp.zeros(params.weights.shape[:1], jnp.float32)
    centred, _ = jax.lax.fori_loop(0, steps, step, (centred, zeros_T))
    following, loglik_T = em(centred)
    next_T = _statistics(x_MxLxD, mask_MxL, num_blocks, centre_D, following)[-1] / count
    return _shift(centred, centre_D), loglik_T, next_T


@jax.jit
def stream_mean_log_likelihood(x_MxLxD, mask_MxL, num_blocks, params: MixtureParams):
    """Mean log-likelihood [T] of every task's mixture on the points of the first ``num_blocks`` blocks
    (``gmm.mean_log_likelihood`` in blocks)."""
    count_trace("stream_mean_log_likelihood")
    centre_D, count = _centre(x_MxLxD, mask_MxL, num_blocks)
    return _statistics(x_MxLxD, mask_MxL, num_blocks, centre_D, _shift(params, -centre_D))[-1] / count
