"""How the K posterior reads data with missing values: column-mean against nearest-neighbour filling.

    python -m experiments.studies.k_posterior.missing_fill --json=results/k_posterior/missing_fill.json

Tasks from the K posterior's training prior (``experiments.train_k_posterior.task_spec``: K uniform on 1..8,
``--tasks_per_k`` each, fixed N) at each (d, N) of ``--cells``; coordinates masked completely at random at
``--rate`` (``tgmm_jax.masking``, every point keeps one); the shipped K posterior reads the complete points,
the points with each missing value set to its column's observed mean, and the points filled from their 5
nearest neighbours (``tgmm_jax.imputation``; what ``number_of_components.posterior_over_k`` does). The JSON
holds the K accuracy and the log-loss of the true K for each.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags

from experiments.train_k_posterior import task_spec
from tgmm_jax import imputation, masking
from tgmm_jax import number_of_components as nc
from tgmm_jax.tasks import sample_tasks

FILLINGS = {
    "complete": None,
    "column_mean": imputation.column_mean_impute,
    "nearest_neighbours": imputation.nearest_neighbour_impute,
}


def define_flags() -> None:
    flags.DEFINE_list("cells", ["2:128", "8:32", "8:128"], "d:N pairs.")
    flags.DEFINE_integer("tasks_per_k", 24, "Tasks of each K = 1..8 per cell.")
    flags.DEFINE_float("rate", 0.3, "Fraction of coordinates missing.")
    flags.DEFINE_integer("seed", 7, "Seed of the tasks (the masks use seed + 1).")
    flags.DEFINE_string("json", None, "Output path (JSON).")


def score_cell(dim: int, n: int, tasks_per_k: int, rate: float, seed: int) -> dict:
    """{filling: {"accuracy", "log_loss"}} on one cell's tasks."""
    ckpt = nc.load_k_posterior()
    tasks = sample_tasks(
        jax.random.PRNGKey(seed), task_spec(dim, n_max=n, n_min=n, variable_n=False), tasks_per_k
    )
    holes, _ = masking.mask_at_random(jax.random.PRNGKey(seed + 1), tasks.points, rate, tasks.point_mask)
    complete, with_nan = np.asarray(tasks.points, np.float64), np.asarray(holes, np.float64)
    k_B = np.asarray(tasks.num_components)
    out = {}
    for name, fill in FILLINGS.items():
        xs = [complete[i] if fill is None else fill(with_nan[i]) for i in range(k_B.size)]
        probs_BxK = nc.posterior_over_k(ckpt, xs, seed)
        out[name] = {
            "accuracy": float(np.mean(probs_BxK.argmax(axis=1) + 1 == k_B)),
            "log_loss": float(-np.mean(np.log(probs_BxK[np.arange(k_B.size), k_B - 1]))),
        }
    return out


def main(argv):
    del argv
    f = flags.FLAGS
    cells = {}
    for cell in f.cells:
        dim, n = (int(v) for v in cell.split(":"))
        cells[f"d{dim}_n{n}"] = score_cell(dim, n, f.tasks_per_k, f.rate, f.seed)
        print(cell, json.dumps(cells[f"d{dim}_n{n}"]), flush=True)
    result = {"rate": f.rate, "tasks_per_k": f.tasks_per_k, "seed": f.seed, "cells": cells}
    if f.json:
        with open(f.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
