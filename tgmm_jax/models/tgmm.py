"""TGMM assembly: read-in -> backbone -> per-K read-out -> TGMMOutput (a padded mixture estimate)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tgmm_jax.gmm import MixtureParams
from tgmm_jax.models.backbones import BACKBONES
from tgmm_jax.models.config import ModelConfig
from tgmm_jax.models.readin import ReadIn
from tgmm_jax.models.readout import AttentiveReadout, NaiveReadout
from tgmm_jax.tasks import VARIANTS, TaskSpec

# Logit of a padded component: finite, so 0 * logit stays 0 in losses; softmax gives it exactly 0.
PADDED_LOGIT = -1e9
# Floor on predicted standard deviations, so the likelihood of the anisotropic variant stays bounded.
MIN_SCALE = 1e-3


@struct.dataclass
class TGMMOutput:
    """A batch of estimated mixtures, padded to K_max components (float32)."""

    weight_logits: jax.Array  # [B, K], PADDED_LOGIT on padded components
    means: jax.Array  # [B, K, D], 0 on padded components
    scales: jax.Array | None  # [B, K, D] standard deviations (anisotropic), 1 on padding; None if isotropic
    component_mask: jax.Array  # [B, K] bool

    def to_params(self) -> MixtureParams:
        """Softmax weights (exactly 0 on padded components) and the rest as they are."""
        return MixtureParams(
            jax.nn.softmax(self.weight_logits, axis=-1), self.means, self.scales, self.component_mask
        )


def _fill(x_BxKx: jax.Array, keep_BxK: jax.Array, value: float) -> jax.Array:
    """x (as float32) where keep, else value; keep broadcast over x's trailing axes."""
    keep = keep_BxK.reshape(keep_BxK.shape + (1,) * (x_BxKx.ndim - 2))
    return jnp.where(keep, x_BxKx.astype(jnp.float32), value)


def check_num_components(num_components, ks) -> None:
    """Eager check that every K is in the task set ``ks`` (inside jit, an unknown K gives NaN outputs)."""
    ks = tuple(int(k) for k in (ks.ks if isinstance(ks, TaskSpec) else ks))
    values = np.unique(np.asarray(num_components))
    bad = [int(v) for v in values if int(v) not in ks]
    if bad:
        raise ValueError(f"num_components {bad} not in the model's task set ks={ks}")


class TGMM(nn.Module):
    """Estimates a Gaussian mixture from each task's points; ``apply(params, points, point_mask, num_components)``.

    Shapes: points [B, N, D], point_mask [B, N] (True = real point), num_components [B] (int, each in ``ks``).
    Real points are moved to the front in their original order (a stable sort on the mask) before the
    backbone, so causal backbones never see padding before a real point and interleaved padding is as good
    as padding at the end. Padded points are zeroed, so they may hold anything (even NaN).

    A K not in ``ks`` cannot raise under jit: that task's outputs are NaN (so a loss on it is NaN); call
    ``check_num_components`` eagerly to get a ValueError instead.

    ``train`` matters only with ``config.official_pooling_mask_bug``: the official code applies its buggy
    pooling mask in training and no mask at evaluation, and ``train`` picks which of the two to reproduce.
    """

    config: ModelConfig
    dim: int
    ks: tuple[int, ...]
    variant: str = "isotropic"

    def setup(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"TGMM.variant must be one of {VARIANTS}, got {self.variant!r}")
        c = self.config
        self.read_in = ReadIn(c, len(self.ks))
        self.backbone = BACKBONES[c.backbone].module(c)
        readout_cls = AttentiveReadout if c.readout == "attentive" else NaiveReadout
        self.read_out = readout_cls(len(self.ks), max(self.ks), self.dim, self.variant == "anisotropic")

    def __call__(self, points_BxNxD, point_mask_BxN, num_components_B, *, train: bool = False) -> TGMMOutput:
        points_BxNxD, point_mask_BxN, num_components_B = map(
            jnp.asarray, (points_BxNxD, point_mask_BxN, num_components_B)
        )
        self._check_shapes(points_BxNxD, point_mask_BxN, num_components_B)
        c, k_max = self.config, max(self.ks)
        point_mask_BxN = point_mask_BxN.astype(bool)
        ks_S = jnp.asarray(self.ks, jnp.int32)
        is_k_BxS = num_components_B.astype(jnp.int32)[:, None] == ks_S[None, :]
        k_index_B = jnp.argmax(is_k_BxS, axis=-1)
        known_B = jnp.any(is_k_BxS, axis=-1)

        order_BxN = jnp.argsort(~point_mask_BxN, axis=-1, stable=True)
        points_BxNxD = jnp.take_along_axis(points_BxNxD, order_BxN[:, :, None], axis=1)
        point_mask_BxN = jnp.take_along_axis(point_mask_BxN, order_BxN, axis=1)
        mask_bug = c.official_pooling_mask_bug and train
        if not mask_bug:  # with the bug, pooling reads the padded tokens, which must then keep their points
            points_BxNxD = jnp.where(point_mask_BxN[:, :, None], points_BxNxD, 0.0)

        tokens_BxNxE = self.read_in(points_BxNxD, k_index_B)
        states_BxNxE = self.backbone(tokens_BxNxE, point_mask_BxN)
        logits_BxK, means_BxKxD, raw_scales_BxKxD = self.read_out(
            states_BxNxE, point_mask_BxN, k_index_B, mask_bug
        )

        component_mask_BxK = jnp.arange(k_max)[None, :] < num_components_B[:, None]
        known_BxK = jnp.broadcast_to(known_B[:, None], component_mask_BxK.shape)

        def finish(x, pad_value):  # pad value on padded components, NaN for a task whose K is unknown
            return _fill(_fill(x, component_mask_BxK, pad_value), known_BxK, jnp.nan)

        scales_BxKxD = None
        if raw_scales_BxKxD is not None:
            scales_BxKxD = finish(jax.nn.softplus(raw_scales_BxKxD.astype(jnp.float32)) + MIN_SCALE, 1.0)
        return TGMMOutput(
            finish(logits_BxK, PADDED_LOGIT), finish(means_BxKxD, 0.0), scales_BxKxD, component_mask_BxK
        )

    def _check_shapes(self, points, point_mask, num_components) -> None:
        if points.ndim != 3 or points.shape[-1] != self.dim:
            raise ValueError(f"points must be [B, N, D={self.dim}], got shape {points.shape}")
        if point_mask.shape != points.shape[:2]:
            raise ValueError(f"point_mask must be [B, N] = {points.shape[:2]}, got {point_mask.shape}")
        if num_components.shape != points.shape[:1]:
            raise ValueError(f"num_components must be [B] = {points.shape[:1]}, got {num_components.shape}")
        if not jnp.issubdtype(num_components.dtype, jnp.integer):
            raise ValueError(f"num_components must be integers, got dtype {num_components.dtype}")


def make_model(config: ModelConfig, spec: TaskSpec) -> TGMM:
    """The TGMM network for ``spec``'s data dimension, task set and variant."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"spec must be a TaskSpec, got {type(spec).__name__}")
    return TGMM(config, spec.dim, spec.ks, spec.variant)
