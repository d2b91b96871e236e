"""Model configuration: one frozen dataclass, validated on construction, and the named model sizes.

The fields every backbone shares live here; each backbone's own options are its ``BackboneOptions`` dataclass
(models/options.py), held as ``ModelConfig.backbone_options``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from tgmm_jax.models.cluster_readout import seeding_functions
from tgmm_jax.models.options import BACKBONE_OPTIONS, BackboneOptions
from tgmm_jax.validation import check_bool, check_choice, check_fields, check_int, check_ints

READOUTS = ("attentive", "naive", "cluster")
READINS = ("raw", "normalized")
# "unit": the noise variance is 1 in the data's units (the paper's setting; the model takes no noise input).
# "conditioned": the model takes each task's noise variance, known (a positive value, in the data's units) or
# unknown (NaN), and outputs spherical variances; known-or-unknown reaches the backbone as task features.
NOISE_MODES = ("unit", "conditioned")
DTYPES = ("float32", "bfloat16")

# Unrolled shallow stacks compile faster; scanned deep ones compile in time independent of depth.
SCAN_ABOVE_LAYERS = 8

# Named sizes: (num_layers, width, num_heads, task_embed_dim). `paper` is the official default (docs/official_differences.md §2).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "width": 32, "num_heads": 2, "task_embed_dim": 16},  # CPU minutes; tests
    "small": {"num_layers": 4, "width": 64, "num_heads": 4, "task_embed_dim": 64},
    "paper": {"num_layers": 12, "width": 128, "num_heads": 4, "task_embed_dim": 128},
}

SEED_COMBINES = ("best", "average")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a TGMM network except the task (dim, ks, variant come from the TaskSpec).

    Defaults are the paper's model (GPT-2, 12 layers, width 128, 4 heads, task embedding 128).
    ``backbone_options`` is the backbone's options dataclass (``BACKBONE_OPTIONS[backbone]``); given as None it
    becomes that class's defaults, given as a dict (fields to change) that class built from it.
    """

    backbone: str = "gpt2"
    readout: str = "attentive"
    num_layers: int = 12
    width: int = 128
    num_heads: int = 4
    task_embed_dim: int = 128
    mlp_ratio: int = 4
    dtype: str = "float32"  # compute dtype; parameters are always float32
    official_pooling_mask_bug: bool = (
        False  # True reproduces the official read-out mask (docs/official_differences.md §7)
    )
    scan_layers: bool | None = None  # nn.scan over layers; None: scan when num_layers > SCAN_ABOVE_LAYERS
    backbone_options: BackboneOptions | Mapping[str, Any] | None = None
    # Read-in: "raw" points (the paper's), or "normalized": each task centred, projected on its top
    # ``project_rank`` principal directions and rescaled (models/normalize.py); then one parameter set
    # serves every data dimension.
    readin: str = "raw"
    project_rank: int = 6
    # The clustering read-out (models/cluster_readout.py): slots refined over ``cluster_iters`` iterations.
    cluster_iters: int = 3
    slot_attention: bool = True
    em_logits: bool = True
    # Slot starts: "learned" (one learned vector per slot and K), or seeds from the task's normalised points,
    # fed to the slots and to the first iteration's E-step term (models/cluster_readout.py): "farthest" (a
    # farthest-first traversal), "greedy" (greedy k-means-cost seeds, PAM's BUILD), "smooth<M>" (farthest-first
    # on the points averaged over their M nearest points), or several joined by '+', e.g. "farthest+greedy":
    # the read-out runs from each on the same backbone states and keeps, per task, the estimate of highest
    # likelihood (deterministic restarts). The seedings have no parameters, so a checkpoint trained with one
    # can be evaluated with another.
    slot_init: str = "learned"
    # How several seedings' estimates make one: "best" (the highest likelihood per task) or "average" (their
    # likelihood-weighted average, tgmm_jax/mixture/averaging.py: a hedge over local optima). No parameters:
    # a checkpoint can be evaluated either way.
    seed_combine: str = "best"
    # A learned correction of each slot's mean and weight after the last iteration (models/cluster_readout.py;
    # zero-initialised, equivariant): lets the learned part move the estimate directly instead of only through
    # a logit beside the exact E-step.
    cluster_correction: bool = False
    # The noise model (NOISE_MODES). "conditioned" makes the model scale-equivariant (x -> c x, noise variance
    # -> c^2 x: means -> c means, variances -> c^2 variances, the same weights and responsibilities); it needs
    # the normalised read-in and the clustering read-out.
    noise: str = "unit"
    # Missing coordinates: the read-in also takes each point's observed mask (``TGMM(..., observed=...)``), as
    # dimension-free features (the share of the point's coordinates that are missing, and how much of each
    # principal direction rests on them) through a zero-initialised projection added to the tokens, so a model
    # warm-started from one without it answers as before at step 0. Needs the normalised read-in.
    readin_mask: bool = False

    def __post_init__(self):
        _validate(self)

    @property
    def use_scan(self) -> bool:
        return self.num_layers > SCAN_ABOVE_LAYERS if self.scan_layers is None else self.scan_layers

    @property
    def dimension_free(self) -> bool:
        """Whether the parameters are independent of the data dimension D (normalised read-in)."""
        return self.readin == "normalized"

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Builds a config from a dict (``backbone_options`` a dict too); unknown field names raise ValueError."""
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig.from_dict expects a dict, got {type(d).__name__}")
        check_fields(d, (f.name for f in dataclasses.fields(cls)), "ModelConfig")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reseeded(config: ModelConfig, slot_init: str | None, seed_combine: str | None = None) -> ModelConfig:
    """``config`` with its clustering read-out seeded by ``slot_init`` and its seedings combined by
    ``seed_combine`` (None or '' keeps each). The seedings and their combination have no parameters, so the
    same weights serve; refused for other read-outs and across learned / seeded starts (only the seeded ones
    have the seed parameters)."""
    if seed_combine and seed_combine != config.seed_combine:
        if config.readout != "cluster":
            raise ValueError(
                f"seed_combine applies to the clustering read-out; this model's is {config.readout!r}"
            )
        check_choice(seed_combine, "seed_combine", SEED_COMBINES)
        config = dataclasses.replace(config, seed_combine=seed_combine)
    if not slot_init or slot_init == config.slot_init:
        return config
    if config.readout != "cluster":
        raise ValueError(f"slot_init applies to the clustering read-out; this model's is {config.readout!r}")
    if (config.slot_init == "learned") != (slot_init == "learned"):
        raise ValueError(
            f"slot_init {slot_init!r} and {config.slot_init!r} have different parameters (only seeded starts "
            "have the seed parameters): a model can be reseeded from one seeding to another, not to or from 'learned'"
        )
    return dataclasses.replace(config, slot_init=slot_init)


def model_config(size: str = "tiny", **overrides) -> ModelConfig:
    """The named size from MODEL_SIZES with field overrides, e.g. ``model_config('tiny', backbone='set')``."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    return ModelConfig.from_dict({**MODEL_SIZES[size], **overrides})


