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
sharing a cluster, the failure that restarts otherwise repair. Other seedings: ``greedy`` (greedy k-means-cost
seeds, PAM's BUILD step) and ``smooth<M>`` (farthest-first on the points averaged with their M nearest points).
Several joined by '+' (e.g. ``farthest+greedy+smooth3+smooth12``) are deterministic restarts: the read-out runs
from each on the same backbone states and keeps, per task, the estimate of highest likelihood
(``gmm.mean_log_likelihood``).

Noise (``noise_var_B``, in the data's units; None: 1, the paper's setting). A known value v sets the E-step's
precision to scale^2 / v. An unknown one (NaN) is estimated: iteration 0 uses the points' mean squared distance
to their nearest seed, each later E-step the tied (shared by the components) maximum-likelihood variance of the
previous M-step, all in the normalised coordinates, so the responsibilities do not depend on the data's units.
The output variances are then spherical (``scales`` = their square roots on every dimension): the known value,
or the tied variance of the last responsibilities over all D dimensions; the correction head, when on, also
moves each component's log-variance (unknown noise only), so the learned model can give per-component variances.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from tgmm_jax import gmm
from tgmm_jax.gmm import MixtureParams, mean_log_likelihood
from tgmm_jax.mixture import averaging
from tgmm_jax.models.normalize import normalize_tasks

_MASKED = -1e30
_MIN_MASS = 1e-6
_MIN_STD = 1e-3
_MIN_VAR = 1e-10  # floor of an estimated noise variance in the normalised coordinates (top eigenvalue 1)
_TIE_NATS = 1e-4  # per point: log-likelihoods closer than this are a tie, kept by the earlier seeding


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
    seed_combine: str = "best"  # ModelConfig.seed_combine: "best" or "average" of the seedings' estimates
    # A learned posterior-mean correction: after the last iteration, each slot's state moves its mean (in the
    # task's normalised coordinates, mapped back through the principal basis and scale, so the move is
    # translation-, rotation- and scale-equivariant) and its weight logit. Zero-initialised: at initialisation
    # the read-out equals the uncorrected one.
    correction: bool = False
    # Whether the caller passes ``noise_var_B`` (the model's ``noise='conditioned'``): the correction head then
    # has a log-variance output too.
    noise: bool = False

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
        basis_BxDxR=None,
        noise_var_B=None,
    ):
        """``coords``, ``scale``, ``centre`` (the mean of the real points) and ``basis`` (needed with
        ``correction``) come from ``normalize_tasks``; ``noise_var_B`` (with ``noise``): each task's noise
        variance in the data's units, NaN where unknown (see the module docstring)."""
        if (noise_var_B is not None) != self.noise:
            raise ValueError(
                f"ClusterReadout(noise={self.noise}) needs noise_var_B {'given' if self.noise else 'None'}"
            )
        e = states_BxNxE.shape[-1]
        mask_BxN = point_mask_BxN.astype(bool)
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
        noise = noise_setup(scale2_B, noise_var_B, rank=min(points_BxNxD.shape[-1], coords_BxNxR.shape[-1]))

        seedings = seeding_functions(self.slot_init)
        if seedings:
            seed_embed = nn.Dense(e, name="seed_embed")
            seed_scale = self.param("seed_logit_scale", nn.initializers.ones, ())

        def learned_logits(slots_BxKxE):
            return jnp.einsum("bne,bke->bnk", keys_BxNxE, query(ln_query(slots_BxKxE))) / math.sqrt(e)

        def update_slots(slots_BxKxE, resp_BxNxK, inv_mass_BxK, centre_mean_BxKxR, log_w_BxK):
            attended_BxKxE = jnp.einsum("bnk,bne->bke", resp_BxNxK, values_BxNxE) * inv_mass_BxK[..., None]
            inputs = jnp.concatenate(
                [slots_BxKxE, attended_BxKxE, centre_mean_BxKxR, log_w_BxK[..., None]], -1
            )
            slots_BxKxE = slots_BxKxE + update_out(jax.nn.gelu(update_in(ln_update(inputs))))
            if slot_attn is not None:
                normed = ln_attn(slots_BxKxE)
                slots_BxKxE = slots_BxKxE + slot_attn(normed, normed, mask=slot_mask_BxKxK[:, None])
            return slots_BxKxE

        centred_BxNxD = jnp.where(mask_BxN[..., None], points_BxNxD - centre_BxD[:, None, :], 0.0)
        if self.correction:
            if basis_BxDxR is None:
                raise ValueError("the correction head needs the task's principal basis (basis_BxDxR)")
            ln_correct = nn.LayerNorm(name="ln_correct")
            correct_hidden = nn.Dense(self.mlp_ratio * e, name="correct_hidden")
            correct_out = nn.Dense(
                coords_BxNxR.shape[-1] + 1 + self.noise, kernel_init=nn.initializers.zeros, name="correct_out"
            )

        def correct(estimate, slots_BxKxE, resp_BxNxK, mass_BxK):
            """The learned move of each slot's mean (normalised coordinates -> data space) and weight logit."""
            weight_logits_BxK, offsets_BxKxD, scales_BxKxD, log_resp_BxNxK = estimate
            inv_mass_BxK = 1.0 / (mass_BxK + _MIN_MASS)
            mean_BxKxR = jnp.einsum("bnk,bnr->bkr", resp_BxNxK, coords_BxNxR) * inv_mass_BxK[..., None]
            inputs = jnp.concatenate([slots_BxKxE, mean_BxKxR, weight_logits_BxK[..., None]], -1)
            out_BxKxF = correct_out(jax.nn.gelu(correct_hidden(ln_correct(inputs))))
            rank = coords_BxNxR.shape[-1]
            move_BxKxD = (
                jnp.einsum("bkr,bdr->bkd", out_BxKxF[..., :rank], basis_BxDxR) * scale_B[:, None, None]
            )
            if self.noise:  # per-component log-variance moves, where the noise is unknown
                log_var_move_BxK = jnp.where(noise.estimate_B[:, None], out_BxKxF[..., rank + 1], 0.0)
                scales_BxKxD = scales_BxKxD * jnp.exp(0.5 * log_var_move_BxK)[..., None]
            return (
                weight_logits_BxK + out_BxKxF[..., rank],
                offsets_BxKxD + move_BxKxD,
                scales_BxKxD,
                log_resp_BxNxK,
            )

        def run(slots_BxKxE, seed_term_BxNxK):
            log_resp_BxNxK, resp_BxNxK, mass_BxK, final_slots_BxKxE = iterate_responsibilities(
                coords_BxNxR,
                noise.precision_B,
                mask_BxN,
                component_mask_BxK,
                self.iters,
                seed_term_BxNxK,
                alpha,
                learned=(learned_logits, update_slots, slots_BxKxE),
                estimate_B=noise.estimate_B,
                rank=noise.rank,
            )
            estimate = estimate_mixture(
                log_resp_BxNxK, resp_BxNxK, mass_BxK, centred_BxNxD, mask_BxN, self.anisotropic, noise_var_B
            )
            if self.correction:
                estimate = correct(estimate, final_slots_BxKxE, resp_BxNxK, mass_BxK)
            return estimate

        if not seedings:
            best = run(slots_BxKxE, None)
        else:
            outs = []
            for seeding in seedings:
                seeds_BxKxR = seeding(coords_BxNxR, mask_BxN, self.k_max)
                precision0_B = noise.seed_precision(coords_BxNxR, seeds_BxKxR, mask_BxN, component_mask_BxK)
                outs.append(
                    run(
                        slots_BxKxE + seed_embed(seeds_BxKxR),
                        seed_logits(coords_BxNxR, seeds_BxKxR, precision0_B, seed_scale),
                    )
                )
            best = combine_seedings(outs, centred_BxNxD, mask_BxN, component_mask_BxK, self.seed_combine)
        weight_logits_BxK, offsets_BxKxD, scales_BxKxD, log_resp_BxNxK = best
        means_BxKxD = centre_BxD[:, None, :] + offsets_BxKxD
        return weight_logits_BxK, means_BxKxD, scales_BxKxD, log_resp_BxNxK


