"""The clustering read-out: K slots compete for the points, refined over T iterations with shared weights.

Per task with K components (slot initialisations learned per K in the task set):
  for t = 0..T:   logits[n, k] = key(h_n) . query(slot_k) / sqrt(E)
                                 + alpha * (log pi_k - scale^2 ||z_n - m_k||^2 / 2)      (t >= 1, ``em_logits``)
                  resp = softmax over the task's real components (slots compete, not points)
                  (t < T) m_k, pi_k = responsibility-weighted mean of the normalised coordinates z and mean
                  responsibility; slot_k += MLP([slot_k, attended values, m_k, log pi_k]); slots attend to
                  each other (``slot_attention``)
  outputs:        weights = mean responsibility over the real points, means = responsibility-weighted
                  averages of the raw points in the original space (anisotropic: per-dimension weighted
                  standard deviations, floored).
The second logit term is the exact E-step of a unit-variance mixture written in the normalised coordinates
(z = (x - c) V / scale has noise variance 1 / scale^2), so with the learned term at zero the read-out runs T
EM steps from a learned start: the learned version of the paper's Theorem 1 (attention computing EM steps).
Means are convex combinations of the points, so they move with the data exactly (translation-equivariant)
and D costs nothing.

``slot_init='farthest'`` also seeds the slots by a farthest-first traversal of the normalised points (the
point farthest from the task's mean, then repeatedly the point farthest from the seeds so far; deterministic,
invariant to the order of the points): each slot adds a projection of its seed, and iteration 0 gets the E-step
term of equal-weight components centred on the seeds. Seeds in different clusters are what keeps slots from
sharing a cluster, the failure that restarts otherwise repair.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

_MASKED = -1e30
_MIN_MASS = 1e-6
_MIN_STD = 1e-3


class ClusterReadout(nn.Module):
    num_ks: int
    k_max: int
    iters: int = 3
    anisotropic: bool = False
    slot_attention: bool = True
    em_logits: bool = True
    num_heads: int = 4
    mlp_ratio: int = 2
    slot_init: str = "learned"

    @nn.compact
    def __call__(
        self,
        states_BxNxE,
        coords_BxNxR,
        scale_B,
        centre_BxD,
        points_BxNxD,
        point_mask_BxN,
        k_index_B,
        component_mask_BxK,
    ):
        """``coords``, ``scale`` and ``centre`` (the mean of the real points) come from ``normalize_tasks``."""
        e = states_BxNxE.shape[-1]
        mask_BxN = point_mask_BxN.astype(bool)
        weight_BxN = mask_BxN.astype(jnp.float32)
        count_B = jnp.maximum(jnp.sum(weight_BxN, axis=-1), 1.0)
        slots_BxKxE = self.param("slots", nn.initializers.normal(1.0), (self.num_ks, self.k_max, e))[
            k_index_B
        ]

        tokens_BxNxE = nn.LayerNorm(name="ln_tokens")(states_BxNxE)
        keys_BxNxE = nn.Dense(e, use_bias=False, name="key")(tokens_BxNxE)
        values_BxNxE = nn.Dense(e, name="value")(tokens_BxNxE)
        query = nn.Dense(e, use_bias=False, name="query")
        ln_query = nn.LayerNorm(name="ln_query")
        ln_update = nn.LayerNorm(name="ln_update")
        update_in = nn.Dense(self.mlp_ratio * e, name="update_in")
        update_out = nn.Dense(e, kernel_init=nn.initializers.zeros, name="update_out")
        ln_attn = nn.LayerNorm(name="ln_slot_attn")
        slot_attn = (
            nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="slot_attn")
            if self.slot_attention
            else None
        )
        alpha = self.param("em_logit_scale", nn.initializers.ones, ()) if self.em_logits else None
        slot_mask_BxKxK = component_mask_BxK[:, :, None] & component_mask_BxK[:, None, :]
        scale2_B = jnp.square(scale_B)

        centre_mean_BxKxR = log_w_BxK = seed_term_BxNxK = None
        if self.slot_init == "farthest":
            seeds_BxKxR = farthest_first(coords_BxNxR, mask_BxN, self.k_max)
            slots_BxKxE = slots_BxKxE + nn.Dense(e, name="seed_embed")(seeds_BxKxR)
            seed_scale = self.param("seed_logit_scale", nn.initializers.ones, ())
            seed_sq_BxNxK = jnp.sum(jnp.square(coords_BxNxR[:, :, None, :] - seeds_BxKxR[:, None, :, :]), -1)
            seed_term_BxNxK = -0.5 * seed_scale * scale2_B[:, None, None] * seed_sq_BxNxK
        elif self.slot_init != "learned":
            raise ValueError(
                f"ClusterReadout.slot_init must be 'learned' or 'farthest', got {self.slot_init!r}"
            )
        for t in range(self.iters + 1):
            logits_BxNxK = jnp.einsum("bne,bke->bnk", keys_BxNxE, query(ln_query(slots_BxKxE))) / math.sqrt(e)
            if seed_term_BxNxK is not None and t == 0:
                logits_BxNxK = logits_BxNxK + seed_term_BxNxK
            if alpha is not None and t > 0:
                sq_BxNxK = jnp.sum(
                    jnp.square(coords_BxNxR[:, :, None, :] - centre_mean_BxKxR[:, None, :, :]), -1
                )
                logits_BxNxK = logits_BxNxK + alpha * (
                    log_w_BxK[:, None, :] - 0.5 * scale2_B[:, None, None] * sq_BxNxK
                )
            logits_BxNxK = jnp.where(component_mask_BxK[:, None, :], logits_BxNxK, _MASKED)
            log_resp_BxNxK = jax.nn.log_softmax(logits_BxNxK, axis=-1)
            resp_BxNxK = jnp.exp(log_resp_BxNxK) * weight_BxN[:, :, None]
            mass_BxK = jnp.sum(resp_BxNxK, axis=1)
            if t == self.iters:
                break
            inv_mass_BxK = 1.0 / (mass_BxK + _MIN_MASS)
            centre_mean_BxKxR = jnp.einsum("bnk,bnr->bkr", resp_BxNxK, coords_BxNxR) * inv_mass_BxK[..., None]
            log_w_BxK = jnp.log(mass_BxK / count_B[:, None] + _MIN_MASS)
            attended_BxKxE = jnp.einsum("bnk,bne->bke", resp_BxNxK, values_BxNxE) * inv_mass_BxK[..., None]
            inputs = jnp.concatenate(
                [slots_BxKxE, attended_BxKxE, centre_mean_BxKxR, log_w_BxK[..., None]], -1
            )
            slots_BxKxE = slots_BxKxE + update_out(jax.nn.gelu(update_in(ln_update(inputs))))
            if slot_attn is not None:
                normed = ln_attn(slots_BxKxE)
                slots_BxKxE = slots_BxKxE + slot_attn(normed, normed, mask=slot_mask_BxKxK[:, None])

        inv_mass_BxK = 1.0 / (mass_BxK + _MIN_MASS)
        # Weighted means of the points centred on the task's mean (translation-exact in float32); a slot with
        # no mass falls back to the centre.
        centred_BxNxD = jnp.where(mask_BxN[..., None], points_BxNxD - centre_BxD[:, None, :], 0.0)
        offsets_BxKxD = jnp.einsum("bnk,bnd->bkd", resp_BxNxK, centred_BxNxD) * inv_mass_BxK[..., None]
        means_BxKxD = centre_BxD[:, None, :] + offsets_BxKxD
        weight_logits_BxK = jnp.log(mass_BxK / count_B[:, None] + _MIN_MASS)
        scales_BxKxD = None
        if self.anisotropic:
            sq_BxNxKxD = jnp.square(centred_BxNxD[:, :, None, :] - offsets_BxKxD[:, None, :, :])
            var_BxKxD = jnp.einsum("bnk,bnkd->bkd", resp_BxNxK, sq_BxNxKxD) * inv_mass_BxK[..., None]
            scales_BxKxD = jnp.sqrt(jnp.maximum(var_BxKxD, _MIN_STD**2))
        return weight_logits_BxK, means_BxKxD, scales_BxKxD, log_resp_BxNxK


def farthest_first(coords_BxNxR: jax.Array, mask_BxN: jax.Array, k: int) -> jax.Array:
    """k seeds per task [B, k, R]: the real point farthest from the origin (the task mean), then repeatedly the
    real point farthest from every seed chosen so far. Ties resolve to the first index (measure zero)."""
    coords_BxNxR = jax.lax.stop_gradient(coords_BxNxR)
    gather = jax.vmap(lambda c_NxR, i: c_NxR[i])
    dist_BxN = jnp.where(mask_BxN, jnp.sum(jnp.square(coords_BxNxR), -1), -jnp.inf)
    seeds = []
    for _ in range(k):
        seed_BxR = gather(coords_BxNxR, jnp.argmax(dist_BxN, axis=-1))
        seeds.append(seed_BxR)
        to_seed_BxN = jnp.sum(jnp.square(coords_BxNxR - seed_BxR[:, None, :]), -1)
        dist_BxN = jnp.where(mask_BxN, jnp.minimum(dist_BxN, to_seed_BxN), -jnp.inf)
    return jnp.stack(seeds, axis=1)