def _validate(c: ModelConfig) -> None:
    for name, options in (
        ("backbone", BACKBONE_OPTIONS),
        ("readout", READOUTS),
        ("dtype", DTYPES),
        ("readin", READINS),
        ("noise", NOISE_MODES),
    ):
        check_choice(getattr(c, name), f"ModelConfig.{name}", options)
    if c.noise == "conditioned" and (c.readin != "normalized" or c.readout != "cluster"):
        raise ValueError(
            "ModelConfig.noise='conditioned' needs readin='normalized' and readout='cluster' (the scale-free "
            f"coordinates and the read-out that estimates variances), got readin={c.readin!r}, readout={c.readout!r}"
        )
    check_choice(c.seed_combine, "ModelConfig.seed_combine", SEED_COMBINES)
    if not isinstance(c.slot_init, str):
        raise ValueError(f"ModelConfig.slot_init must be a string, got {c.slot_init!r}")
    try:
        seeding_functions(c.slot_init)
    except ValueError as err:
        raise ValueError(f"ModelConfig.{err}") from None
    check_ints(
        c, ("num_layers", "width", "num_heads", "task_embed_dim", "mlp_ratio", "project_rank"), "ModelConfig"
    )
    check_int(c.cluster_iters, "ModelConfig.cluster_iters", 0)
    for name in (
        "slot_attention",
        "em_logits",
        "cluster_correction",
        "official_pooling_mask_bug",
        "readin_mask",
    ):
        check_bool(getattr(c, name), f"ModelConfig.{name}")
    if c.readin_mask and c.readin != "normalized":
        raise ValueError(f"ModelConfig.readin_mask needs readin='normalized', got readin={c.readin!r}")
    if c.cluster_correction and c.readout != "cluster":
        raise ValueError(f"ModelConfig.cluster_correction needs readout='cluster', got readout={c.readout!r}")
    check_bool(c.scan_layers, "ModelConfig.scan_layers", optional=True)
    options_cls = BACKBONE_OPTIONS[c.backbone]
    options = c.backbone_options
    if options is None:
        options = options_cls()
    elif isinstance(options, Mapping):
        options = options_cls.from_dict(options, c.backbone)
    elif type(options) is not options_cls:
        raise ValueError(
            f"ModelConfig.backbone_options of backbone {c.backbone!r} must be a {options_cls.__name__} "
            f"(or a dict of its fields), got {type(options).__name__}"
        )
    object.__setattr__(c, "backbone_options", options)  # frozen: set once, before anyone reads it
    options.validate(c.width, c.num_heads)
