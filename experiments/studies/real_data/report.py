"""The REPORT section of the real-data study (``experiments/studies/real_data/run.py``), from its saved JSON.
The fixed prose is in ``report.md`` beside this file."""

from __future__ import annotations

import os

import numpy as np

from experiments.reporting import format_gain
from experiments.studies.base import Part, load_json
from experiments.studies.base import prose as _prose


def prose(name: str, **fields) -> str:
    return _prose(__file__, name, **fields)


def _fmt(stat, digits=3):
    if stat is None or not np.isfinite(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _best(cells, metric):
    finite = [c for c in cells if np.isfinite(c[metric]["mean"])]
    return max(finite, key=lambda c: c[metric]["mean"]) if finite else None


def real_data_section(saved: dict, figure: str) -> list[str]:
    cells = saved["cells"]
    halves = [d["n"] // 2 for d in saved["datasets"].values()]
    intro = prose(
        "intro",
        figure=figure,
        datasets=", ".join(
            f"{name} (N = {d['n']}, D = {d['dim']}, K = {d['K']})" for name, d in saved["datasets"].items()
        ),
        splits=saved["splits"],
        training_variance=saved["training_variance"],
        refine_steps=saved["refine_steps"],
        smallest=min(halves),
        largest=max(halves),
        subset=saved["subset"],
    )
    out = [intro, ""]
    for name in saved["datasets"]:
        mine = [c for c in cells if c["dataset"] == name]
        if not mine:
            continue
        out += [
            prose("dataset", dataset=name),
            "",
            (
                "| method | view | accuracy (fit half) | accuracy (held-out half) | held-out log-lik / point |"
                " learned gain (held-out accuracy minus the skeleton's, same splits) |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for c in mine:
            na = f" [{c['not_applicable']:.0%} n/a]" if c["not_applicable"] > 0 else ""
            gain = c.get("learned_gain")
            gain_text = f"{format_gain(gain)} vs {gain['reference']}" if gain else ""
            out.append(
                f"| {c['method']} | {c['view']} | {_fmt(c['acc_fit'])}{na} | {_fmt(c['acc_test'])} |"
                f" {_fmt(c['ll_test'], 2)} | {gain_text} |"
            )
        summary = []
        for view in dict.fromkeys(c["view"] for c in mine):
            in_view = [c for c in mine if c["view"] == view]
            best_acc, best_ll = _best(in_view, "acc_fit"), _best(in_view, "ll_test")
            ours = [c for c in in_view if c["method"].startswith("tgmm")]
            best_ours = _best(ours, "acc_fit")
            if best_acc and best_ll and best_ours:
                summary.append(
                    prose(
                        "view_summary",
                        view=view,
                        best=best_acc["method"],
                        best_acc=f"{best_acc['acc_fit']['mean']:.3f}",
                        ours=best_ours["method"],
                        ours_acc=f"{best_ours['acc_fit']['mean']:.3f}",
                        best_ll=best_ll["method"],
                        best_ll_value=f"{best_ll['ll_test']['mean']:.2f}",
                    )
                )
        out += ["", "; ".join(summary) + ".", ""]
    out += _subset_effect(cells, saved["subset"])
    if any(name.startswith("digits") for name in saved["datasets"]):
        out += [prose("digits_std"), ""]
    if not any(name.startswith("mnist") for name in saved["datasets"]):
        out += [prose("mnist"), ""]
    if "shipped_cluster_checkpoint" in saved:
        out += [prose("checkpoint", checkpoint=saved["shipped_cluster_checkpoint"]), ""]
    return out


def _subset_effect(cells, subset: int) -> list[str]:
    """How much the fitting-half accuracy changes when the models see only ``subset`` points instead of all."""
    rows = []
    for c in cells:
        if not c["method"].endswith(f"_sub{subset}"):
            continue
        full = next(
            (
                f
                for f in cells
                if f["dataset"] == c["dataset"]
                and f["view"] == c["view"]
                and f["method"] == c["method"][: -len(f"_sub{subset}")]
            ),
            None,
        )
        if full:
            rows.append(
                f"| {c['dataset']} | {c['view']} | {full['method']} | {full['acc_fit']['mean']:.3f} |"
                f" {c['acc_fit']['mean']:.3f} | {full['ll_test']['mean']:.2f} | {c['ll_test']['mean']:.2f} |"
            )
    if not rows:
        return []
    return [
        prose("subset", subset=subset),
        "",
        (
            f"| dataset | view | model | accuracy, all N | accuracy, {subset} points | held-out LL, all N |"
            f" held-out LL, {subset} points |"
        ),
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def build(results: str, scale: str):
    saved = load_json(os.path.join(results, "real_data.json"))  # an evaluation-only study of shipped models
    return Part(sections=real_data_section(saved, "real_data.png")) if saved and scale == "cpu" else None