# ----------------------------------------------------------------------------------------------------
# The read-out's parameter-free machinery, shared with its skeleton (``seeded_em``).


def seed_logits(coords_BxNxR, seeds_BxKxR, precision_B, seed_scale=1.0) -> jax.Array:
    """The first iteration's E-step term: equal-weight components of precision ``precision_B`` in the
    normalised coordinates (scale^2 for unit variance in the data's units) centred on the seeds, times
    ``seed_scale`` (1 in the skeleton, learned in the read-out): [B, N, K]."""
    seed_sq_BxNxK = jnp.sum(jnp.square(coords_BxNxR[:, :, None, :] - seeds_BxKxR[:, None, :, :]), -1)
    return -0.5 * seed_scale * precision_B[:, None, None] * seed_sq_BxNxK


@struct.dataclass
class NoiseSetup:
    """The read-out's noise per task, in the normalised coordinates: the E-step precision where the noise is
    known (scale^2 / variance), and which tasks estimate it instead (None: none do). ``rank`` (static) is the
    number of real coordinates, min(D, R), that a variance is averaged over."""

    precision_B: jax.Array
    estimate_B: jax.Array | None
    rank: int = struct.field(pytree_node=False)

    def seed_precision(self, coords_BxNxR, seeds_BxKxR, mask_BxN, component_mask_BxK) -> jax.Array:
        """Iteration 0's precision: the known one, or 1 / ``seed_variance`` where the noise is unknown."""
        if self.estimate_B is None:
            return self.precision_B
        var_B = seed_variance(coords_BxNxR, seeds_BxKxR, mask_BxN, component_mask_BxK, self.rank)
        return jnp.where(self.estimate_B, 1.0 / var_B, self.precision_B)


