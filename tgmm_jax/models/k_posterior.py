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

Fit geometry (``evidence_geometry``, tried, not shipped): a third zero-initialised MLP also reads how each K's
fit looks (``fit_geometry``: the closest two means in noise units, the smallest and mean log expected counts,
the shared variance). Trained from the shipped stage 6 beside a same-start, same-batch run without it, the two
training losses stayed within 1.6e-4 of each other for 1150 steps (results/k_posterior/TRAINING.md): the gains
and the set network's state already carry what it adds.

Known noise (``noise_head``, for a user who knows the noise variance; the paper's setting): a fourth
zero-initialised MLP reads, for every K, the log of the evidence fit's shared variance over the known noise
variance (``noise_variance_B`` of the call, in the points' units, NaN for a task whose noise is unknown), the
evidence's features and the head's hidden state; its output is added to the logits of the tasks whose noise is
known. A K below the true one leaves the spread between the merged clusters in its variance, which only a
known noise level shows: the unit-free network cannot read it. Joint scaling (x -> c x, variance -> c^2
variance) leaves the ratio, hence the answer, unchanged. The shipped head was trained alone, every other
parameter frozen (``--train_noise_head_only``), so without a known noise the model answers as before (its
parameters are the same; the outputs agree to float32 rounding, ~1e-6).

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
    # True: the evidence also reads the geometry of each K's fit (``fit_geometry``) through a third,
    # zero-initialised MLP, so a checkpoint without it starts from its own answer
    evidence_geometry: bool = False
    # True: a fourth, zero-initialised MLP reads each K's fitted noise variance against a known one
    # (``noise_variance_B`` of the call), so the model also serves the known-noise setting (module docstring)
    noise_head: bool = False

    @nn.compact
    def __call__(
        self, points_BxNxD: jax.Array, point_mask_BxN: jax.Array, noise_variance_B: jax.Array | None = None
    ) -> jax.Array:
        """log P(K | X) [B, k_max]. ``noise_variance_B`` ([B] or a scalar, in the points' units; needs
        ``noise_head``): the known noise variance per coordinate of each task, NaN where it is unknown (so is a
        value <= 0 or infinite, which cannot be refused inside jit: ``posterior_over_k`` refuses it); None:
        unknown for every task (the answer is then that of the model without the noise head)."""
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
        if self.evidence_geometry and self.evidence_restarts < 1:
            raise ValueError("KPosterior(evidence_geometry=True) needs evidence_restarts >= 1")
        if self.noise_head and self.evidence_restarts < 1:
            raise ValueError(
                "KPosterior(noise_head=True) reads the evidence's fits: needs evidence_restarts >= 1"
            )
        if noise_variance_B is not None and not self.noise_head:
            raise ValueError(
                "a known noise_variance needs a KPosterior with noise_head=True (this one has none)"
            )
        if self.evidence_restarts > 0:
            logits_BxK = logits_BxK + self._evidence_logits(
                points_BxNxD, mask_BxN, norm, hidden, noise_variance_B
            )
        return jax.nn.log_softmax(logits_BxK.astype(jnp.float32), axis=-1)

    def _evidence_logits(self, points_BxNxD, mask_BxN, norm, hidden_BxH, noise_variance_B=None):
        """The likelihood evidence's contribution to the logits (zero at initialisation, so a checkpoint
        without it starts from its own answer): an MLP on the per-K gains of the best tied-spherical EM fit
        (``k_evidence``), in units of BIC's penalty per component, and a BIC-like softmax, joined by the head's
        hidden state."""
        k_max = self.k_max
        fits = k_evidence.best_fits(
            points_BxNxD,
            mask_BxN,
            norm.coords_BxNxR[..., 0],
            k_max,
            self.evidence_restarts,
            self.evidence_steps,
        )
        loglik_BxK = fits["loglik_BxK"]
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
        logits_BxK = nn.Dense(k_max, kernel_init=nn.initializers.zeros, name="evidence_out")(h)
        if self.noise_head and (noise_variance_B is not None or self.is_initializing()):
            b = points_BxNxD.shape[0]
            noise_B = jnp.full((b,), jnp.nan) if noise_variance_B is None else jnp.asarray(noise_variance_B)
            noise_B = jnp.broadcast_to(noise_B.astype(jnp.float32), (b,))
            known_B = jnp.isfinite(noise_B) & (noise_B > 0)  # NaN: this task's noise is unknown
            noise_BxK = self._noise_logits(fits, feats, hidden_BxH, jnp.where(known_B, noise_B, 1.0))
            logits_BxK = logits_BxK + jnp.where(known_B[:, None], noise_BxK, 0.0)
        if not self.evidence_geometry:
            return logits_BxK
        geometry_BxG = jax.lax.stop_gradient(fit_geometry(fits, n_B))
        g = nn.LayerNorm(name="evidence_geometry_ln")(jnp.concatenate([geometry_BxG, feats], axis=-1))
        g = jax.nn.gelu(nn.Dense(2 * e, name="evidence_geometry_fc")(g))
        g = jnp.concatenate([g, hidden_BxH], axis=-1)
        g = jax.nn.gelu(nn.Dense(2 * e, name="evidence_geometry_fc2")(g))
        geometry_out = nn.Dense(k_max, kernel_init=nn.initializers.zeros, name="evidence_geometry_out")
        return logits_BxK + geometry_out(g)

    def _noise_logits(self, fits, evidence_BxF, hidden_BxH, noise_variance_B):
        """The known noise's contribution to the logits (zero at initialisation): an MLP on each K's fitted
        shared variance over the known one, ``log(variance_K / noise_variance)`` in the data's units (a K
        below the true one leaves the between-cluster spread in its variance), joined by the evidence's
        features and the head's hidden state."""
        spread_sq_B = fits["spread_B"] ** 2  # the variance the evidence's points were divided by
        noise_B = jnp.asarray(noise_variance_B, jnp.float32)
        variance_BxK = jnp.maximum(fits["variance_BxK"], k_evidence.VARIANCE_FLOOR)
        log_ratio_BxK = jnp.log(variance_BxK) + jnp.log(spread_sq_B / noise_B)[:, None]
        log_ratio_BxK = jnp.clip(jnp.where(jnp.isfinite(log_ratio_BxK), log_ratio_BxK, 0.0), -10.0, 10.0)
        feats = jax.lax.stop_gradient(jnp.concatenate([log_ratio_BxK, jnp.diff(log_ratio_BxK, axis=-1)], -1))
        e = self.config.width
        h = nn.LayerNorm(name="noise_ln")(jnp.concatenate([feats, evidence_BxF], axis=-1))
        h = jax.nn.gelu(nn.Dense(2 * e, name="noise_fc")(jnp.concatenate([feats, h], axis=-1)))
        h = jax.nn.gelu(nn.Dense(2 * e, name="noise_fc2")(jnp.concatenate([h, hidden_BxH], axis=-1)))
        return nn.Dense(self.k_max, kernel_init=nn.initializers.zeros, name="noise_out")(h)


def fit_geometry(fits: dict, n_B: jax.Array) -> jax.Array:
    """What each K's best fit looks like, beyond its likelihood: [B, 4 K_max], per K (``k_evidence.best_fits``,
    in the task's normalised coordinates, so every feature is free of units, rotations and the points' order):
      * the smallest squared distance between two of its means over the shared variance, log1p
        (0 for K = 1): a component split off a real one sits close to it;
      * the log of its smallest expected count, N min_k w_k (floored at 1): a component few points support;
      * the log of its shared variance (the normalised data's is 1): how much of the spread the K means explain;
      * the mean log expected count per component, mean_k log(N w_k): the Laplace approximation's Occam term
        depends on each component's count, not on N alone as BIC's does.
    Meant to tell a real component from one that EM fits to noise, which the likelihood gain alone does not show
    at small N; in training they added nothing the gains and the set network did not carry (module docstring)."""
    weights_BxKxK = fits["weights_BxKxK"]
    means_BxKxKxD = fits["means_BxKxKxD"]
    var_BxK = jnp.maximum(fits["variance_BxK"], k_evidence.VARIANCE_FLOOR)
    k_max = weights_BxKxK.shape[-1]
    live_KxK = jnp.arange(k_max)[None, :] <= jnp.arange(k_max)[:, None]  # [K - 1, component]: component < K
    pair_KxKxK = live_KxK[:, :, None] & live_KxK[:, None, :] & ~jnp.eye(k_max, dtype=bool)[None]
    diff_BxKxKxKxD = means_BxKxKxD[:, :, :, None, :] - means_BxKxKxD[:, :, None, :, :]
    sq_dist_BxKxKxK = jnp.where(pair_KxKxK[None], jnp.sum(diff_BxKxKxKxD**2, axis=-1), jnp.inf)
    min_sq_BxK = jnp.min(sq_dist_BxKxKxK, axis=(-1, -2))
    separation_BxK = jnp.where(jnp.isfinite(min_sq_BxK), jnp.log1p(min_sq_BxK / var_BxK), 0.0)
    counts_BxKxK = jnp.maximum(n_B[:, None, None] * weights_BxKxK, 1.0)
    log_counts_BxKxK = jnp.where(live_KxK[None], jnp.log(counts_BxKxK), jnp.inf)
    min_count_BxK = jnp.min(log_counts_BxKxK, axis=-1)
    mean_count_BxK = (
        jnp.sum(jnp.where(live_KxK[None], log_counts_BxKxK, 0.0), -1) / jnp.arange(1, k_max + 1)[None, :]
    )
    geometry = jnp.concatenate([separation_BxK, min_count_BxK, jnp.log(var_BxK), mean_count_BxK], axis=-1)
    return jnp.where(jnp.isfinite(geometry), geometry, 0.0)


def k_cross_entropy(log_probs_BxK: jax.Array, num_components_B: jax.Array) -> jax.Array:
    """Mean over tasks of -log P(true K | X) (K is 1-based)."""
    idx_B = jnp.asarray(num_components_B, jnp.int32) - 1
    return -jnp.mean(jnp.take_along_axis(log_probs_BxK, idx_B[:, None], axis=-1))
