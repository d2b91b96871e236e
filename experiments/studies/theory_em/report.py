"""The REPORT section of the executable-theory check (``experiments/studies/theory_em/run.py``), from its saved JSON.
The fixed prose is in ``report.md`` beside this file."""

from __future__ import annotations

import os

from experiments.studies.base import Part, load_json, prose


def theory_section(saved: dict, figure: str) -> list[str]:
    setting = saved["setting"]
    intro = prose(
        __file__,
        "intro",
        figure=figure,
        init=setting["init"],
        dims=setting["dims"],
        ks=setting["ks"],
        num_points=setting["num_points"],
        tasks_per_cell=setting["tasks_per_cell"],
        dtype=setting["dtype"],
    )
    out = [
        intro,
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
