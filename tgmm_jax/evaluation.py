"""Scoring TGMM and the baselines on the same tasks, and summarising per-task metrics per K.

Every method is a function ``fn(key, task) -> (MixtureParams, info)`` (the baselines' signature; TGMM is
wrapped to match), so one loop scores them all with ``metrics.evaluate_estimates`` on identical tasks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Callable

import jax
import numpy as np

from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.tasks import GMMTask, TaskSpec, sample_tasks

# Per-task metrics summarised in tables and logs (besides 'applicable').
SUMMARY_METRICS = ("l2", "l2_means", "l2_weights", "cluster_acc", "loglik", "oracle_gap", "l2_official")

Method = Callable[[jax.Array, GMMTask], tuple]


MODEL_METHOD = "tgmm"  # the trained model, among the baselines; the only method that depends on a checkpoint


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


def fit_in_chunks(fn: Method, key: jax.Array, task: GMMTask, chunk: int | None = None):
    """Runs ``fn`` on slices of at most ``chunk`` tasks (one compiled shape) and concatenates the estimates.

    The last slice is padded with copies of the first tasks so every call has the same shape.
    """
    fit = jax.jit(lambda k, t: fn(k, t)[0])
    total = task.points.shape[0]
    if chunk is None or chunk >= total:
        return fit(key, task)
    parts = []
    for i, start in enumerate(range(0, total, chunk)):
        idx = np.arange(start, start + chunk) % total
        part = fit(jax.random.fold_in(key, i), jax.tree.map(lambda a: a[idx], task))
        parts.append(jax.tree.map(lambda a: a[: min(chunk, total - start)] if a is not None else None, part))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def score_method(
    fn: Method, key: jax.Array, task: GMMTask, chunk: int | None = None
) -> tuple[dict[str, np.ndarray], float]:
    """Per-task metrics of one method on ``task`` (NumPy, [B] each) and its wall time in seconds.

    The wall time covers fitting only and includes compilation on first use of a shape.
    """
    start = time.perf_counter()
    estimate = jax.block_until_ready(fit_in_chunks(fn, key, task, chunk))
    seconds = time.perf_counter() - start
    metrics = jax.jit(evaluate_estimates)(jax.tree.map(jax.numpy.asarray, estimate), task)
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
    lines = ["| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
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


def task_fingerprint(task: GMMTask) -> str:
    """A short hash of a task batch's points and parameters (to show methods saw identical tasks)."""
    digest = hashlib.sha256()
    for leaf in (task.points, task.point_mask, task.means, task.weights, task.scales):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()[:16]


def evaluate_methods(
    methods: dict[str, Method],
    spec: TaskSpec,
    *,
    tasks_per_cell: int,
    ns: tuple[int, ...],
    seed: int,
    mean_shift: float = 0.0,
    chunk: int | None = 512,
) -> dict:
    """Every method on the same fresh tasks: ``tasks_per_cell`` tasks per (K, N), K in spec.ks, N in ``ns``.

    Tasks come from ``seed`` only (not from the methods or their order), with the training family's
    parameters except N (fixed, no length mask) and the mean shift. Returns a JSON-ready dict with one
    entry per (method, K, N): mean and standard error of each metric, the fraction of tasks where the
    method did not apply, and the method's wall time for the N-batch (all K together).
    """
    cells, fingerprints = [], {}
    for n in ns:
        cell_spec = dataclasses.replace(spec, n_max=n, n_min=n, variable_n=False, mean_shift=float(mean_shift))
        task_key = jax.random.fold_in(jax.random.key(seed), n)
        task = sample_tasks(task_key, cell_spec, tasks_per_cell)
        fingerprints[str(n)] = task_fingerprint(task)
        for name, fn in methods.items():
            per_task, seconds = score_method(fn, jax.random.fold_in(task_key, 1), task, chunk)
            for k, entry in summarize(per_task, task.num_components).items():
                cells.append(dict(method=name, K=k, N=n, seconds=seconds, seconds_per_task=seconds / task.points.shape[0], **entry))
    return dict(
        protocol="final checkpoint on fresh tasks",
        eval_seed=seed,
        tasks_per_cell=tasks_per_cell,
        ns=list(ns),
        mean_shift=float(mean_shift),
        task_spec=dataclasses.asdict(spec),
        task_fingerprints=fingerprints,
        cells=cells,
    )


