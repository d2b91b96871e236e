"""Model selection for the K posterior on validation tasks the study never scores (its held-out seed is 2026).

    python -m experiments.studies.k_posterior.validate --candidates=shipped,runs/k_posterior_big \
        --json=results/k_posterior/validation.json

Tasks: the study's cells (``run.held_out_tasks``: the training prior, fixed N per cell, ``run.CHUNK`` tasks per
chunk) with ``--seed`` (default 7), D in ``--dims``, N in ``--ns``, true K in 1..8, ``--chunks`` chunks per cell.
Each candidate is read on the same tasks:

* ``shipped`` (or any directory holding ``k_posterior.json``): an exported K posterior;
* any other path: a ``train_k_posterior`` run (its latest checkpoint);
* a suffix ``@RxS`` reads the candidate with its likelihood evidence computed from R restarts of S EM
  iterations instead of the ones it was trained with (same parameters), e.g. ``shipped@16x30``;
* a suffix ``#seed`` (after ``@RxS`` if both) draws the evidence's k-means++ starts from that key instead of
  ``k_evidence``'s fixed one (a different fixed draw, same parameters);
* a last suffix ``+noise`` tells a candidate with the noise head the prior's noise variance (1), e.g.
  ``runs/k_posterior_noise+noise``.

Printed and saved per candidate: K accuracy per (D, N) and their mean, the mean log-loss of the true K, and the
paired difference in accuracy from the first candidate over the tasks, with its standard error. No baseline is
run here: BIC's accuracy is the study's (``run.py``), on its own tasks.
"""

from __future__ import annotations

import json
import os
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.studies.k_posterior.run import CHUNK, K_MAX, held_out_tasks, posterior_apply
from tgmm_jax import k_evidence
from tgmm_jax import number_of_components as nc

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list(
        "candidates", ["shipped"], "Exported K posteriors or training runs, each [@RxS][#seed]."
    )
    flags.DEFINE_integer("seed", 7, "Seed of the validation tasks (not the study's 2026).")
    flags.DEFINE_list("dims", ["2", "8"], "Data dimensions.")
    flags.DEFINE_list("ns", ["32", "128"], "Points per task.")
    flags.DEFINE_integer("chunks", 2, f"Chunks of {CHUNK} tasks per (D, N, K).")
    flags.DEFINE_string("json", "", "Write the results here (optional).")


def parse_candidate(spec: str) -> tuple[str, tuple[int, int] | None, int | None, bool]:
    """'path[@RxS][#seed][+noise]' -> (path, (restarts, steps) or None, evidence seed or None, noise known)."""
    known_noise = spec.endswith("+noise")
    spec = spec.removesuffix("+noise")
    path, seed = spec.split("#", 1) if "#" in spec else (spec, None)
    path, evidence = path.split("@", 1) if "@" in path else (path, None)
    if evidence is not None:
        try:
            restarts, steps = (int(v) for v in evidence.lower().split("x"))
        except ValueError as e:
            raise ValueError(f"candidate {spec!r}: the evidence is @RESTARTSxSTEPS, e.g. @16x30") from e
        evidence = (restarts, steps)
    return path, evidence, None if seed is None else int(seed), known_noise


def candidate_apply(spec: str):
    """The jitted log P(K | X) of a candidate on tasks whose every point counts: [B, N, D] -> [B, K_MAX]."""
    path, evidence, seed, known_noise = parse_candidate(spec)
    from experiments.train_k_posterior import load_source

    model, params = load_source(nc.SHIPPED if path == "shipped" else path)
    if evidence is not None:
        if model.evidence_restarts < 1:
            raise ValueError(f"candidate {spec!r}: {path} reads no likelihood evidence to change")
        model = model.clone(evidence_restarts=evidence[0], evidence_steps=evidence[1])
    fn = posterior_apply(model, params, path, known_noise)
    if seed is None:
        return fn

    def with_seed(x):  # the evidence's fixed draw is read when the function is traced
        saved, k_evidence._SEED = k_evidence._SEED, seed
        try:
            return fn(x)
        finally:
            k_evidence._SEED = saved

    return with_seed


def score(log_probs: dict, cells: list) -> dict:
    """Accuracy per (D, N) cell, their mean, the mean log-loss of the true K, and the per-task hits."""
    hits, per_cell, logloss = [], {}, []
    for d, n in cells:
        keys = sorted(key for key in log_probs if key[:2] == (d, n))
        cell_hits = np.concatenate([log_probs[key].argmax(-1) + 1 == key[2] for key in keys])
        logloss.append(np.mean(np.concatenate([-log_probs[key][:, key[2] - 1] for key in keys])))
        per_cell[f"d{d}_n{n}"] = float(cell_hits.mean())
        hits.append(cell_hits)
    return {
        "accuracy": per_cell,
        "mean_accuracy": float(np.mean(list(per_cell.values()))),
        "mean_logloss": float(np.mean(logloss)),
        "hits": np.concatenate(hits),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.seed == 2026:
        raise app.UsageError("--seed=2026 is the study's held-out seed: select on other tasks")
    cells = [(int(d), int(n)) for d in FLAGS.dims for n in FLAGS.ns]
    tasks = {
        (d, n, k, c): held_out_tasks(FLAGS.seed, d, n, k, c)[0]
        for d, n in cells
        for k in range(1, K_MAX + 1)
        for c in range(FLAGS.chunks)
    }
    out, first = {}, None
    for spec in FLAGS.candidates:
        t0 = time.time()
        fn = candidate_apply(spec)
        log_probs = {key: np.asarray(fn(jnp.asarray(x, jnp.float32))) for key, x in tasks.items()}
        s = score(log_probs, cells)
        hits = s.pop("hits").astype(np.float64)
        first = hits if first is None else first
        diff = hits - first
        s["paired_difference_from_first"] = float(diff.mean())
        s["paired_difference_se"] = float(diff.std(ddof=1) / np.sqrt(diff.size))
        s["seconds"] = time.time() - t0
        out[spec] = s
        acc = " ".join(f"{c} {100 * a:.1f}" for c, a in s["accuracy"].items())
        print(
            f"{spec}: accuracy {acc} | mean {100 * s['mean_accuracy']:.2f} "
            f"({100 * diff.mean():+.2f} +- {100 * s['paired_difference_se']:.2f} vs {FLAGS.candidates[0]}) "
            f"log-loss {s['mean_logloss']:.3f} [{s['seconds']:.0f} s]",
            flush=True,
        )
    if FLAGS.json:
        os.makedirs(os.path.dirname(FLAGS.json) or ".", exist_ok=True)
        settings = {"seed": FLAGS.seed, "cells": cells, "chunks": FLAGS.chunks, "tasks_per_cell_k": CHUNK}
        with open(FLAGS.json, "w") as f:
            json.dump({"settings": settings, "candidates": out}, f, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
