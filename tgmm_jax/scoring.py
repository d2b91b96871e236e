"""Scoring estimation methods on identical tasks, and summarising the per-task metrics per K.

A method is ``fn(params, key, task) -> (MixtureParams, info)``: the trained model takes its parameters,
a parameter-free method (a baseline) takes ``None``. Each method is jitted once (keyed on its value, see
``_compiled_fit``) with the parameters as an argument, so new weights or a rebuilt but equal method reuse
the compiled program; only a new shape traces again. The library builds no baselines: whoever composes a
run hands them in (``experiments/methods.py`` builds them from the ``baselines`` registry).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.refine import em_refine
from tgmm_jax.tasks import GMMTask, TaskSpec, noise_variances, sample_tasks

# Per-task metrics summarised in tables and logs (besides 'applicable').
SUMMARY_METRICS = ("l2", "l2_means", "l2_weights", "cluster_acc", "loglik", "oracle_gap", "l2_official")

Method = Callable[[Any, jax.Array, GMMTask], tuple]

MODEL_METHOD = "tgmm"  # the trained model, among the baselines; the only method that takes parameters


NOISE_SETTINGS = ("known", "unknown")


def _apply_model(model, params, key, task, refine_steps=0, noise="known", observed=None):
    """``observed`` [B, N, D] (missing coordinates, filled in ``task.points``): told to a model that reads
    masks (``ModelConfig.readin_mask``), unused by others."""
    del key  # the forward is deterministic
    kwargs = {}
    if observed is not None and model.config.readin_mask:
        kwargs["observed"] = observed
    if model.config.noise == "conditioned":  # told the true variance, as the baselines assume it, or nothing
        kwargs["noise_variance"] = noise_variances(task) if noise == "known" else jnp.nan
    out = model.apply({"params": params}, task.points, task.point_mask, task.num_components, **kwargs)
    estimate = out.to_params()
    if refine_steps:
        estimate = em_refine(task.points, task.point_mask, estimate, refine_steps)
    return estimate, {}


def _without_params(fn, params, key, task):
    del params
    return fn(key, task)


def model_method(model, refine_steps: int = 0, noise: str = "known") -> Method:
    """The TGMM ``model`` (a Flax module) as a method, followed by ``refine_steps`` parameter-free EM steps
    (``refine.em_refine``); equal models give equal methods (one compilation). A noise-conditioned model is told
    each task's true noise variance (``noise='known'``, what the unit-variance baselines assume) or nothing
    (``'unknown'``); other models ignore ``noise``."""
    if noise not in NOISE_SETTINGS:
        raise ValueError(f"noise must be one of {NOISE_SETTINGS}, got {noise!r}")
    kwargs = {"refine_steps": int(refine_steps)} if refine_steps else {}
    if noise != "known":
        kwargs["noise"] = noise
    return functools.partial(_apply_model, model, **kwargs)


def param_free(fn: Callable[[jax.Array, GMMTask], tuple]) -> Method:
    """A method from ``fn(key, task)`` (the baselines' signature); its params argument is ignored."""
    return functools.partial(_without_params, fn)


def _method_key(fn):
    """``fn`` by value where it is a partial of hashable parts (a rebuilt baseline or model), else by identity."""
    if not isinstance(fn, functools.partial):
        return fn
    key = (fn.func, tuple(_method_key(a) for a in fn.args), tuple(sorted(fn.keywords.items())))
    try:
        hash(key)
    except TypeError:
        return fn
    return key


_FITS: dict = {}  # method key -> its jitted fit; holds each method, so an identity key is never reused


def _compiled_fit(fn: Method):
    key = _method_key(fn)
    if key not in _FITS:
        _FITS[key] = jax.jit(lambda params, k, task: fn(params, k, task)[0])
    return _FITS[key]


_evaluate_estimates = jax.jit(evaluate_estimates)


def fit_in_chunks(fn: Method, params, key: jax.Array, task: GMMTask, chunk: int | None = None):
    """Runs ``fn`` on slices of at most ``chunk`` tasks (one compiled shape) and concatenates the estimates.

    The last slice is padded with copies of the first tasks so every call has the same shape.
    """
    fit = _compiled_fit(fn)
    total = task.points.shape[0]
    if chunk is None or chunk >= total:
        return fit(params, key, task)
    parts = []
    for i, start in enumerate(range(0, total, chunk)):
        idx, end = np.arange(start, start + chunk) % total, min(chunk, total - start)
        part = fit(params, jax.random.fold_in(key, i), jax.tree.map(lambda a, idx=idx: a[idx], task))
        parts.append(jax.tree.map(lambda a, end=end: a[:end], part))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def score_method(
    fn: Method, params, key: jax.Array, task: GMMTask, chunk: int | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """Per-task metrics of one method on ``task`` (NumPy, [B] each) and its wall time in seconds.

    The wall time covers fitting only and includes compilation on first use of a shape.
    """
    start = time.perf_counter()
    estimate = jax.block_until_ready(fit_in_chunks(fn, params, key, task, chunk))
    seconds = time.perf_counter() - start
    metrics = _evaluate_estimates(jax.tree.map(jax.numpy.asarray, estimate), task)
    return {name: np.asarray(value) for name, value in metrics.items()}, seconds


def summarize(per_task: dict[str, np.ndarray], num_components_B: np.ndarray) -> dict[int, dict]:
    """Per K: mean, standard error and median of each metric over the tasks where the method applied.

    Returns {K: {metric: {'mean', 'sem', 'median'}, 'num_tasks', 'not_applicable' (fraction)}}.
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
                entry[name] = {"mean": float("nan"), "sem": float("nan"), "median": float("nan")}
            else:
                sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
                entry[name] = {
                    "mean": float(values.mean()),
                    "sem": float(sem),
                    "median": float(np.median(values)),
                }
        out[int(k)] = entry
    return out


def paired_gain(
    model_per_task: dict[str, np.ndarray],
    reference_per_task: dict[str, np.ndarray],
    num_components_B: np.ndarray,
    metric: str = "l2",
) -> dict[int, dict]:
    """A learned model's gain over its reference on the same tasks, per K: reference minus model ``metric``
    (positive = the model is better, for an error metric), over the tasks where both applied.

    Returns {K: {'metric', 'mean', 'sem', 'z' (mean / sem; 0 when both are 0), 'num_tasks'}}.
    """
    num_components_B = np.asarray(num_components_B)
    both_B = np.asarray(model_per_task["applicable"], bool) & np.asarray(
        reference_per_task["applicable"], bool
    )
    diff_B = np.asarray(reference_per_task[metric], np.float64) - np.asarray(
        model_per_task[metric], np.float64
    )
    out = {}
    for k in np.unique(num_components_B):
        values = diff_B[(num_components_B == k) & both_B]
        mean = float(values.mean()) if values.size else float("nan")
        sem = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
        z = mean / sem if sem > 0 else (0.0 if mean == 0 else float("nan"))
        out[int(k)] = {
            "metric": metric,
            "mean": mean,
            "sem": sem,
            "z": float(z),
            "num_tasks": int(values.size),
        }
    return out


def attach_gains(
    summaries: dict[str, dict[int, dict]],
    per_task: Mapping[str, dict[str, np.ndarray]],
    references: Mapping[str, str],
    num_components_B: np.ndarray,
) -> None:
    """Adds ``learned_gain`` (``paired_gain`` on l2, with its ``reference`` named) to the per-K summary entries
    of every method that has a reference. Both must have been scored on the same tasks."""
    for method, reference in references.items():
        if method not in per_task:
            continue
        if reference not in per_task:
            raise ValueError(f"{method!r}'s reference {reference!r} was not scored on the same tasks")
        for k, gain in paired_gain(per_task[method], per_task[reference], num_components_B).items():
            summaries[method][k]["learned_gain"] = dict(gain, reference=reference)


def task_fingerprint(task: GMMTask) -> str:
    """A short hash of a task batch's points and parameters (to show methods saw identical tasks)."""
    digest = hashlib.sha256()
    for leaf in (task.points, task.point_mask, task.means, task.weights, task.scales):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()[:16]


def evaluate_methods(
    methods: Mapping[str, Method],
    spec: TaskSpec,
    *,
    tasks_per_cell: int,
    ns: tuple[int, ...],
    seed: int,
    params: Mapping[str, Any] | None = None,
    mean_shift: float = 0.0,
    chunk: int | None = 512,
    references: Mapping[str, str] | None = None,
) -> dict:
    """Every method on the same fresh tasks: ``tasks_per_cell`` tasks per (K, N), K in spec.ks, N in ``ns``.

    ``params`` maps a method's name to its parameters (absent: None, as for the baselines). Tasks come
    from ``seed`` only (not from the methods or their order), with the training family's parameters except
    N (fixed, no length mask) and the mean shift. Returns a JSON-ready dict with one entry per
    (method, K, N): mean, standard error and median of each metric, the fraction of tasks where the
    method did not apply, and the method's wall time for the N-batch (all K together).

    ``references`` maps a learned method to the parameter-free method it is reported against (its skeleton,
    ``em_seeded``, or em_kmeanspp for a model without one): its cells gain ``learned_gain``, the paired l2
    difference on the same tasks (``paired_gain``). Each reference must be among ``methods``.
    """
    params = params or {}
    references = dict(references or {})
    missing = sorted({r for m, r in references.items() if m in methods and r not in methods})
    if missing:
        raise ValueError(f"reference method(s) {missing} are not among the methods {sorted(methods)}")
    cells, fingerprints = [], {}
    for n in ns:
        cell_spec = dataclasses.replace(
            spec, n_max=n, n_min=n, variable_n=False, mean_shift=float(mean_shift)
        )
        task_key = jax.random.fold_in(jax.random.key(seed), n)
        task = sample_tasks(task_key, cell_spec, tasks_per_cell)
        fingerprints[str(n)] = task_fingerprint(task)
        per_task, summaries, seconds = {}, {}, {}
        for name, fn in methods.items():
            per_task[name], seconds[name] = score_method(
                fn, params.get(name), jax.random.fold_in(task_key, 1), task, chunk
            )
            summaries[name] = summarize(per_task[name], task.num_components)
        attach_gains(summaries, per_task, references, task.num_components)
        for name in methods:
            for k, entry in summaries[name].items():
                seconds_per_task = seconds[name] / task.points.shape[0]
                cells.append(
                    {
                        "method": name,
                        "K": k,
                        "N": n,
                        "seconds": seconds[name],
                        "seconds_per_task": seconds_per_task,
                        **entry,
                    }
                )
    return {
        "protocol": "final checkpoint on fresh tasks",
        "eval_seed": seed,
        "tasks_per_cell": tasks_per_cell,
        "ns": list(ns),
        "mean_shift": float(mean_shift),
        "task_spec": dataclasses.asdict(spec),
        "task_fingerprints": fingerprints,
        "references": {m: r for m, r in references.items() if m in methods},
        "cells": cells,
    }
