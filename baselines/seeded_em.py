"""The clustering read-out's parameter-free skeleton as a baseline: deterministic seedings, a few EM steps.

``em_seeded`` is ``tgmm_jax.models.cluster_readout.seeded_em``: per task and per seeding (default
farthest-first, greedy k-means cost, and farthest-first on the points smoothed over 3 and over 12 neighbours),
``iters`` + 1 unit-variance E-steps in the task's normalised coordinates (top-``rank`` principal directions,
rescaled; the first E-step with equal weights centred on the seeds), each followed by an M-step, the last on
the raw points; per task, the seeding of highest likelihood. It is the clustering TGMM with its learned logit
switched off (tested equal), so a trained clustering model is reported against it: the difference is what
the network learned (its "learned gain"). The defaults are those of the shipped ``cluster`` checkpoint;
``skeleton_settings(model_config)`` gives any clustering model's own.

No randomness: the key is ignored. Memory: the greedy and smoothed seedings build N x N distances per task;
tasks run in chunks.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from baselines import em
from baselines.chunking import default_chunk_size, map_task_chunks
from tgmm_jax import gmm
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.mixture import fused
from tgmm_jax.models.cluster_readout import seeded_em, seeding_functions
from tgmm_jax.tasks import GMMTask

NOISES = ("unit", "unknown")


@dataclasses.dataclass(frozen=True)
class SeededEMConfig:
    variant: str = "isotropic"  # anisotropic: per-dimension scales from the last responsibilities
    slot_init: str = "farthest+greedy+smooth3+smooth12"
    iters: int = 3  # the read-out's cluster_iters: iters + 1 E-steps
    rank: int = 6  # the read-out's project_rank
    # "unit": unit noise variance (the paper's); "unknown": a tied variance estimated at every E-step, and
    # spherical scales out (the skeleton of a model with noise='conditioned', told nothing)
    noise: str = "unit"
    seed_combine: str = "best"  # the read-out's ModelConfig.seed_combine: "best" or "average"

    def __post_init__(self):
        em.check_variant(self.variant)
        if self.noise not in NOISES:
            raise ValueError(f"SeededEMConfig.noise must be one of {NOISES}, got {self.noise!r}")
        if self.noise == "unknown" and self.variant != "isotropic":
            raise ValueError("SeededEMConfig.noise='unknown' is for isotropic tasks")
        if self.slot_init == "learned":
            raise ValueError("em_seeded needs parameter-free seedings; slot_init='learned' has none")
        seeding_functions(self.slot_init)  # raises naming a bad seeding
        if self.seed_combine not in ("best", "average"):
            raise ValueError(
                f"SeededEMConfig.seed_combine must be 'best' or 'average', got {self.seed_combine!r}"
            )
        em._check_int("iters", self.iters, 0)
        em._check_int("rank", self.rank, 1)


def skeleton_settings(model_config) -> dict:
    """The ``em_seeded`` settings that share a clustering model's machinery (its seedings, iterations and
    rank); ValueError for a model without seeded clustering read-out."""
    if model_config.readout != "cluster" or model_config.slot_init == "learned":
        raise ValueError(
            f"only a clustering read-out with parameter-free seedings has a skeleton; this model has "
            f"readout={model_config.readout!r}, slot_init={model_config.slot_init!r}"
        )
    return dict(
        slot_init=model_config.slot_init,
        iters=model_config.cluster_iters,
        rank=model_config.project_rank,
        seed_combine=model_config.seed_combine,
    )


def _fit_chunk(task_C: GMMTask, config: SeededEMConfig):
    logits_CxK, means_CxKxD, scales_CxKxD, _ = seeded_em(
        task_C.points,
        task_C.point_mask,
        task_C.component_mask,
        slot_init=config.slot_init,
        iters=config.iters,
        rank=config.rank,
        anisotropic=config.variant == "anisotropic",
        noise_var_B=jnp.full(task_C.points.shape[:1], jnp.nan) if config.noise == "unknown" else None,
        seed_combine=config.seed_combine,
    )
    mask_CxK = task_C.component_mask
    weights_CxK = jax.nn.softmax(jnp.where(mask_CxK, logits_CxK, -jnp.inf), axis=-1)
    means_CxKxD = jnp.where(mask_CxK[..., None], means_CxKxD, 0.0)
    if scales_CxKxD is not None:
        scales_CxKxD = jnp.where(mask_CxK[..., None], scales_CxKxD, 1.0)
    params = MixtureParams(weights_CxK, means_CxKxD, scales_CxKxD, mask_CxK)
    return params, gmm.mean_log_likelihood(task_C.points, task_C.point_mask, params)


def _fit_seeded_em(key: jax.Array, task: GMMTask, config: SeededEMConfig = SeededEMConfig()):
    """Fits every task. Returns (MixtureParams, info: n_iter (= iters + 1 E-steps), loglik, valid)."""
    del key  # deterministic
    batch, n, d = task.points.shape
    chunk = default_chunk_size(batch, n * (n + 4 * d + 4 * task.component_mask.shape[-1]))
    params, loglik_B = map_task_chunks(functools.partial(_fit_chunk, config=config), task, batch, chunk)
    info = dict(
        n_iter=jnp.full((batch,), config.iters + 1, jnp.int32),
        loglik=loglik_B,
        valid=fused.finite_estimates(params.weights, params.means, params.scales),
    )
    return params, info


fit_seeded_em = jax.jit(_fit_seeded_em, static_argnames=("config",))