def noise_setup(scale2_B, noise_var_B=None, *, rank: int) -> NoiseSetup:
    """``NoiseSetup`` from the data-unit noise variances (NaN or <= 0: unknown; None: 1 for every task)."""
    if noise_var_B is None:
        return NoiseSetup(scale2_B, None, rank)
    noise_var_B = jnp.broadcast_to(jnp.asarray(noise_var_B, jnp.float32), scale2_B.shape)
    known_B = jnp.isfinite(noise_var_B) & (noise_var_B > 0)
    precision_B = jnp.where(known_B, scale2_B / jnp.where(known_B, noise_var_B, 1.0), 1.0)
    return NoiseSetup(precision_B, ~known_B, rank)


def seed_variance(coords_BxNxR, seeds_BxKxR, mask_BxN, component_mask_BxK, rank: int) -> jax.Array:
    """A first guess of an unknown noise variance per coordinate from the seeds: the real points' summed
    squared distance to their nearest seed, over (N - K) x ``rank`` (the K seeds are points, at distance 0),
    floored: [B]."""
    sq_BxNxK = jnp.sum(jnp.square(coords_BxNxR[:, :, None, :] - seeds_BxKxR[:, None, :, :]), -1)
    nearest_BxN = jnp.min(jnp.where(component_mask_BxK[:, None, :], sq_BxNxK, jnp.inf), axis=-1)
    total_B = jnp.sum(jnp.where(mask_BxN, nearest_BxN, 0.0), axis=-1)
    dof_B = jnp.sum(mask_BxN, axis=-1) - jnp.sum(component_mask_BxK, axis=-1)
    return jnp.maximum(total_B / (jnp.maximum(dof_B, 1) * rank), _MIN_VAR)


