"""Likelihood-weighted averaging of several fits of one mixture: a parameter-free hedge over local optima.

    weights_BxK, means_BxKxD, variances, probs_BxR = likelihood_weighted_average(
        weights_BxRxK, means_BxRxKxD, None, total_loglik_BxR, component_mask_BxK)

R fits per task (EM restarts, a read-out's seedings) usually end in a few local optima. Keeping the best is
maximum likelihood; the posterior mean under a flat prior instead averages the optima, each weighted by its
posterior mass. This is the crudest version of that average: every fit's components are matched to those of
the fit of highest likelihood (the permutation of least total squared distance between means, all K!
permutations scored, or the Hungarian solver above K = 6: ``tgmm_jax.metrics.optimal_assignment``), then the
matched weights, means (and variances) are averaged with fit probabilities softmax(total log-likelihood /
temperature), the log-likelihood summed over the task's points. Every fit counts, so an optimum reached by several starts weighs more (its basin's share
of the starts). At large N the best optimum's probability goes to 1 and the average is the maximum-likelihood fit;
at small N close optima share the estimate. Fits with a non-finite log-likelihood get probability 0 (a task
whose fits are all non-finite keeps its first fit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tgmm_jax import metrics


def fit_probabilities(total_loglik_BxR: jax.Array, temperature: float = 1.0) -> jax.Array:
    """softmax(total log-likelihood / temperature) over the R fits [B, R]; non-finite fits get 0."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    score_BxR = jnp.where(jnp.isfinite(total_loglik_BxR), total_loglik_BxR / temperature, -jnp.inf)
    any_B = jnp.any(jnp.isfinite(score_BxR), axis=-1, keepdims=True)
    score_BxR = jnp.where(any_B, score_BxR, jnp.where(jnp.arange(score_BxR.shape[-1]) == 0, 0.0, -jnp.inf))
    return jax.nn.softmax(score_BxR, axis=-1)


def likelihood_weighted_average(
    weights_BxRxK: jax.Array,
    means_BxRxKxD: jax.Array,
    variances_BxRxKxD: jax.Array | None,
    total_loglik_BxR: jax.Array,
    component_mask_BxK: jax.Array,
    temperature: float = 1.0,
    reference_B: jax.Array | None = None,
):
    """(weights [B, K], means [B, K, D], variances [B, K, D] or None, fit probabilities [B, R]): the module's
    average, in the slot order of the fit ``reference_B`` (default: the likeliest; a caller with a rule for
    near-ties passes its own, so that float32 noise cannot reorder the slots). Padded components
    (``component_mask`` False) stay in their slots and come out zero."""
    probs_BxR = fit_probabilities(total_loglik_BxR, temperature)
    best_B = jnp.argmax(probs_BxR, axis=-1) if reference_B is None else reference_B
    ref_BxKxD = jnp.take_along_axis(means_BxRxKxD, best_B[:, None, None, None], axis=1)[:, 0]
    mask_BxK = component_mask_BxK.astype(bool)

    def matched(means_BxKxD, *others):
        # cost[b, i = this fit's slot, j = the best fit's slot]
        cost = jnp.sum(jnp.square(means_BxKxD[:, :, None, :] - ref_BxKxD[:, None, :, :]), axis=-1)
        index_BxK = metrics.optimal_assignment(metrics.masked_match_cost(cost, mask_BxK))
        return metrics.gather_components((means_BxKxD, *others), index_BxK)

    fields = [means_BxRxKxD, weights_BxRxK] + ([] if variances_BxRxKxD is None else [variances_BxRxKxD])
    aligned = jax.vmap(matched, in_axes=1, out_axes=1)(*fields)
    p_BxR = jnp.where(probs_BxR > 0, probs_BxR, 0.0)

    def average(a_BxRxK):
        a_BxRxK = jnp.where(p_BxR.reshape(p_BxR.shape + (1,) * (a_BxRxK.ndim - 2)) > 0, a_BxRxK, 0.0)
        return jnp.einsum("br,br...->b...", p_BxR, a_BxRxK)

    means_BxKxD = jnp.where(mask_BxK[..., None], average(aligned[0]), 0.0)
    weights_BxK = jnp.where(mask_BxK, average(aligned[1]), 0.0)
    weights_BxK = weights_BxK / jnp.maximum(jnp.sum(weights_BxK, axis=-1, keepdims=True), 1e-30)
    variances = (
        None if variances_BxRxKxD is None else jnp.where(mask_BxK[..., None], average(aligned[2]), 1.0)
    )
    return weights_BxK, means_BxKxD, variances, probs_BxR
