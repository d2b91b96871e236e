"""Distance of the Theorem-1 construction (tgmm_jax.theory.em) to exact EM, by MLP width, after L steps.

Tasks: Algorithm-1 isotropic tasks, D in {2, 8}, K in {2, 3, 4}, N = 64, ``--tasks_per_cell`` each. Both the
construction and EM (tgmm_jax.refine.em_refine) start from the same mixture: uniform weights, means = the
task's first K points. Errors per task: max_k ||mu_k - mu_k^EM|| and max_k |pi_k - pi_k^EM| after
L in {1, 5, 10} steps; the table gives their median / 90th percentile / max over all tasks, for MLP widths
(units per approximated scalar function: log and z^2), log floors, and the exact nonlinearities
(width None: the wiring alone, float rounding).

Usage: python -m experiments.studies.theory_em.run [--tasks_per_cell 16] [--out results/theory_em.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from tgmm_jax.gmm import MixtureParams
from tgmm_jax.refine import em_refine
from tgmm_jax.tasks import TaskSpec, sample_tasks
from tgmm_jax.theory import em

DIMS = (2, 8)
KS = (2, 3, 4)
NUM_POINTS = 64
STEPS = (1, 5, 10)
WIDTHS = (8, 16, 32, 64, 128, 256, 512)
FLOORS = (1e-2, 1e-3, 1e-4)
RADIUS = 12.0  # |coordinates| of Algorithm-1 points stay below it (means in [-5, 5], unit noise)


@functools.partial(jax.jit, static_argnames=("d", "k"))
def _step(step_params, tokens_BxTxE, types_T, d, k):
    return jax.vmap(lambda t: em.em_step_apply(step_params, t, types_T, d, k))(tokens_BxTxE)


def _errors(tokens_BxTxE, types_T, d, k, truth):
    w_BxK, m_BxKxD = jax.vmap(lambda t: em.em_readout(t, types_T, d, k))(tokens_BxTxE)
    mean_err_B = jnp.max(jnp.linalg.norm(m_BxKxD - truth.means, axis=-1), axis=-1)
    weight_err_B = jnp.max(jnp.abs(w_BxK - truth.weights), axis=-1)
    return np.asarray(mean_err_B), np.asarray(weight_err_B)


def run_cell(key, d, k, tasks_per_cell):
    """{(width, floor, L): (mean errors [B], weight errors [B])} for one (D, K)."""
    task = sample_tasks(key, TaskSpec(dim=d, ks=(k,), n_max=NUM_POINTS, variable_n=False), tasks_per_cell)
    w0_BxK = jnp.full((tasks_per_cell, k), 1.0 / k)
    m0_BxKxD = task.points[:, :k]
    init = MixtureParams(w0_BxK, m0_BxKxD, None, jnp.ones((tasks_per_cell, k), bool))
    truth = {s: em_refine(task.points, task.point_mask, init, s) for s in STEPS}
    tokens, types = jax.vmap(em.em_tokens, in_axes=(0, 0, 0))(task.points, w0_BxK, m0_BxKxD)
    types = types[0]
    out = {}
    settings = [(None, None)] + [(w, f) for w in WIDTHS for f in FLOORS]
    for width, floor in settings:
        step = em.em_step_params(d, k, width, floor if floor else 1e-3, RADIUS)
        h = tokens
        for s in range(1, max(STEPS) + 1):
            h = _step(step, h, types, d, k)
            if s in STEPS:
                out[(width, floor, s)] = _errors(h, types, d, k, truth[s])
    return out


def summarise(cells):
    rows = []
    for setting in cells[0]:
        mean_err = np.concatenate([c[setting][0] for c in cells])
        weight_err = np.concatenate([c[setting][1] for c in cells])
        width, floor, steps = setting
        row = {"width": width, "floor": floor, "steps": steps, "tasks": int(mean_err.size)}
        for name, err in (("mean_err", mean_err), ("weight_err", weight_err)):
            row[f"{name}_median"] = float(np.median(err))
            row[f"{name}_p90"] = float(np.quantile(err, 0.9))
            row[f"{name}_max"] = float(np.max(err))
        rows.append(row)
    return rows


def plot(rows, path):
    fig = Figure(figsize=(4 * len(STEPS), 6.4))  # the object-oriented API: no pyplot state
    axes = fig.subplots(2, len(STEPS), squeeze=False)
    for col, steps in enumerate(STEPS):
        for row_i, name in enumerate(("mean_err", "weight_err")):
            ax = axes[row_i][col]
            for floor in FLOORS:
                sel = [r for r in rows if r["steps"] == steps and r["floor"] == floor]
                ax.plot(
                    [r["width"] for r in sel],
                    [r[f"{name}_median"] for r in sel],
                    marker="o",
                    label=f"floor {floor:g}",
                )
            exact = next(r for r in rows if r["steps"] == steps and r["width"] is None)
            ax.axhline(exact[f"{name}_median"], color="k", ls="--", label="exact log, z^2")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("MLP width (units per scalar function)")
            what = "max_k ||mu_k - mu_k^EM||" if name == "mean_err" else "max_k |pi_k - pi_k^EM|"
            ax.set_ylabel(f"median {what}")
            ax.set_title(f"L = {steps} EM steps")
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks_per_cell", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/theory_em.json")
    parser.add_argument("--figure", default="results/theory_em.png")
    args = parser.parse_args()
    start = time.time()
    key = jax.random.key(args.seed)
    cells = []
    for i, (d, k) in enumerate((d, k) for d in DIMS for k in KS):
        cells.append(run_cell(jax.random.fold_in(key, i), d, k, args.tasks_per_cell))
        print(f"D={d} K={k} done ({time.time() - start:.0f}s)", flush=True)
    rows = summarise(cells)
    result = {
        "setting": {
            "dims": DIMS,
            "ks": KS,
            "num_points": NUM_POINTS,
            "tasks_per_cell": args.tasks_per_cell,
            "init": "uniform weights, means = first K points",
            "radius": RADIUS,
            "seed": args.seed,
            "dtype": "float32",
        },
        "rows": rows,
        "seconds": time.time() - start,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    plot(rows, args.figure)
    for r in rows:
        if r["floor"] in (None, 1e-3):
            print(
                f"L={r['steps']:2d} width={r['width']!s:>4} mean_err median {r['mean_err_median']:.2e} "
                f"p90 {r['mean_err_p90']:.2e} max {r['mean_err_max']:.2e} | weight_err median "
                f"{r['weight_err_median']:.2e} max {r['weight_err_max']:.2e}"
            )


if __name__ == "__main__":
    main()
