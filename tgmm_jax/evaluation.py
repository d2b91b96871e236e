"""Scoring TGMM and the baselines on the same tasks, and summarising per-task metrics per K.

Every method is a function ``fn(key, task) -> (MixtureParams, info)`` (the baselines' signature; TGMM is
wrapped to match), so one loop scores them all with ``metrics.evaluate_estimates`` on identical tasks.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.tasks import GMMTask

# Per-task metrics summarised in tables and logs (besides 'applicable').
SUMMARY_METRICS = ("l2", "l2_means", "l2_weights", "cluster_acc", "loglik", "oracle_gap", "l2_official")

Method = Callable[[jax.Array, GMMTask], tuple]


def tgmm_method(model, params) -> Method:
    """TGMM as a method with the baselines' signature (the key is unused: the forward is deterministic)."""

    def fn(key, task):
        del key
        out = model.apply({"params": params}, task.points, task.point_mask, task.num_components)
        return out.to_params(), {}

    return fn


def baseline_methods(names, variant: str = "isotropic") -> dict[str, Method]:
    if not names:
        return {}
    from baselines import get_baseline  # the baselines package imports this library, not the reverse

    return {name: get_baseline(name, variant=variant) for name in names}


def score_method(fn: Method, key: jax.Array, task: GMMTask) -> tuple[dict[str, np.ndarray], float]:
    """Per-task metrics of one method on ``task`` (NumPy, [B] each) and its wall time in seconds.

    The wall time covers the fit only and includes compilation on first use of a shape.
    """
    fit = jax.jit(lambda k, t: fn(k, t)[0])
    start = time.perf_counter()
    estimate = jax.block_until_ready(fit(key, task))
    seconds = time.perf_counter() - start
    metrics = jax.jit(evaluate_estimates)(estimate, task)
    return {name: np.asarray(value) for name, value in metrics.items()}, seconds


def summarize(per_task: dict[str, np.ndarray], num_components_B: np.ndarray) -> dict[int, dict]:
    """Per K: mean and standard error of each metric over the tasks where the method applied.

    Returns {K: {metric: {'mean', 'sem'}, 'num_tasks', 'not_applicable' (fraction)}}.
    """
    num_components_B = np.asarray(num_components_B)
    applicable_B = np.asarray(per_task["applicable"], bool)
    out = {}
    for k in np.unique(num_components_B):
        cell = num_components_B == k
        ok = cell & applicable_B
        entry = {"num_tasks": int(cell.sum()), "not_applicable": float(1.0 - ok.sum() / cell.sum())}
        for name in SUMMARY_METRICS + (("l2_scales",) if "l2_scales" in per_task else ()):
            values = np.asarray(per_task[name], np.float64)[ok]
            if values.size == 0:
                entry[name] = {"mean": float("nan"), "sem": float("nan")}
            else:
                sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
                entry[name] = {"mean": float(values.mean()), "sem": float(sem)}
        out[int(k)] = entry
    return out


def format_table(summaries: dict[str, dict[int, dict]], metric: str = "l2") -> str:
    """Markdown table: one row per method, one column per K, 'mean ± sem' of ``metric`` ('n/a' if none applied)."""
    ks = sorted({k for s in summaries.values() for k in s})
    lines = [f"| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for method, summary in summaries.items():
        cells = []
        for k in ks:
            entry = summary.get(k)
            if entry is None or not np.isfinite(entry[metric]["mean"]):
                cells.append("n/a")
            else:
                cells.append(f"{entry[metric]['mean']:.3f} ± {entry[metric]['sem']:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