def iterate_responsibilities(
    coords_BxNxR,
    precision_B,
    mask_BxN,
    component_mask_BxK,
    iters: int,
    seed_term_BxNxK=None,
    em_scale=1.0,
    learned=None,
    estimate_B=None,
    rank: int | None = None,
):
    """The ``iters`` + 1 responsibility iterations of the read-out, in the normalised coordinates.

    Iteration t's logits are the sum of: the learned slot-point term (``learned``, if given), the seed term
    (t = 0, if given) and ``em_scale`` x the exact E-step of a mixture with precision ``precision_B`` in these
    coordinates (scale^2 for unit variance in the data's units; t >= 1; None: off). Where ``estimate_B`` (bool
    [B]) is set, the precision is instead 1 / the tied maximum-likelihood variance of the last M-step, averaged
    over ``rank`` coordinates.
    Between iterations an M-step gives each slot's mean and log weight (and ``learned`` updates its slots).
    ``learned`` = (logits_fn(slots) -> [B, N, K], update_fn(slots, resp, inv_mass, means, log_w) -> slots,
    initial slots); None is the parameter-free skeleton, which runs ``iters`` + 1 E-steps (the first from the
    seeds) with an M-step after each. Returns the last (log_resp [B, N, K], resp x point mask, mass [B, K]) and
    the slots that gave the last logits (None for the skeleton).
    """
    weight_BxN = mask_BxN.astype(jnp.float32)
    count_B = jnp.maximum(jnp.sum(weight_BxN, axis=-1), 1.0)
    logits_fn, update_fn, slots_BxKxE = learned if learned is not None else (None, None, None)
    centre_mean_BxKxR = log_w_BxK = resp_BxNxK = None
    for t in range(iters + 1):
        logits_BxNxK = jnp.zeros(mask_BxN.shape + component_mask_BxK.shape[-1:], jnp.float32)
        if logits_fn is not None:
            logits_BxNxK = logits_fn(slots_BxKxE)
        if seed_term_BxNxK is not None and t == 0:
            logits_BxNxK = logits_BxNxK + seed_term_BxNxK
        if em_scale is not None and t > 0:
            sq_BxNxK = jnp.sum(jnp.square(coords_BxNxR[:, :, None, :] - centre_mean_BxKxR[:, None, :, :]), -1)
            step_precision_B = precision_B
            if (
                estimate_B is not None
            ):  # the tied variance of the last M-step: its responsibilities, these means
                var_B = jnp.sum(resp_BxNxK * sq_BxNxK, axis=(1, 2)) / (count_B * rank)
                step_precision_B = jnp.where(estimate_B, 1.0 / jnp.maximum(var_B, _MIN_VAR), precision_B)
            logits_BxNxK = logits_BxNxK + em_scale * (
                log_w_BxK[:, None, :] - 0.5 * step_precision_B[:, None, None] * sq_BxNxK
            )
        logits_BxNxK = jnp.where(component_mask_BxK[:, None, :], logits_BxNxK, _MASKED)
        log_resp_BxNxK = jax.nn.log_softmax(logits_BxNxK, axis=-1)
        resp_BxNxK = jnp.exp(log_resp_BxNxK) * weight_BxN[:, :, None]
        mass_BxK = jnp.sum(resp_BxNxK, axis=1)
        if t == iters:
            return log_resp_BxNxK, resp_BxNxK, mass_BxK, slots_BxKxE
        inv_mass_BxK = 1.0 / (mass_BxK + _MIN_MASS)
        centre_mean_BxKxR = jnp.einsum("bnk,bnr->bkr", resp_BxNxK, coords_BxNxR) * inv_mass_BxK[..., None]
        log_w_BxK = jnp.log(mass_BxK / count_B[:, None] + _MIN_MASS)
        if update_fn is not None:
            slots_BxKxE = update_fn(slots_BxKxE, resp_BxNxK, inv_mass_BxK, centre_mean_BxKxR, log_w_BxK)


def estimate_mixture(
    log_resp_BxNxK, resp_BxNxK, mass_BxK, centred_BxNxD, mask_BxN, anisotropic=False, noise_var_B=None
):
    """(weight logits [B, K], means as offsets from the task's centre [B, K, D] (translation-exact in float32;
    a slot with no mass falls back to the centre), per-dimension scales (anisotropic, floored) or None,
    log-responsibilities) from the last iteration's responsibilities. With ``noise_var_B`` (data units, NaN
    where unknown) the scales are spherical: the known standard deviation, or the square root of the tied
    maximum-likelihood variance over all D dimensions."""
    count_B = jnp.maximum(jnp.sum(mask_BxN.astype(jnp.float32), axis=-1), 1.0)
    inv_mass_BxK = 1.0 / (mass_BxK + _MIN_MASS)
    offsets_BxKxD = jnp.einsum("bnk,bnd->bkd", resp_BxNxK, centred_BxNxD) * inv_mass_BxK[..., None]
    weight_logits_BxK = jnp.log(mass_BxK / count_B[:, None] + _MIN_MASS)
    scales_BxKxD = None
    if anisotropic:
        sq_BxNxKxD = jnp.square(centred_BxNxD[:, :, None, :] - offsets_BxKxD[:, None, :, :])
        var_BxKxD = jnp.einsum("bnk,bnkd->bkd", resp_BxNxK, sq_BxNxKxD) * inv_mass_BxK[..., None]
        scales_BxKxD = jnp.sqrt(jnp.maximum(var_BxKxD, _MIN_STD**2))
    elif noise_var_B is not None:
        sq_BxNxK = jnp.sum(jnp.square(centred_BxNxD[:, :, None, :] - offsets_BxKxD[:, None, :, :]), -1)
        tied_var_B = jnp.sum(resp_BxNxK * sq_BxNxK, axis=(1, 2)) / (count_B * centred_BxNxD.shape[-1])
        noise_var_B = jnp.broadcast_to(jnp.asarray(noise_var_B, jnp.float32), tied_var_B.shape)
        known_B = jnp.isfinite(noise_var_B) & (noise_var_B > 0)
        var_B = jnp.where(known_B, noise_var_B, tied_var_B)
        # floored relative to the data's spread, so the floor scales with the data
        spread_B = jnp.sum(jnp.square(centred_BxNxD), axis=(1, 2)) / (count_B * centred_BxNxD.shape[-1])
        var_B = jnp.maximum(var_B, _MIN_VAR * spread_B + jnp.finfo(jnp.float32).tiny)
        scales_BxKxD = jnp.broadcast_to(jnp.sqrt(var_B)[:, None, None], offsets_BxKxD.shape)
    return weight_logits_BxK, offsets_BxKxD, scales_BxKxD, log_resp_BxNxK


