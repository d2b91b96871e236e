"""REPORT.md's RQ1 and RQ2 sections and their claims, from ``rq1_<scale>.json``,
``rq2_sample_size_<scale>.json`` and ``rq2_distribution_shift_<scale>.json`` (``experiments.studies.rq.run``).
The fixed prose is in ``report.md`` beside this file."""

from __future__ import annotations

import os

import numpy as np

from experiments.reporting import format_gain, format_stat, ordered_methods
from experiments.studies.base import Part, load_json
from experiments.studies.base import prose as _prose
from tgmm_jax.scoring import MODEL_METHOD

RATIO_HEADER = "| cell | TGMM l2 | other l2 | ratio TGMM/other |\n|---|---|---|---|\n"


def prose(name: str, **fields) -> str:
    return _prose(__file__, name, **fields)


def cell(cells, method, **where):
    for c in cells:
        if c["method"] == method and all(c[k] == v for k, v in where.items()):
            return c
    return None


def fmt(found, metric="l2"):
    if found is None or found["not_applicable"] == 1.0 or not np.isfinite(found[metric]["mean"]):
        return "n/a"
    return format_stat(found[metric])


def _gain_text(cells, k, **where):
    """tgmm's learned gain at one K: the paired value where the cells carry it, else (results saved before the
    learned-gain column) the reference's mean l2 minus tgmm's on the same tasks, with no sem."""
    model = cell(cells, MODEL_METHOD, K=k, **where)
    if model is None:
        return "n/a"
    if "learned_gain" in model:
        return format_gain(model["learned_gain"])
    ref = cell(cells, "em_kmeanspp", K=k, **where)
    if ref is None or model["not_applicable"] or ref["not_applicable"]:
        return "n/a"
    return f"{ref['l2']['mean'] - model['l2']['mean']:+.2g} (unpaired)"


