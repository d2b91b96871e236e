"""How many components: the shipped learned posterior P(K | X) (``KPosterior``) for ``n_components="auto"``.

    from tgmm_jax.number_of_components import load_k_posterior, posterior_over_k
    probs_BxK = posterior_over_k(load_k_posterior(), [x1_NxD, x2_MxD], seed=0)   # P(K = 1..k_max | X)

The network (tgmm_jax/models/k_posterior.py) reads a task through its normalised principal coordinates and
drops the absolute scale, so P(K | X) does not change under translation, rotation, the order of the points or
x -> c x (with ``noise_variance`` given, under x -> c x with the noise variance -> c^2 times it). A checkpoint
with the likelihood evidence (``evidence`` in its json; tgmm_jax/k_evidence.py) also
reads, for every K, the best of a few EM fits with one shared spherical variance, computed on the same points
(read in a canonical order, so the same invariances hold). It was trained (experiments/train_k_posterior.py) on tasks of N in [n_min, n_max] points; here a
dataset with more than ``n_max`` points is read through ``n_max`` points drawn uniformly without replacement
(seeded), and a smaller one is padded to ``n_max`` with masked points (which change nothing beyond float32
rounding, ~1e-5 with the evidence's EM sums: tested). Each
dataset is centred and divided by its spread in float64 first (which changes nothing the network sees, and
keeps any finite scale inside float32). Missing values (NaN) are filled from the read points' nearest
neighbours (``tgmm_jax.imputation``) before it reads them (the network was not trained with masks); a column's
mean would put incomplete points between the clusters, where they look like one more (``python -m
experiments.studies.k_posterior.missing_fill`` measures both: results/k_posterior/missing_fill.json). The
dimensions it was trained on are in its json (``train.dims``); others are read (the read-in is dimension-free) but lie outside its training range (at
d = 1 the set network alone did not answer K = 1 on pure noise). Datasets are batched in powers of two up to ``BATCH``, so one program serves every N and d
after its first call per (batch bucket, d).

Shipped files: ``tgmm_jax/pretrained/k_posterior/`` holds ``k_posterior.msgpack`` (float32 parameters),
``k_posterior.json`` ({"format": 1, "model": ModelConfig fields, "k_max", "evidence": {"restarts", "steps", "geometry",
"noise_head"} of the likelihood evidence (absent in files written before it: none; "geometry" or "noise_head" absent:
false), "train": the training run's config,
"step", "source"}) and ``MODEL_CARD.md``; ``save_k_posterior`` writes them (experiments/export_k_posterior.py).
Their names differ from a TGMM checkpoint's (``config.json``), so ``pretrained.available()`` never lists them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from tgmm_jax import export_cache, imputation, pretrained
from tgmm_jax.models.config import ModelConfig
from tgmm_jax.models.k_posterior import KPosterior

FORMAT = 1
PARAMS_FILE, CONFIG_FILE = "k_posterior.msgpack", "k_posterior.json"
CARD_FILE = pretrained.CARD_FILE
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "k_posterior")
BATCH = 64  # datasets per call at most (the batch is padded to a power of two up to this)


class KPosteriorLoadError(ValueError):
    """The K-posterior checkpoint is missing or unreadable; the message names the file."""


@dataclasses.dataclass(frozen=True)
class KPosteriorCheckpoint:
    """A trained ``KPosterior``: ``model.apply(params, points [B, N, D], point_mask [B, N])`` -> log P(K | X)."""

    model: KPosterior
    params: Any
    k_max: int
    n_min: int  # the training range of N
    n_max: int  # read at most this many points (the training maximum)
    step: int | None
    source: str  # the directory it was read from


def save_k_posterior(directory: str, model: KPosterior, params, train_config: dict, *, step: int | None,
                     source: str | None = None, card: str | None = None) -> str:  # fmt: skip
    """Writes the parameters (float32), ``k_posterior.json`` and (when given) the model card into ``directory``."""
    meta = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "k_max": int(model.k_max),
        "evidence": {
            "restarts": int(model.evidence_restarts),
            "steps": int(model.evidence_steps),
            "geometry": bool(model.evidence_geometry),
            "noise_head": bool(model.noise_head),
        },
        "train": train_config,
        "step": step,
        "source": source,
    }
    return pretrained.write_files(directory, params, meta, card, PARAMS_FILE, CONFIG_FILE)


@functools.lru_cache(maxsize=4)
def load_k_posterior(directory: str = SHIPPED) -> KPosteriorCheckpoint:
    """The K posterior in ``directory`` (default: the shipped one); parameters checked against the model's tree."""
    config_path, params_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, PARAMS_FILE)
    try:
        with open(config_path, encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"not a format-{FORMAT} K-posterior config")
        evidence = meta.get("evidence", {"restarts": 0, "steps": 30})
        model = KPosterior(
            ModelConfig.from_dict(meta["model"]),
            int(meta["k_max"]),
            evidence_restarts=int(evidence["restarts"]),
            evidence_steps=int(evidence["steps"]),
            evidence_geometry=bool(evidence.get("geometry", False)),
            noise_head=bool(evidence.get("noise_head", False)),
        )
        train = meta["train"]
        n_min, n_max = int(train["n_min"]), int(train["n_max"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KPosteriorLoadError(
            f"{config_path}: cannot read the K-posterior config ({type(e).__name__}: {e})"
        )
    try:
        with open(params_path, "rb") as f:
            restored = serialization.msgpack_restore(f.read())
    except Exception as e:  # truncated or foreign data: msgpack's own errors
        raise KPosteriorLoadError(
            f"{params_path}: cannot read the parameters ({type(e).__name__}: {e})"
        ) from e
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 4, 2)), jnp.ones((1, 4), bool))
    )
    want = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(abstract)}
    got = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(restored)}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:5]
        raise KPosteriorLoadError(f"{params_path} does not match the model of {config_path}: {diff}")
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), restored)
    return KPosteriorCheckpoint(model, params, model.k_max, n_min, n_max, meta.get("step"), directory)