def combine_seedings(outs, centred_BxNxD, mask_BxN, component_mask_BxK, how: str = "best"):
    """One estimate from the seedings' ``outs``: ``best_of_seedings`` ("best") or their likelihood-weighted
    average ("average": ``tgmm_jax.mixture.averaging``, each seeding's probability softmax of its total
    log-likelihood over the task's points; the log-responsibilities are those of the averaged mixture)."""
    if how == "best" or len(outs) == 1:
        return best_of_seedings(outs, centred_BxNxD, mask_BxN, component_mask_BxK)
    if how != "average":
        raise ValueError(f"seed_combine must be 'best' or 'average', got {how!r}")
    weights, lls = _seeding_log_likelihoods(outs, centred_BxNxD, mask_BxN, component_mask_BxK)
    count_B = jnp.sum(mask_BxN, axis=-1).astype(jnp.float32)
    stack = functools.partial(jnp.stack, axis=1)
    variances = None if outs[0][2] is None else stack([jnp.square(o[2]) for o in outs])
    weights_BxK, offsets_BxKxD, variances_BxKxD, _ = averaging.likelihood_weighted_average(
        stack(weights),
        stack([o[1] for o in outs]),
        variances,
        stack(lls) * count_B[:, None],
        component_mask_BxK,
        # the slot order is that of best_of_seedings' choice (its near-tie rule), not of a float32 coin flip
        reference_B=_kept_seeding(lls),
    )
    scales_BxKxD = None if variances_BxKxD is None else jnp.sqrt(variances_BxKxD)
    params = MixtureParams(weights_BxK, offsets_BxKxD, scales_BxKxD, component_mask_BxK)
    log_joint_BxNxK = gmm.log_joint(centred_BxNxD, params)
    log_resp_BxNxK = log_joint_BxNxK - jax.nn.logsumexp(log_joint_BxNxK, axis=-1, keepdims=True)
    weight_logits_BxK = jnp.log(jnp.maximum(weights_BxK, 1e-30))
    return weight_logits_BxK, offsets_BxKxD, scales_BxKxD, log_resp_BxNxK


def _seeding_log_likelihoods(outs, centred_BxNxD, mask_BxN, component_mask_BxK):
    """Each seeding's mixture weights [B, K] and mean log-likelihood per point [B] (two lists, one entry per
    seeding)."""
    weights, lls = [], []
    for weight_logits_BxK, offsets_BxKxD, scales_BxKxD, _ in outs:
        weights_BxK = jax.nn.softmax(jnp.where(component_mask_BxK, weight_logits_BxK, _MASKED), -1)
        params = MixtureParams(weights_BxK, offsets_BxKxD, scales_BxKxD, component_mask_BxK)
        lls.append(mean_log_likelihood(centred_BxNxD, mask_BxN, params))
        weights.append(weights_BxK)
    return weights, lls


def _kept_seeding(lls) -> jax.Array:
    """Per task, the index [B] of the seeding kept: a later one replaces the kept one only if its mean
    log-likelihood beats every earlier one's by ``_TIE_NATS`` per point."""
    kept_B, best_ll_B = jnp.zeros(lls[0].shape, jnp.int32), lls[0]
    for r, ll_B in enumerate(lls[1:], start=1):
        kept_B = jnp.where(ll_B > best_ll_B + _TIE_NATS, r, kept_B)
        best_ll_B = jnp.maximum(ll_B, best_ll_B)
    return kept_B


