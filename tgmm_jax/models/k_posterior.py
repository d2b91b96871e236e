"""A learned posterior over the number of components: ``KPosterior`` maps a task's points to log P(K | X).

Read-in: ``normalize_tasks`` (models/normalize.py) centres each task, projects it on its top ``project_rank``
principal directions (sign fixed by the data's third moment) and divides by the square root of the top
eigenvalue. The per-point tokens are the read-in of the normalised TGMM (``ReadIn``: Dense on the normalised
coordinates joined by the task features), here with a single task-embedding row (there is no K to condition on).
The task features are the normalised eigenvalue spectrum (eigenvalues / top eigenvalue, ``project_rank``
values, zero beyond the data dimension) and log N; the absolute scale (``log scale``, the first feature of
``normalize_tasks``) is dropped, so nothing the network sees depends on units. Hence log P(K | X) is invariant
to the order of the points, to translations, to rotations (for distinct eigenvalues) and to x -> c x (c > 0),
and one parameter set reads every dimension D.

Backbone: the `set` transformer (``BACKBONES["set"]``: GPT-2 blocks, no positions, no causal mask, padded points
masked as keys). Pooling over the real points: a masked mean of the states and a learned-query attention pool
(one query per head); both, joined by the task features, go through an MLP head to K_max logits, and the output
is their ``log_softmax``. The network's fields are those of ``ModelConfig`` (width, num_layers, num_heads,
mlp_ratio, task_embed_dim, project_rank, dtype); ``k_posterior_config`` builds one.

Likelihood evidence (``evidence_restarts > 0``, the shipped model): for every K, the best of that many EM fits
with one shared spherical variance (``tgmm_jax.k_evidence``, ``evidence_steps`` iterations from k-means++
starts, the points read in the order of their first normalised coordinate, so the invariances above hold).
Their per-K log-likelihood gains, in units of BIC's penalty per component, and a BIC-like softmax go through a
second MLP joined by the head's hidden state; its zero-initialised output is added to the head's logits, so a
set network without it (same other parameters) is the starting point. No gradient flows into the fits.

The task prior it is trained on (experiments/train_k_posterior.py): ``TaskSpec(ks=(1..8), cos_threshold=1.0)``,
i.e. Algorithm 1 without the pairwise-cosine filter of the means (at D = 2 that filter cannot place 8 means:
its acceptance rate is below the sampler's floor), means U[-5, 5]^D, unit isotropic noise, weights
sort(U[0.2, 0.8]^K) normalised, N ~ U{32..128}, D cycling over a list by step, K uniform on 1..8.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tgmm_jax import k_evidence
from tgmm_jax.models.backbones import BACKBONES
from tgmm_jax.models.config import ModelConfig, model_config
from tgmm_jax.models.normalize import normalize_tasks
from tgmm_jax.models.readin import ReadIn

# Masked pooling scores: exp underflows to exactly 0 in float32, and a task with no real point stays finite.
_MASKED_SCORE = -1e30


def k_posterior_config(size: str = "small", k_max: int = 8, **overrides) -> ModelConfig:
    """A ``ModelConfig`` for ``KPosterior``: the `set` backbone, the normalised read-in, rank K_max - 1.

    The centred means of K components span K - 1 directions, so rank K_max - 1 keeps all of the signal.
    """
    fields = dict(backbone="set", readin="normalized", project_rank=max(k_max - 1, 1))
    return model_config(size, **{**fields, **overrides})


class KPosterior(nn.Module):
    """log P(K | X) for K = 1..k_max: ``apply(params, points [B, N, D], point_mask [B, N])`` -> [B, k_max].

    Padded points (point_mask False) may hold anything (even NaN); they change nothing.
    """

    config: ModelConfig
    k_max: int = 8
    evidence_restarts: int = 0  # > 0: also read the likelihood evidence (tgmm_jax/k_evidence.py)
    evidence_steps: int = 30

    @nn.compact
    def __call__(self, points_BxNxD: jax.Array, point_mask_BxN: jax.Array) -> jax.Array:
        c = self.config
        if c.backbone != "set" or c.readin != "normalized":
            raise ValueError(
                f"KPosterior needs backbone='set' and readin='normalized' (order- and unit-free), got "
                f"backbone={c.backbone!r}, readin={c.readin!r}"
            )
        points_BxNxD = jnp.asarray(points_BxNxD)
        if points_BxNxD.ndim != 3:
            raise ValueError(f"points must be [B, N, D], got shape {points_BxNxD.shape}")
        mask_BxN = jnp.asarray(point_mask_BxN).astype(bool)
        if mask_BxN.shape != points_BxNxD.shape[:2]:
            raise ValueError(f"point_mask must be [B, N] = {points_BxNxD.shape[:2]}, got {mask_BxN.shape}")
        points_BxNxD = jnp.where(mask_BxN[..., None], points_BxNxD, 0.0)
        norm = normalize_tasks(points_BxNxD, mask_BxN, c.project_rank)
        features_BxF = norm.features_BxF[:, 1:]  # drop log(scale): the only unit-dependent feature
        batch = points_BxNxD.shape[0]
        tokens_BxNxE = ReadIn(c, 1, name="read_in")(
            norm.coords_BxNxR, jnp.zeros((batch,), jnp.int32), features_BxF
        )
        states_BxNxE = BACKBONES["set"].module(c, name="backbone")(tokens_BxNxE, mask_BxN)

        weight_BxN = mask_BxN.astype(jnp.float32)
        count_B = jnp.maximum(jnp.sum(weight_BxN, axis=-1), 1.0)
        mean_BxE = jnp.einsum("bn,bne->be", weight_BxN, states_BxNxE) / count_B[:, None]

        h, e = c.num_heads, c.width
        keys_BxNxE = nn.Dense(e, name="pool_key")(states_BxNxE)
        values_BxNxE = nn.Dense(e, name="pool_value")(states_BxNxE)
        query_HxF = self.param("pool_query", nn.initializers.normal(1.0), (h, e // h))
        keys_BxNxHxF = keys_BxNxE.reshape(*keys_BxNxE.shape[:2], h, e // h)
        values_BxNxHxF = values_BxNxE.reshape(*values_BxNxE.shape[:2], h, e // h)
        scores_BxHxN = jnp.einsum("hf,bnhf->bhn", query_HxF, keys_BxNxHxF) / jnp.sqrt(e // h)
        scores_BxHxN = jnp.where(mask_BxN[:, None, :], scores_BxHxN, _MASKED_SCORE)
        probs_BxHxN = jax.nn.softmax(scores_BxHxN, axis=-1)
        pooled_BxE = jnp.einsum("bhn,bnhf->bhf", probs_BxHxN, values_BxNxHxF).reshape(batch, e)

        summary = jnp.concatenate([mean_BxE, pooled_BxE, features_BxF.astype(jnp.float32)], axis=-1)
        hidden = nn.LayerNorm(name="head_ln")(summary)
        hidden = jax.nn.gelu(nn.Dense(c.mlp_ratio * e, name="head_fc")(hidden))
        logits_BxK = nn.Dense(self.k_max, name="head_out")(hidden)
        if self.evidence_restarts > 0:
            logits_BxK = logits_BxK + self._evidence_logits(points_BxNxD, mask_BxN, norm, hidden)
        return jax.nn.log_softmax(logits_BxK.astype(jnp.float32), axis=-1)

    def _evidence_logits(self, points_BxNxD, mask_BxN, norm, hidden_BxH):
        """The likelihood evidence's contribution to the logits (zero at initialisation, so a checkpoint
        without it starts from its own answer): an MLP on the per-K gains of the best tied-spherical EM fit
        (``k_evidence``), in units of BIC's penalty per component, and a BIC-like softmax, joined by the head's
        hidden state."""
        k_max = self.k_max
        loglik_BxK = k_evidence.max_log_likelihood_per_k(
            points_BxNxD,
            mask_BxN,
            norm.coords_BxNxR[..., 0],
            k_max,
            self.evidence_restarts,
            self.evidence_steps,
        )
        n_B = jnp.maximum(jnp.sum(mask_BxN, axis=-1), 2).astype(jnp.float32)
        d = points_BxNxD.shape[-1]
        total_BxK = n_B[:, None] * loglik_BxK
        penalty = 0.5 * (d + 1) * jnp.log(n_B)[:, None]  # BIC's per component (D means, one weight)
        gains_BxG = jnp.diff(total_BxK, axis=-1) / penalty
        score_BxK = total_BxK - penalty * jnp.arange(k_max)[None, :]
        score_BxK = jnp.maximum(jax.nn.log_softmax(score_BxK, axis=-1), -30.0)
        size_Bx2 = jnp.stack([jnp.log(n_B), jnp.full_like(n_B, jnp.log(d))], axis=-1)
        feats = jnp.concatenate([jnp.arcsinh(gains_BxG), score_BxK / 10.0, size_Bx2], axis=-1)
        feats = jax.lax.stop_gradient(jnp.where(jnp.isfinite(feats), feats, 0.0))
        e = self.config.width
        h = jax.nn.gelu(nn.Dense(2 * e, name="evidence_fc")(nn.LayerNorm(name="evidence_ln")(feats)))
        h = jax.nn.gelu(nn.Dense(2 * e, name="evidence_fc2")(jnp.concatenate([h, hidden_BxH], axis=-1)))
        return nn.Dense(k_max, kernel_init=nn.initializers.zeros, name="evidence_out")(h)


def k_cross_entropy(log_probs_BxK: jax.Array, num_components_B: jax.Array) -> jax.Array:
    """Mean over tasks of -log P(true K | X) (K is 1-based)."""
    idx_B = jnp.asarray(num_components_B, jnp.int32) - 1
    return -jnp.mean(jnp.take_along_axis(log_probs_BxK, idx_B[:, None], axis=-1))
