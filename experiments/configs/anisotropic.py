"""Anisotropic mixtures (diagonal per-component scales, docs/official_differences.md §1): the paper model with
a scale head.

``:d=..`` selects the dimension (default 8). The baselines use EM with learned diagonal variances;
the spectral method does not apply to this variant and is left out.
"""

from experiments.configs import paper


def get_config(arg: str | None = None):
    config = paper.get_config(arg)
    config.task.variant = "anisotropic"
    config.eval.baselines = ("em", "em_kmeanspp")
    return config
