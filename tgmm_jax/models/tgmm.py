"""TGMM assembly: read-in -> backbone -> per-K read-out -> TGMMOutput (a padded mixture estimate)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tgmm_jax.gmm import MixtureParams
from tgmm_jax.models.backbones import BACKBONES
from tgmm_jax.models.cluster_readout import ClusterReadout
from tgmm_jax.models.config import ModelConfig
from tgmm_jax.models.normalize import mask_features, normalize_tasks
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
    # [B, N, K] log p(slot k | point n) of the clustering read-out, points in the caller's order; else None.
    # Not a per-component leaf: drop it before gathering components (``components_only``).
    log_responsibilities: jax.Array | None = None

    def components_only(self) -> TGMMOutput:
        """The same estimate without the per-point responsibilities (every leaf [B, K, ...])."""
        return self.replace(log_responsibilities=None)

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

    With ``config.noise == 'conditioned'`` the call also takes ``noise_variance`` ([B] or a scalar, in the data's
    units; NaN = unknown, the default): the backbone sees log(scale / sigma) and a known flag instead of the
    task's absolute scale, the read-out uses or estimates the variance, and ``scales`` holds the spherical
    standard deviations. The map is then scale-equivariant: points x c and noise_variance x c^2 give means x c,
    scales x c and the same weights and responsibilities.

    With ``config.readin_mask`` the call also takes ``observed`` ([B, N, D] bool, True = observed; None: every
    coordinate is): the points then hold filled values at the missing coordinates (any fill, e.g.
    ``tgmm_jax.imputation``), and the read-in adds the mask's features (``normalize.mask_features``). The
    read-out still runs on the filled points; exact missing-data EM after the network is the caller's.

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
        anisotropic = self.variant == "anisotropic"
        if c.noise == "conditioned" and anisotropic:
            raise ValueError(
                "noise='conditioned' is for isotropic tasks; the anisotropic read-out has its own scales"
            )
        if c.readin == "normalized" and anisotropic and c.readout != "cluster":
            raise ValueError(
                "the normalized read-in with an attentive or naive read-out predicts means in the projected "
                "coordinates, which cannot carry per-dimension scales; use readout='cluster' for anisotropic tasks"
            )
        self.read_in = ReadIn(c, len(self.ks))
        self.backbone = BACKBONES[c.backbone].module(c)
        if c.readout == "cluster":
            self.read_out = ClusterReadout(
                len(self.ks),
                max(self.ks),
                c.cluster_iters,
                anisotropic,
                c.slot_attention,
                c.em_logits,
                num_heads=c.num_heads,
                slot_init=c.slot_init,
                seed_combine=c.seed_combine,
                correction=c.cluster_correction,
                noise=c.noise == "conditioned",
            )
        else:
            readout_cls = AttentiveReadout if c.readout == "attentive" else NaiveReadout
            # normalized read-in: means come out in the task's projected coordinates (project_rank of them)
            out_dim = c.project_rank if c.readin == "normalized" else self.dim
            self.read_out = readout_cls(len(self.ks), max(self.ks), out_dim, anisotropic)

    def __call__(
        self,
        points_BxNxD,
        point_mask_BxN,
        num_components_B,
        *,
        train: bool = False,
        noise_variance=None,
        observed=None,
    ) -> TGMMOutput:
        points_BxNxD, point_mask_BxN, num_components_B = map(
            jnp.asarray, (points_BxNxD, point_mask_BxN, num_components_B)
        )
        self._check_shapes(points_BxNxD, point_mask_BxN, num_components_B)
        observed_BxNxD = self._observed(observed, points_BxNxD.shape)
        noise_var_B = self._noise_variances(noise_variance, points_BxNxD.shape[0])
        c, k_max = self.config, max(self.ks)
        point_mask_BxN = point_mask_BxN.astype(bool)
        ks_S = jnp.asarray(self.ks, jnp.int32)
        is_k_BxS = num_components_B.astype(jnp.int32)[:, None] == ks_S[None, :]
        k_index_B = jnp.argmax(is_k_BxS, axis=-1)
        known_B = jnp.any(is_k_BxS, axis=-1)

        order_BxN = jnp.argsort(~point_mask_BxN, axis=-1, stable=True)
        points_BxNxD = jnp.take_along_axis(points_BxNxD, order_BxN[:, :, None], axis=1)
        point_mask_BxN = jnp.take_along_axis(point_mask_BxN, order_BxN, axis=1)
        if observed_BxNxD is not None:
            observed_BxNxD = jnp.take_along_axis(observed_BxNxD, order_BxN[:, :, None], axis=1)
        mask_bug = c.official_pooling_mask_bug and train
        if not mask_bug:  # with the bug, pooling reads the padded tokens, which must then keep their points
            points_BxNxD = jnp.where(point_mask_BxN[:, :, None], points_BxNxD, 0.0)

        component_mask_BxK = jnp.arange(k_max)[None, :] < num_components_B[:, None]
        norm = None
        if c.readin == "normalized" or c.readout == "cluster":
            norm = normalize_tasks(points_BxNxD, point_mask_BxN, c.project_rank)
        if c.readin == "normalized":
            features_BxF = norm.features_BxF
            if noise_var_B is not None:  # log(scale / sigma) where known, 0 where not, and the known flag
                noise_known_B = jnp.isfinite(noise_var_B) & (noise_var_B > 0)
                log_ratio_B = jnp.log(norm.scale_B) - 0.5 * jnp.log(
                    jnp.where(noise_known_B, noise_var_B, 1.0)
                )
                features_BxF = jnp.concatenate(
                    [
                        jnp.where(noise_known_B, log_ratio_B, 0.0)[:, None],
                        features_BxF[:, 1:],
                        noise_known_B.astype(jnp.float32)[:, None],
                    ],
                    axis=-1,
                )
            mask_BxNxM = None
            if c.readin_mask:
                mask_BxNxM = mask_features(observed_BxNxD, point_mask_BxN, norm.basis_BxDxR)
            tokens_BxNxE = self.read_in(norm.coords_BxNxR, k_index_B, features_BxF, mask_BxNxM)
        else:
            tokens_BxNxE = self.read_in(points_BxNxD, k_index_B)
        states_BxNxE = self.backbone(tokens_BxNxE, point_mask_BxN)
        log_resp_BxNxK = None
        if c.readout == "cluster":
            logits_BxK, means_BxKxD, scales_BxKxD, log_resp_BxNxK = self.read_out(
                states_BxNxE,
                norm.coords_BxNxR,
                norm.scale_B,
                norm.centre_BxD,
                points_BxNxD,
                point_mask_BxN,
                k_index_B,
                component_mask_BxK,
                norm.basis_BxDxR,
                noise_var_B,
            )
            inverse_BxN = jnp.argsort(order_BxN, axis=-1)  # back to the caller's point order
            log_resp_BxNxK = jnp.take_along_axis(log_resp_BxNxK, inverse_BxN[:, :, None], axis=1)
        else:
            logits_BxK, means_BxKxD, raw_scales_BxKxD = self.read_out(
                states_BxNxE, point_mask_BxN, k_index_B, mask_bug
            )
            scales_BxKxD = None
            if raw_scales_BxKxD is not None:
                scales_BxKxD = jax.nn.softplus(raw_scales_BxKxD.astype(jnp.float32)) + MIN_SCALE
            if c.readin == "normalized":  # projected coordinates -> the data space
                means_BxKxD = norm.centre_BxD[:, None, :] + norm.scale_B[:, None, None] * jnp.einsum(
                    "bkr,bdr->bkd", means_BxKxD.astype(jnp.float32), norm.basis_BxDxR
                )
        known_BxK = jnp.broadcast_to(known_B[:, None], component_mask_BxK.shape)

        def finish(x, pad_value):  # pad value on padded components, NaN for a task whose K is unknown
            return _fill(_fill(x, component_mask_BxK, pad_value), known_BxK, jnp.nan)

        if scales_BxKxD is not None:
            scales_BxKxD = finish(scales_BxKxD, 1.0)
        return TGMMOutput(
            finish(logits_BxK, PADDED_LOGIT),
            finish(means_BxKxD, 0.0),
            scales_BxKxD,
            component_mask_BxK,
            log_resp_BxNxK,
        )

    def _observed(self, observed, shape):
        """[B, N, D] bool observed mask for ``config.readin_mask`` (all True when None), else None (refused if
        given: such a model reads filled points without knowing which coordinates were filled)."""
        if not self.config.readin_mask:
            if observed is not None:
                raise ValueError(
                    "this model does not read missing-value masks (ModelConfig.readin_mask is False): pass "
                    "observed=None"
                )
            return None
        if observed is None:
            return jnp.ones(shape, bool)
        observed = jnp.asarray(observed)
        if observed.shape != tuple(shape):
            raise ValueError(f"observed must be [B, N, D] = {tuple(shape)}, got shape {observed.shape}")
        return observed.astype(bool)

    def _noise_variances(self, noise_variance, batch: int):
        """[B] float32 noise variances (NaN = unknown) for noise='conditioned', else None (refused if given)."""
        if self.config.noise != "conditioned":
            if noise_variance is not None:
                raise ValueError(
                    f"this model's noise model is {self.config.noise!r} (unit variance): it takes no noise_variance"
                )
            return None
        if noise_variance is None:
            return jnp.full((batch,), jnp.nan, jnp.float32)
        if not isinstance(noise_variance, jax.core.Tracer):  # concrete: a variance <= 0 or inf is an error
            values = np.asarray(noise_variance, np.float64)
            bad = values[~np.isnan(values) & ~((values > 0) & np.isfinite(values))]
            if bad.size:
                raise ValueError(
                    f"noise_variance must be positive and finite (NaN = unknown), got {bad.ravel()[:3].tolist()}"
                )
        noise_variance = jnp.asarray(noise_variance, jnp.float32)
        if noise_variance.ndim > 1 or noise_variance.shape not in ((), (batch,)):
            raise ValueError(
                f"noise_variance must be a scalar or [B] = [{batch}], got shape {noise_variance.shape}"
            )
        return jnp.broadcast_to(noise_variance, (batch,))

    def _check_shapes(self, points, point_mask, num_components) -> None:
        if points.ndim != 3:
            raise ValueError(f"points must be [B, N, D], got shape {points.shape}")
        if points.shape[-1] != self.dim and not self.config.dimension_free:
            raise ValueError(
                f"points must be [B, N, D={self.dim}] for this model (its read-in is fixed to D={self.dim}), "
                f"got shape {points.shape}"
            )
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
