"""Training objectives on a TGMMOutput against a GMMTask: est, est_matched, lik and their sums.

est          the paper's loss (docs/official_differences.md §3):
             soft-label cross-entropy on the weights + MSE on the means
             (sum over real components / (K D) per task), + the same MSE on the scales for the anisotropic
             variant; targets in the sampler's ascending-weight order; batch mean.
est_matched  the same terms after matching each task's targets to the predicted components with the
             permutation of smallest loss (exact, all K_max! permutations inside jit, as a DETR set loss).
lik          mean negative log-likelihood of each task's real points under the predicted mixture.
a+lik        a + lik_weight * lik.
resp_weight  (any objective) + resp_weight * the clustering read-out's responsibility cross-entropy against
             the true labels, under the est-matched permutation (``responsibility_loss``).

Every function is jit-able and masked (padded components and points never contribute).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tgmm_jax import gmm, metrics
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.models.tgmm import TGMMOutput
from tgmm_jax.tasks import GMMTask

OBJECTIVES = ("est", "est_matched", "lik", "est+lik", "est_matched+lik")


def _masked_log_softmax(logits_BxK: jax.Array, mask_BxK: jax.Array) -> jax.Array:
    """log softmax over the real components; 0 on padded ones (so 0 * it stays 0)."""
    log_p_BxK = jax.nn.log_softmax(jnp.where(mask_BxK, logits_BxK, -jnp.inf), axis=-1)
    return jnp.where(mask_BxK, log_p_BxK, 0.0)


def _per_component_sq(pred_BxKxD: jax.Array, true_BxKxD: jax.Array, mask_BxK: jax.Array) -> jax.Array:
    """||pred_k - true_k||^2 / (K D) on real components, 0 on padded ones: [B, K]."""
    k_B = jnp.sum(mask_BxK, axis=-1)
    scale_B = 1.0 / (jnp.maximum(k_B, 1) * pred_BxKxD.shape[-1])
    sq_BxK = jnp.sum(jnp.square(pred_BxKxD - true_BxKxD), axis=-1)
    return jnp.where(mask_BxK, sq_BxK, 0.0) * scale_B[:, None]


def est_terms(output: TGMMOutput, task: GMMTask) -> dict[str, jax.Array]:
    """The paper's estimation loss with targets in the task's own component order (batch means).

    Returns est (the total), weights_ce, weights_kl (= weights_ce minus the targets' entropy, 0 at a perfect
    fit; for logging), means_mse and, when the output has scales, scales_mse.
    """
    mask_BxK = task.component_mask
    log_p_BxK = _masked_log_softmax(output.weight_logits, mask_BxK)
    target_BxK = jnp.where(mask_BxK, task.weights, 0.0)
    ce_B = -jnp.sum(target_BxK * log_p_BxK, axis=-1)
    entropy_B = -jnp.sum(
        jnp.where(target_BxK > 0, target_BxK * jnp.log(jnp.where(target_BxK > 0, target_BxK, 1.0)), 0.0), -1
    )
    terms = {
        "weights_ce": jnp.mean(ce_B),
        "weights_kl": jnp.mean(ce_B - entropy_B),
        "means_mse": jnp.mean(jnp.sum(_per_component_sq(output.means, task.means, mask_BxK), axis=-1)),
    }
    total = terms["weights_ce"] + terms["means_mse"]
    if output.scales is not None:
        terms["scales_mse"] = jnp.mean(
            jnp.sum(_per_component_sq(output.scales, task.scales, mask_BxK), axis=-1)
        )
        total = total + terms["scales_mse"]
    return {"est": total, **terms}


def match_components(output: TGMMOutput, task: GMMTask) -> jax.Array:
    """pred_index_BxK[b, j]: the predicted component matched to target j, minimising the est loss.

    The est loss is a sum over targets j of cost[i = pred slot, j]: -pi_j log p_i + ||mu_i - mu_j||^2/(KD)
    (+ scales), because the softmax normaliser is shared by all real slots. Real targets only go to real
    slots; all K_max! permutations are scored (K_max <= metrics.MAX_BRUTE_FORCE_K).
    """
    mask_BxK = task.component_mask
    out = jax.lax.stop_gradient(output)
    log_p_BxK = _masked_log_softmax(out.weight_logits, mask_BxK)
    target_BxK = jnp.where(mask_BxK, task.weights, 0.0)
    dim = task.means.shape[-1]
    scale_B = 1.0 / (jnp.maximum(jnp.sum(mask_BxK, axis=-1), 1) * dim)

    def pair_sq(pred_BxKxD, true_BxKxD):  # [b, i, j] = ||pred_i - true_j||^2
        return jnp.sum(jnp.square(pred_BxKxD[:, :, None, :] - true_BxKxD[:, None, :, :]), axis=-1)

    cost_BxKxK = -log_p_BxK[:, :, None] * target_BxK[:, None, :]
    cost_BxKxK = cost_BxKxK + pair_sq(out.means, task.means) * scale_B[:, None, None]
    if out.scales is not None:
        cost_BxKxK = cost_BxKxK + pair_sq(out.scales, task.scales) * scale_B[:, None, None]
    return metrics.optimal_assignment(metrics.masked_match_cost(cost_BxKxK, mask_BxK))


def negative_log_likelihood(output: TGMMOutput, task: GMMTask) -> jax.Array:
    """Batch mean of -1/N_b sum_n log p(x_bn | predicted mixture) over each task's real points.

    Built from log_softmax(logits) rather than log(softmax) (as gmm.mean_log_likelihood on to_params()
    would do), so a weight that underflows to 0 cannot turn the gradient into NaN.
    """
    mask_BxK = task.component_mask
    points_BxNxD = jnp.where(task.point_mask[:, :, None], task.points, 0.0)  # padded points may hold anything
    mixture = MixtureParams(output.to_params().weights, output.means, output.scales, mask_BxK)
    log_joint_BxNxK = (
        gmm.component_log_density(points_BxNxD, mixture)
        + _masked_log_softmax(output.weight_logits, mask_BxK)[:, None, :]
    )
    log_joint_BxNxK = jnp.where(mask_BxK[:, None, :], log_joint_BxNxK, -jnp.inf)
    log_p_BxN = jnp.where(task.point_mask, jax.nn.logsumexp(log_joint_BxNxK, axis=-1), 0.0)
    mean_log_p_B = jnp.sum(log_p_BxN, axis=-1) / jnp.maximum(jnp.sum(task.point_mask, axis=-1), 1)
    return -jnp.mean(mean_log_p_B)


def responsibility_loss(
    output: TGMMOutput,
    task: GMMTask,
    index_BxK: jax.Array | None = None,
    label_probs_BxNxK: jax.Array | None = None,
) -> jax.Array:
    """Mean over real points of -log resp[n, slot matched to n's true component] (the est-matched slots;
    ``index_BxK``, from ``match_components``, when the caller has it already). With ``label_probs_BxNxK``
    (soft labels over the task's components, e.g. the Bayes posterior's P(z_n = j | x)) the cross-entropy
    -sum_j p[n, j] log resp[n, slot matched to j] instead; one-hot labels give the same value."""
    if output.log_responsibilities is None:
        raise ValueError("responsibility_loss needs a read-out with responsibilities (readout='cluster')")
    if index_BxK is None:
        index_BxK = match_components(output.components_only(), task)  # [b, j]: slot matched to target j
    mask_BxN = task.point_mask.astype(jnp.float32)
    if label_probs_BxNxK is not None:
        if label_probs_BxNxK.shape != task.points.shape[:2] + task.weights.shape[1:]:
            raise ValueError(
                f"label_probs {label_probs_BxNxK.shape} do not match the task's [B, N, K] "
                f"{task.points.shape[:2] + task.weights.shape[1:]}"
            )
        # log resp of the slot matched to each target component j: [B, N, K]
        log_r_BxNxK = jnp.take_along_axis(output.log_responsibilities, index_BxK[:, None, :], axis=2)
        positive = label_probs_BxNxK > 0  # 0 * log 0 = 0 (a padded component's slot may have log resp -inf)
        ce_BxN = -jnp.sum(label_probs_BxNxK * jnp.where(positive, log_r_BxNxK, 0.0), axis=-1)
        return jnp.sum(ce_BxN * mask_BxN) / jnp.maximum(jnp.sum(mask_BxN), 1.0)
    slot_BxN = jnp.take_along_axis(index_BxK, task.labels, axis=1)
    log_p_BxN = jnp.take_along_axis(output.log_responsibilities, slot_BxN[..., None], axis=-1)[..., 0]
    return -jnp.sum(log_p_BxN * mask_BxN) / jnp.maximum(jnp.sum(mask_BxN), 1.0)


def compute_loss(
    objective: str,
    output: TGMMOutput,
    task: GMMTask,
    *,
    lik_weight: float = 1.0,
    resp_weight: float = 0.0,
    label_probs_BxNxK: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, named scalar terms for logging, including 'loss') for one of OBJECTIVES; with
    ``label_probs_BxNxK`` the responsibility term is the cross-entropy against those soft labels."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    _check_compatible(output, task)
    for name, weight in (("lik_weight", lik_weight), ("resp_weight", resp_weight)):
        if isinstance(weight, (int, float)) and not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {weight!r}")
    parts = objective.split("+")
    terms: dict[str, jax.Array] = {}
    loss = jnp.float32(0.0)
    log_responsibilities, output = output.log_responsibilities, output.components_only()
    # one matching serves the responsibility loss and est_matched
    index_BxK = match_components(output, task) if resp_weight or parts[0] == "est_matched" else None
    if resp_weight:
        with_resp = output.replace(log_responsibilities=log_responsibilities)
        terms["resp_ce"] = responsibility_loss(with_resp, task, index_BxK, label_probs_BxNxK)
        loss = loss + resp_weight * terms["resp_ce"]
    if parts[0] in ("est", "est_matched"):
        if parts[0] == "est_matched":
            output = metrics.gather_components(output, index_BxK)
        terms.update(est_terms(output, task))
        loss = loss + terms["est"]
    if "lik" in parts:
        terms["nll"] = negative_log_likelihood(output, task)
        loss = loss + (lik_weight if len(parts) > 1 else 1.0) * terms["nll"]
    terms["loss"] = loss
    return loss, terms


def _check_compatible(output: TGMMOutput, task: GMMTask) -> None:
    if output.means.shape != task.means.shape:
        raise ValueError(f"output means {output.means.shape} do not match task means {task.means.shape}")
    if output.weight_logits.shape != task.weights.shape:
        raise ValueError(
            f"output weight_logits {output.weight_logits.shape} do not match task {task.weights.shape}"
        )
