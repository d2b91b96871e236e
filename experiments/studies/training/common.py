"""Shared pieces of the training studies (depth x N, objectives, seeds): their configs, the
learning curves read from a run's ``metrics.jsonl``, and statistics across training seeds.

The scripts are ``experiments/studies/training/depth.py``, ``experiments/studies/training/objectives.py`` and
``experiments/studies/training/seeds.py``; their REPORT sections are in ``experiments/studies/training/report.py``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.configs import cluster, tiny
from tgmm_jax.train.config import model_group


def paper_cpu_config(
    *, seed: int, steps: int, objective: str = "est_matched", d: int = 8, n: int = 128, evals: int = 6
):
    """The paper's architecture at CPU size (``tiny.py:d=..,n=..,steps=..``) with ``seed`` and ``objective``.

    The periodic evaluation (``evals`` rounds) is TGMM only, on the same 32 tasks per K every round (the
    learning curves); the studies score every method once, at the end, on their own fresh tasks.
    """
    eval_every = max(steps // evals, 1)
    config = tiny.get_config(f"d={d},n={n},steps={steps}")
    config.seed = seed
    config.objective = objective
    config.eval_every = eval_every
    config.checkpoint_every = eval_every
    config.eval.baselines = ()
    config.eval.tasks_per_k = 32
    config.eval.fresh_tasks = False
    return config


def depth_config(*, layers: int, steps: int, d: int = 8, n: int = 64):
    """The tiny recipe (set backbone, est_matched, Adam 2e-3) at the ``tiny`` width (32, 2 heads), ``layers`` deep.

    Trained on N in [n/2, n] (the task sampler's default n_min = n_max // 2)."""
    config = paper_cpu_config(seed=0, steps=steps, d=d, n=n)
    config.model = model_group("tiny", backbone="set", num_layers=layers)
    return config


def cluster_seed_config(*, seed: int, steps: int):
    """The README's main job (``cluster.py:steps=..``) with training seed ``seed``; nothing else changed."""
    config = cluster.get_config(f"steps={steps}")
    config.seed = seed
    return config


def learning_curve(workdir: str) -> list[dict]:
    """The periodic evaluations of a run: [{step, l2: {K: mean}, cluster_acc: {K: mean}}] from metrics.jsonl."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    points = {}
    with open(path) as f:
        for row in map(json.loads, f):
            if "eval" not in row:
                continue
            ev = row["eval"]
            ks = sorted({int(k.split("/")[1][2:]) for k in ev if k.startswith("tgmm/")})
            points[row["step"]] = dict(  # a resumed run logs a step again: keep the last
                step=row["step"],
                l2={k: ev[f"tgmm/K={k}/l2"] for k in ks},
                cluster_acc={k: ev[f"tgmm/K={k}/cluster_acc"] for k in ks},
            )
    return [points[s] for s in sorted(points)]


def check_names(flag: str, names, allowed) -> None:
    """Raises ValueError naming the entries of ``names`` that are not in ``allowed``."""
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown {flag} {unknown}; choose from {tuple(allowed)}")


def across_seeds(values) -> dict:
    """Mean, sample standard deviation, min and max of one number across training seeds."""
    v = np.asarray(values, dtype=float)
    return dict(
        mean=float(v.mean()),
        std=float(v.std(ddof=1)) if v.size > 1 else 0.0,
        min=float(v.min()),
        max=float(v.max()),
        n=int(v.size),
    )


def cell(cells: list[dict], method: str, **where) -> dict | None:
    """The one evaluation cell of ``method`` matching ``where`` (e.g. K=3, N=128), or None."""
    for c in cells:
        if c["method"] == method and all(c[k] == v for k, v in where.items()):
            return c
    return None


def paper_cpu_workdir(root: str, *, objective: str, steps: int, seed: int, d: int = 8, n: int = 128) -> str:
    """One workdir per (objective, steps, seed, d, n): the seeds and objectives studies share est_matched's."""
    return os.path.join(root, f"paper_d={d}_n={n}_{objective}_steps={steps}_seed={seed}")