def summaries_from_cells(cells: list[dict], n: int) -> dict[str, dict[int, dict]]:
    """{method: {K: entry}} for one N, the shape ``format_table`` takes."""
    out: dict[str, dict[int, dict]] = {}
    for cell in cells:
        if cell["N"] == n:
            out.setdefault(cell["method"], {})[cell["K"]] = cell
    return out


def markdown_report(results: dict) -> str:
    """Markdown tables of a results dict (``evaluate_methods`` or ``training_tail_protocol``), one block per N."""
    blocks = [f"Protocol: {results['protocol']}."]
    for n in results["ns"]:
        summaries = summaries_from_cells(results["cells"], n)
        blocks.append(f"### N = {n}, mean shift {results.get('mean_shift', 0.0)}")
        for metric, title in (
            ("l2", "l2 error (means + weights, optimal alignment)"),
            ("l2_official", "l2 under the official code's inverse-permutation alignment (comparison only)"),
            ("cluster_acc", "clustering accuracy"),
            ("oracle_gap", "log-likelihood gap to the true parameters (per point)"),
        ):
            blocks.append(f"{title}:\n\n{format_table(summaries, metric)}")
        rows = []
        for method, summary in summaries.items():
            na = ", ".join(f"K={k}: {e['not_applicable']:.0%}" for k, e in sorted(summary.items()) if e["not_applicable"])
            seconds = next(iter(summary.values())).get("seconds")
            timing = f"{seconds:.2f} s" if seconds is not None else "n/a"
            rows.append(f"| {method} | {timing} | {na or 'none'} |")
        blocks.append("| method | wall time (all K) | not applicable |\n|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(blocks)


def training_tail_protocol(workdir: str, rounds: int = 10) -> dict:
    """The official protocol from a training log: per (method, K), the mean of the last ``rounds`` evaluations.

    Standard errors are across rounds. Uses the evaluations logged in ``workdir/metrics.jsonl``.
    """
    from etils import epath

    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path}")
    evals = [row for row in map(json.loads, path.read_text().splitlines()) if "eval" in row]
    if not evals:
        raise ValueError(f"{path} holds no evaluation rounds (was eval_every 0?)")
    config = json.loads((epath.Path(workdir) / "config.json").read_text())
    n = config["eval"]["n"] or config["task"]["n_max"]
    tail = evals[-rounds:]
    values: dict[tuple, list] = {}
    for row in tail:
        for key, value in row["eval"].items():
            method, k, metric = key.split("/")
            values.setdefault((method, int(k.removeprefix("K=")), metric), []).append(value)
    cells: dict[tuple, dict] = {}
    for (method, k, metric), vs in values.items():
        cell = cells.setdefault((method, k), dict(method=method, K=k, N=n, rounds=len(vs)))
        vs = np.asarray(vs, np.float64)
        if metric == "not_applicable":
            cell[metric] = float(vs.mean())
        else:
            sem = float(vs.std(ddof=1) / np.sqrt(vs.size)) if vs.size > 1 else float("nan")
            cell[metric] = {"mean": float(vs.mean()), "sem": sem}
    return dict(
        protocol=f"training tail: mean of the last {len(tail)} evaluation rounds (steps {tail[0]['step']}..{tail[-1]['step']})",
        ns=[n],
        cells=list(cells.values()),
        workdir=workdir,
    )


def ordered_methods(cells) -> list[str]:
    """The methods of result ``cells`` in a fixed order: TGMM, the registered baselines, then others sorted."""
    from baselines import NAMES

    order = [MODEL_METHOD, *NAMES]
    present = dict.fromkeys(c["method"] for c in cells)
    return sorted(present, key=lambda m: (order.index(m) if m in order else len(order), m))


def methods_for_run(run, names=None) -> dict[str, Method]:
    """TGMM of a trained run (``train.restore.load_run``) and the baselines: all that apply, or ``names``."""
    from baselines import BASELINES, applies_to

    available = [MODEL_METHOD] + [b for b in BASELINES if applies_to(b, run.spec.variant)]
    names = list(names or available)
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ValueError(f"unknown or inapplicable method(s) {unknown} for the {run.spec.variant} variant; "
                         f"available: {available}")
    methods = {MODEL_METHOD: tgmm_method(run.model, run.params)} if MODEL_METHOD in names else {}
    methods.update(baseline_methods([m for m in names if m != MODEL_METHOD], run.spec.variant))
    return methods