def best_of_seedings(outs, centred_BxNxD, mask_BxN, component_mask_BxK):
    """Per task, the estimate (an ``estimate_mixture`` tuple) of highest mean log-likelihood among ``outs``,
    one per seeding in order. A later seeding replaces the kept estimate only if it beats every earlier one by
    ``_TIE_NATS`` per point (``_kept_seeding``): two seedings often reach the same mixture with the slots in
    another order, and a float32 near-tie must not flip the order (e.g. on translation)."""
    if len(outs) == 1:
        return outs[0]
    _, lls = _seeding_log_likelihoods(outs, centred_BxNxD, mask_BxN, component_mask_BxK)
    kept_B = _kept_seeding(lls)
    best = outs[0]
    for r, out in enumerate(outs[1:], start=1):
        take_B = kept_B == r
        best = jax.tree.map(
            lambda new, old, take_B=take_B: jnp.where(
                take_B.reshape((-1,) + (1,) * (new.ndim - 1)), new, old
            ),
            out,
            best,
        )
    return best


def seeded_em(
    points_BxNxD,
    point_mask_BxN,
    component_mask_BxK,
    *,
    slot_init: str,
    iters: int,
    rank: int,
    anisotropic: bool = False,
    noise_var_B=None,
    seed_combine: str = "best",
):
    """The clustering read-out with no learned term: its parameter-free skeleton.

    Per task and per seeding in ``slot_init`` (not 'learned'): the seeds of the normalised points
    (``normalize_tasks(points, mask, rank)``), then ``iters`` + 1 E-steps of a unit-variance mixture in those
    coordinates (the first with equal weights centred on the seeds) each followed by an M-step, the last M-step
    on the raw points; per task, the seeding of highest likelihood. This is exactly ``ClusterReadout`` with the
    learned logit at zero and ``em_logit_scale = seed_logit_scale = 1``. ``noise_var_B`` (data units, NaN where
    unknown; None: 1) as in the read-out: an unknown noise variance is estimated (tied) at every E-step. Returns (weight logits [B, K], means
    [B, K, D], scales [B, K, D] or None, log-responsibilities [B, N, K]).
    """
    seedings = seeding_functions(slot_init)
    if not seedings:
        raise ValueError("seeded_em needs parameter-free seedings; slot_init='learned' has none")
    mask_BxN = point_mask_BxN.astype(bool)
    points_BxNxD = jnp.where(mask_BxN[..., None], jnp.asarray(points_BxNxD, jnp.float32), 0.0)
    norm = normalize_tasks(points_BxNxD, mask_BxN, rank)
    noise = noise_setup(jnp.square(norm.scale_B), noise_var_B, rank=min(points_BxNxD.shape[-1], rank))
    k_max = component_mask_BxK.shape[-1]
    centred_BxNxD = jnp.where(mask_BxN[..., None], points_BxNxD - norm.centre_BxD[:, None, :], 0.0)
    outs = []
    for seeding in seedings:
        seeds_BxKxR = seeding(norm.coords_BxNxR, mask_BxN, k_max)
        precision0_B = noise.seed_precision(norm.coords_BxNxR, seeds_BxKxR, mask_BxN, component_mask_BxK)
        log_resp_BxNxK, resp_BxNxK, mass_BxK, _ = iterate_responsibilities(
            norm.coords_BxNxR,
            noise.precision_B,
            mask_BxN,
            component_mask_BxK,
            iters,
            seed_logits(norm.coords_BxNxR, seeds_BxKxR, precision0_B),
            estimate_B=noise.estimate_B,
            rank=noise.rank,
        )
        outs.append(
            estimate_mixture(
                log_resp_BxNxK, resp_BxNxK, mass_BxK, centred_BxNxD, mask_BxN, anisotropic, noise_var_B
            )
        )
    weight_logits_BxK, offsets_BxKxD, scales_BxKxD, log_resp_BxNxK = combine_seedings(
        outs, centred_BxNxD, mask_BxN, component_mask_BxK, seed_combine
    )
    return weight_logits_BxK, norm.centre_BxD[:, None, :] + offsets_BxKxD, scales_BxKxD, log_resp_BxNxK


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