@functools.partial(jax.jit, static_argnums=0)
def _log_posterior(model: KPosterior, params, points_BxNxD, mask_BxN):
    return model.apply(params, points_BxNxD, mask_BxN)


@functools.partial(jax.jit, static_argnums=0)
def _log_posterior_known_noise(model: KPosterior, params, points_BxNxD, mask_BxN, noise_variance_B):
    return model.apply(params, points_BxNxD, mask_BxN, noise_variance_B)


def _batch_bucket(b: int) -> int:
    return min(BATCH, 1 << max(b - 1, 0).bit_length())


def posterior_over_k(
    ckpt: KPosteriorCheckpoint, xs: list[np.ndarray], seed: int = 0, noise_variance=None
) -> np.ndarray:
    """P(K = 1..k_max | X) [B, k_max] (float64, rows sum to 1) for datasets ``xs`` ([N_i, d] each, one d;
    NaN = missing value): at most ``n_max`` points read per dataset (a seeded uniform subsample above it).

    ``noise_variance``: None (unknown), or the known noise variance per coordinate in the data's units, one
    number or one per dataset (NaN: unknown for that one); it needs a checkpoint with the noise head
    (``evidence.noise_head`` in its json). A dataset with missing values is read as if its noise were unknown
    (the head was trained on complete data; the imputed points would shrink the fitted variances)."""
    if not xs:
        raise ValueError("posterior_over_k needs at least one dataset")
    noise_B = None
    if noise_variance is not None:
        if not ckpt.model.noise_head:
            raise ValueError(
                f"the K posterior in {ckpt.source} has no noise head: it cannot use a known noise_variance"
            )
        noise_B = np.asarray(noise_variance, np.float64)
        if noise_B.ndim > 1 or noise_B.size not in (1, len(xs)):
            raise ValueError(
                f"noise_variance must be one number or one per dataset ({len(xs)}), got shape {noise_B.shape}"
            )
        noise_B = np.broadcast_to(noise_B.reshape(-1), (len(xs),)).copy()
        if np.any(noise_B <= 0) or np.any(np.isinf(noise_B)):
            raise ValueError(f"noise_variance must be finite and > 0 (NaN: unknown), got {noise_variance!r}")
        noise_B[[bool(np.isnan(x).any()) for x in xs]] = np.nan
    d = xs[0].shape[1]
    if any(x.ndim != 2 or x.shape[1] != d for x in xs):
        raise ValueError(f"every dataset must be [N, {d}]; got shapes {[x.shape for x in xs]}")
    rng = np.random.default_rng(seed)
    n = ckpt.n_max
    points_BxNxD = np.zeros((len(xs), n, d), np.float32)
    mask_BxN = np.zeros((len(xs), n), bool)
    for i, x in enumerate(xs):
        if x.shape[0] < 1:
            raise ValueError(f"dataset {i} has no points")
        x = np.asarray(x, np.float64)
        if x.shape[0] > n:
            x = x[np.sort(rng.choice(x.shape[0], n, replace=False))]
        if np.isnan(x).any():  # missing values filled from the read points' nearest neighbours
            x = imputation.nearest_neighbour_impute(x)
        # centred and unit spread in float64 first (the network is unit-free): any finite scale fits float32
        x = x - x.mean(axis=0)
        spread = np.sqrt(np.mean(np.square(x)))
        if 0 < spread < np.inf:
            x = x / spread
            if noise_B is not None:
                noise_B[i] = noise_B[i] / spread**2
        points_BxNxD[i, : x.shape[0]], mask_BxN[i, : x.shape[0]] = x, True
    out = []
    for start in range(0, len(xs), BATCH):
        chunk = slice(start, start + BATCH)
        b = points_BxNxD[chunk].shape[0]
        size = _batch_bucket(b)
        pts = np.zeros((size, n, d), np.float32)
        msk = np.zeros((size, n), bool)
        pts[:b], msk[:b] = points_BxNxD[chunk], mask_BxN[chunk]
        msk[b:, 0] = True  # padded datasets: one point at the origin, discarded below
        if noise_B is None:
            log_probs = export_cache.call(_log_posterior, (ckpt.model,), (ckpt.params, pts, msk))
        else:
            noise = np.full((size,), np.nan, np.float32)
            noise[:b] = noise_B[chunk]
            log_probs = export_cache.call(
                _log_posterior_known_noise, (ckpt.model,), (ckpt.params, pts, msk, noise)
            )
        out.append(np.asarray(log_probs, np.float64)[:b])
    probs_BxK = np.exp(np.concatenate(out))
    return probs_BxK / probs_BxK.sum(axis=1, keepdims=True)
