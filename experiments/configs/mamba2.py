"""The paper's Mamba2 ablation (docs/official_differences.md §2): 12 Mamba2 layers, 8 heads x 64, state 16,
2 groups."""

from experiments.configs import paper
from tgmm_jax.train.config import model_group


def get_config(arg: str | None = None):
    config = paper.get_config(arg)
    config.model = model_group("paper", backbone="mamba2")
    return config