def table(cells, ks, methods, metric="l2", **where):
    lines = ["| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(fmt(cell(cells, m, K=k, **where), metric) for k in ks) + " |")
    if metric == "l2" and MODEL_METHOD in methods:
        reference = next(
            (c["learned_gain"]["reference"] for c in cells if "learned_gain" in c), "em_kmeanspp"
        )
        lines.append(
            f"| learned gain of {MODEL_METHOD} vs {reference} | "
            + " | ".join(_gain_text(cells, k, **where) for k in ks)
            + " |"
        )
    return "\n".join(lines)


def ratio_rows(pairs):
    return "\n".join(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f} |" for label, a, b in pairs)


def rq1_section(rq1, figure):
    out = [prose("rq1.heading", figure=figure), ""]
    missing = [d for d in ("2", "8", "32", "128") if d not in rq1["by_dim"]]
    if missing:
        out += [prose("rq1.not_run", missing=", ".join(missing)), ""]
    claims = {}
    em_pairs, spec_pairs, kd_pairs = [], [], []
    for d, res in sorted(rq1["by_dim"].items(), key=lambda kv: int(kv[0])):
        cells = res["cells"]
        ks = sorted({c["K"] for c in cells})
        methods = ordered_methods(cells)
        out += [
            f"### d = {d} ({res['tasks_per_cell']} tasks per cell, checkpoint step {res['step']})",
            prose("rq1.l2"),
            "",
            table(cells, ks, methods),
            "",
            prose("rq1.l2_official"),
            "",
            table(cells, ks, methods, "l2_official"),
            "",
        ]
        for k in ks:
            t, e, s = (cell(cells, m, K=k) for m in (MODEL_METHOD, "em", "spectral"))
            if t is None:
                continue
            if e is not None and k > 2:
                em_pairs.append((f"d={d}, K={k}", t["l2"]["mean"], e["l2"]["mean"]))
            if s is not None and s["not_applicable"] == 0.0:
                spec_pairs.append((f"d={d}, K={k}", t["l2"]["mean"], s["l2"]["mean"]))
            if k > int(d) and e is not None:
                kd_pairs.append((f"d={d}, K={k}", t["l2"]["mean"], e["l2"]["mean"]))
    if any(int(d) in {c["K"] for c in res["cells"]} for d, res in rq1["by_dim"].items()):
        out += [prose("rq1.k_equals_d"), ""]
    if spec_pairs:
        close = sum(a <= 2 * b for _, a, b in spec_pairs)
        claims[prose("rq1.claim.spectral")] = (
            prose("rq1.rule.spectral", close=close, cells=len(spec_pairs))
            + "\n\n"
            + RATIO_HEADER
            + ratio_rows(spec_pairs)
        )
    if em_pairs:
        better = sum(a < b for _, a, b in em_pairs)
        much = sum(a < 0.5 * b for _, a, b in em_pairs)
        claims[prose("rq1.claim.em")] = (
            prose("rq1.rule.em", better=better, much=much, cells=len(em_pairs))
            + "\n\n"
            + RATIO_HEADER
            + ratio_rows(em_pairs)
        )
    if kd_pairs:
        better = sum(a < b for _, a, b in kd_pairs)
        claims[prose("rq1.claim.k_above_d")] = (
            prose("rq1.rule.k_above_d", better=better, cells=len(kd_pairs))
            + "\n\n"
            + RATIO_HEADER
            + ratio_rows(kd_pairs)
        )
    return out, claims


def rq2_size_section(rq2, figure):
    out = [prose("rq2_size.heading", figure=figure), ""]
    by_n = rq2["by_train_n"]
    largest = max(by_n, key=int)
    ns = sorted({c["N"] for c in by_n[largest]["cells"]})
    ks = sorted({c["K"] for c in by_n[largest]["cells"]})
    for n in ns:
        rows = ["| model | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
        for train_n, res in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            rows.append(
                f"| TGMM N_train={train_n} | "
                + " | ".join(fmt(cell(res["cells"], MODEL_METHOD, K=k, N=n)) for k in ks)
                + " |"
            )
        for m in ordered_methods(by_n[largest]["cells"]):
            if m != MODEL_METHOD:
                rows.append(
                    f"| {m} | "
                    + " | ".join(fmt(cell(by_n[largest]["cells"], m, K=k, N=n)) for k in ks)
                    + " |"
                )
        out += [f"test N = {n}, l2 mean ± sem:", "", "\n".join(rows), ""]
    pairs = []
    for train_n in sorted(by_n, key=int):
        if train_n == largest:
            continue
        for k in ks:
            a = cell(by_n[train_n]["cells"], MODEL_METHOD, K=k, N=int(largest))
            b = cell(by_n[largest]["cells"], MODEL_METHOD, K=k, N=int(largest))
            if a and b:
                pairs.append((f"N_train={train_n}, K={k}", a["l2"]["mean"], b["l2"]["mean"]))
    claims = {}
    if pairs:
        graceful = sum(a <= 2 * b for _, a, b in pairs)
        claims[prose("rq2_size.claim", largest=largest)] = (
            prose("rq2_size.rule", largest=largest, graceful=graceful, cells=len(pairs))
            + "\n\n"
            + "| cell | TGMM (small N_train) l2 | TGMM (N_train = test N) l2 | ratio |\n|---|---|---|---|\n"
            + ratio_rows(pairs)
        )
    return out, claims


def rq2_shift_section(shift, figure):
    out = [prose("rq2_shift.heading", figure=figure), ""]
    by_s = shift["by_sigma_p"]
    sigmas = sorted(by_s, key=float)
    ks = sorted({c["K"] for c in by_s[sigmas[0]]["cells"]})
    methods = ordered_methods(by_s[sigmas[0]]["cells"])
    for s in sigmas:
        out += [f"sigma_p = {s}, l2 mean ± sem:", "", table(by_s[s]["cells"], ks, methods), ""]
    top = sigmas[-1]
    pairs = [
        (
            f"sigma_p={top}, K={k}",
            cell(by_s[top]["cells"], MODEL_METHOD, K=k)["l2"]["mean"],
            cell(by_s[top]["cells"], "em", K=k)["l2"]["mean"],
        )
        for k in ks
        if k > 2 and cell(by_s[top]["cells"], "em", K=k)
    ]
    claims = {}
    if pairs:
        better = sum(a < b for _, a, b in pairs)
        claims[prose("rq2_shift.claim")] = (
            prose("rq2_shift.rule", better=better, cells=len(pairs))
            + "\n\n"
            + "| cell | TGMM l2 | EM l2 | ratio |\n|---|---|---|---|\n"
            + ratio_rows(pairs)
        )
    return out, claims


def build(results: str, scale: str) -> Part:
    """The three parts' sections and claims, and the runs behind them, at ``scale``."""
    part = Part()
    parts = (  # (saved JSON, section builder, figure, key of the per-model results or None)
        (f"rq1_{scale}.json", rq1_section, f"rq1_effectiveness_{scale}.png", "by_dim"),
        (f"rq2_sample_size_{scale}.json", rq2_size_section, f"rq2_sample_size_{scale}.png", "by_train_n"),
        (
            f"rq2_distribution_shift_{scale}.json",
            rq2_shift_section,
            f"rq2_distribution_shift_{scale}.png",
            None,
        ),
    )
    for name, section, figure, per_model in parts:
        saved = load_json(os.path.join(results, name))
        if saved:
            lines, claims = section(saved, figure)
            part.sections += lines
            part.claims.update(claims)
            if per_model:
                part.runs += [(res["workdir"], res["step"]) for res in saved[per_model].values()]
    return part