def greedy_seeds(coords_BxNxR: jax.Array, mask_BxN: jax.Array, k: int) -> jax.Array:
    """k seeds per task [B, k, R], chosen greedily among the real points: each is the point whose addition
    lowers the k-means cost (the summed squared distance of the real points to their nearest seed) the most, so
    the first is the most central point (the BUILD step of PAM, with squared distances). Unlike the
    farthest-first traversal it does not seed outliers. Deterministic and invariant to point order, translation
    and rotation; O(k N^2 R) per task."""
    coords_BxNxR = jax.lax.stop_gradient(coords_BxNxR)
    sq_BxNxN = jnp.sum(jnp.square(coords_BxNxR[:, :, None, :] - coords_BxNxR[:, None, :, :]), -1)
    weight_BxN = mask_BxN.astype(coords_BxNxR.dtype)
    nearest_BxN = jnp.full(mask_BxN.shape, jnp.inf, coords_BxNxR.dtype)
    gather = jax.vmap(lambda c_NxR, i: c_NxR[i])
    seeds = []
    for _ in range(k):
        # cost_BxC[b, c]: the k-means cost with point c added to the seeds
        cost_BxC = jnp.einsum("bn,bnc->bc", weight_BxN, jnp.minimum(nearest_BxN[:, :, None], sq_BxNxN))
        index_B = jnp.argmin(jnp.where(mask_BxN, cost_BxC, jnp.inf), axis=-1)
        seeds.append(gather(coords_BxNxR, index_B))
        nearest_BxN = jnp.minimum(
            nearest_BxN, jnp.take_along_axis(sq_BxNxN, index_B[:, None, None], 2)[..., 0]
        )
    return jnp.stack(seeds, axis=1)


def smoothed_farthest_first(
    coords_BxNxR: jax.Array, mask_BxN: jax.Array, k: int, neighbours: int
) -> jax.Array:
    """The farthest-first traversal of the points each averaged with its nearest real points (``neighbours`` of
    them, itself included): outliers are pulled towards their cluster, so the seeds sit nearer cluster centres.
    The seeds are these averages. Deterministic and invariant like ``farthest_first``."""
    coords_BxNxR = jax.lax.stop_gradient(coords_BxNxR)
    sq_BxNxN = jnp.sum(jnp.square(coords_BxNxR[:, :, None, :] - coords_BxNxR[:, None, :, :]), -1)
    sq_BxNxN = jnp.where(mask_BxN[:, None, :], sq_BxNxN, jnp.inf)
    _, near_BxNxM = jax.lax.top_k(-sq_BxNxN, min(neighbours, coords_BxNxR.shape[1]))
    near_mask_BxNxM = jnp.take_along_axis(mask_BxN[:, None, :], near_BxNxM, axis=2)  # tasks with few points
    near_BxNxMxR = jax.vmap(lambda c_NxR, i_NxM: c_NxR[i_NxM])(coords_BxNxR, near_BxNxM)
    smooth_BxNxR = jnp.sum(near_BxNxMxR * near_mask_BxNxM[..., None], 2) / jnp.maximum(
        jnp.sum(near_mask_BxNxM, 2, keepdims=True), 1
    )
    return farthest_first(smooth_BxNxR, mask_BxN, k)


SEEDINGS = {"farthest": farthest_first, "greedy": greedy_seeds}
SMOOTH_PREFIX = "smooth"  # "smooth<M>": smoothed_farthest_first over M >= 2 nearest points


def seeding_functions(slot_init: str) -> list:
    """The seedings ``slot_init`` names, each ``fn(coords, mask, k) -> seeds``; [] for "learned". Names are
    joined by '+': "farthest", "greedy", "smooth<M>" (M >= 2). Anything else raises ValueError."""
    if slot_init == "learned":
        return []
    functions = []
    for name in str(slot_init).split("+"):
        digits = name[len(SMOOTH_PREFIX) :] if name.startswith(SMOOTH_PREFIX) else ""
        if name in SEEDINGS:
            functions.append(SEEDINGS[name])
        elif digits.isdigit() and int(digits) >= 2:
            functions.append(functools.partial(smoothed_farthest_first, neighbours=int(digits)))
        else:
            raise ValueError(
                f"slot_init must be 'learned' or seedings joined by '+' (each 'farthest', 'greedy' or "
                f"'smooth<M>' with M >= 2), got {slot_init!r}: {name!r} is not a seeding"
            )
    return functions
