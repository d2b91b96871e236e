"""Seconds to score the evaluation protocol's cells: TGMM (the shipped model, with and without EM refinement)
and every baseline, on the same tasks, through ``tgmm_jax.scoring``.

    python -m benchmarks.evaluate --json results/benchmark_evaluate_cpu.json
    python -m benchmarks.evaluate --json /tmp/e.json --tasks-per-cell 8 --n 16 --methods tgmm,em   # quick

Tasks: ``--tasks-per-cell`` per K = 2..5 at D = ``--d``, N = ``--n`` (fixed), drawn once from ``--seed``; a cell
is the tasks of one K (every cell has the padded shape K_max = 5, so one compiled program serves all four).
Methods: ``tgmm`` (``tgmm_jax.pretrained`` ``--checkpoint``, default the clustering model), ``tgmm+em5``
(``scoring.model_method(model, refine_steps=5)``) and the baselines of ``experiments.methods.baseline_methods``.
Each method's first call (on the first cell) compiles and is reported apart; then every cell is timed warm
``--repeats`` times (median reported) with ``scoring.score_method`` (fitting only; metrics are computed after).
Runs unchanged on a GPU or TPU (the default JAX device); the load average is noted around each method.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from baselines import NAMES
from benchmarks import machine
from experiments.methods import baseline_methods
from tgmm_jax import scoring
from tgmm_jax.pretrained import load_checkpoint
from tgmm_jax.tasks import TaskSpec, sample_tasks

KS = (2, 3, 4, 5)
MODEL_METHODS = ("tgmm", "tgmm+em5")


def build_methods(names, checkpoint: str) -> tuple[dict, dict]:
    """({name: method}, {name: params}) for ``names`` among MODEL_METHODS and the baselines."""
    unknown = [m for m in names if m not in MODEL_METHODS + NAMES]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {MODEL_METHODS + NAMES}")
    methods, params = {}, {}
    if any(m in MODEL_METHODS for m in names):
        ckpt = load_checkpoint(checkpoint)
        for name, refine in (("tgmm", 0), ("tgmm+em5", 5)):
            if name in names:
                methods[name] = scoring.model_method(ckpt.model, refine_steps=refine)
                params[name] = ckpt.params
    methods.update(baseline_methods([m for m in names if m in NAMES]))
    return {m: methods[m] for m in names}, params


def _cell(task, k: int, per_cell: int):
    """The tasks of K = k (sample_tasks groups them in ks order)."""
    start = KS.index(k) * per_cell
    return jax.tree.map(lambda a: a[start : start + per_cell], task)


def time_method(fn, params, key, task, per_cell: int, repeats: int, chunk: int | None) -> dict:
    before = machine.load()
    start = time.perf_counter()
    jax.block_until_ready(scoring.fit_in_chunks(fn, params, key, _cell(task, KS[0], per_cell), chunk))
    first = time.perf_counter() - start
    cells = {}
    for k in KS:
        cell = _cell(task, k, per_cell)
        seconds, per_task = [], None
        for _ in range(repeats):
            per_task, s = scoring.score_method(fn, params, key, cell, chunk)
            seconds.append(s)
        ok = np.asarray(per_task["applicable"], bool)
        cells[f"K={k}"] = {
            "seconds_median": float(np.median(seconds)),
            "seconds_all": seconds,
            "l2_mean": float(np.mean(np.asarray(per_task["l2"])[ok])) if ok.any() else float("nan"),
            "not_applicable": float(1.0 - ok.mean()),
        }
    warm_first_cell = cells[f"K={KS[0]}"]["seconds_median"]
    return {
        "first_call_s": first,
        "compile_s_estimate": max(first - warm_first_cell, 0.0),
        "cells": cells,
        "seconds_per_cell_mean": float(np.mean([c["seconds_median"] for c in cells.values()])),
        "load_before": before,
        "load_after": machine.load(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--tasks-per-cell", type=int, default=1280)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--methods", default=",".join(MODEL_METHODS + NAMES))
    parser.add_argument("--checkpoint", default="pretrained", help="'pretrained', a shipped name, or a path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="tasks per compiled call (default: a cell)")
    parser.add_argument("--seed", type=int, default=20261202)
    args = parser.parse_args(argv)
    names = [m for m in args.methods.split(",") if m]
    methods, params = build_methods(names, args.checkpoint)
    spec = TaskSpec(dim=args.d, ks=KS, n_max=args.n, n_min=args.n, variable_n=False)
    task_key, method_key = jax.random.split(jax.random.key(args.seed))
    task = sample_tasks(task_key, spec, args.tasks_per_cell)
    report = {
        "machine": machine.machine_info(),
        "note": "wall times on a machine whose cores other jobs share; see the load averages noted around "
        "each method",
        "settings": {
            "tasks_per_cell": args.tasks_per_cell,
            "ks": list(KS),
            "d": args.d,
            "n": args.n,
            "repeats": args.repeats,
            "chunk": args.chunk,
            "checkpoint": args.checkpoint,
            "task_fingerprint": scoring.task_fingerprint(task),
        },
        "methods": {},
    }
    for name, fn in methods.items():
        row = time_method(
            fn, params.get(name), method_key, task, args.tasks_per_cell, args.repeats, args.chunk
        )
        report["methods"][name] = row
        cells = " ".join(f"{k} {c['seconds_median']:7.3f}" for k, c in row["cells"].items())
        print(
            f"{name:13s} compile+first {row['first_call_s']:7.2f} s | warm s per cell of {args.tasks_per_cell}: "
            f"{cells} | l2 K=5 {row['cells']['K=5']['l2_mean']:.3f}",
            flush=True,
        )
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    report["machine"]["load_at_end"] = machine.load()
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
