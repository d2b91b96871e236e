"""The REPORT section of the executable-theory check (``experiments/studies/theory_em/run.py``), from its saved JSON."""

from __future__ import annotations

import os

from experiments.studies.base import Part, load_json


def theory_section(saved: dict, figure: str) -> list[str]:
    setting = saved["setting"]
    out = [
        "## Theory: a transformer that runs EM steps (Theorem 1), and one that runs a tensor power step (Theorem 2)",
        f"![Theorem 1 construction vs EM]({figure})",
        "",
        (
            "`tgmm_jax/theory/` builds the weights the proofs describe (derivations in `docs/theory.md`). Theorem 2"
            " (ReLU attention, d heads) computes T(I, v, v) to float32 rounding (tested against `baselines.spectral`'s"
            " power update). Theorem 1: two layers per EM step, softmax attention for the E-step and for the"
            " responsibility-weighted M-step; log and z^2 are ReLU MLPs of the given width (exact when width = none)."
            f" Distance to exact EM from the same start ({setting['init']}), d in {setting['dims']}, K in"
            f" {setting['ks']}, N = {setting['num_points']}, {setting['tasks_per_cell']} tasks per (d, K),"
            f" {setting['dtype']}; median over tasks of the largest component error (`python -m experiments.studies.theory_em.run`):"
        ),
        "",
        "| MLP width | log floor | EM steps L | means: median | means: max | weights: median |",
        "|---|---|---|---|---|---|",
    ]
    for row in saved["rows"]:
        width = "exact" if row["width"] is None else str(row["width"])
        floor = "-" if row["floor"] is None else f"{row['floor']:g}"
        out.append(
            f"| {width} | {floor} | {row['steps']} | {row['mean_err_median']:.1e} | {row['mean_err_max']:.1e} | "
            f"{row['weight_err_median']:.1e} |"
        )
    out.append("")
    return out


def build(results: str, scale: str):
    saved = load_json(os.path.join(results, "theory_em.json"))
    return Part(sections=theory_section(saved, "theory_em.png")) if saved and scale == "cpu" else None
