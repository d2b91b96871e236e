"""Shared by the estimator tests: a tiny random-init checkpoint that exercises the shipped model's code paths."""

import jax
import numpy as np

from tgmm_jax import pretrained
from tgmm_jax.models import make_model, model_config
from tgmm_jax.tasks import TaskSpec


def save_tiny_checkpoint(directory: str, noise: str = "unit") -> str:
    """A random-init dimension-free clustering model with the shipped model's seedings (K in 2, 3), exported
    to ``directory`` (the path returned). ``noise="conditioned"``: the noise-conditioned model, with its
    learned correction head on."""
    extra = dict(noise="conditioned", cluster_correction=True) if noise == "conditioned" else {}
    cfg = model_config(
        "tiny", backbone="set", num_layers=1, width=16, num_heads=2, task_embed_dim=8,
        readin="normalized", readout="cluster", project_rank=2, cluster_iters=2,
        slot_init="farthest+greedy+smooth3", **extra,
    )  # fmt: skip
    spec = TaskSpec(dim=2, ks=(2, 3), n_max=16)
    params = make_model(cfg, spec).init(
        jax.random.key(0), np.zeros((1, 16, 2), np.float32), np.ones((1, 16), bool), np.array([2])
    )
    return pretrained.save_exported(directory, cfg, spec, params["params"])
