"""The REPORT section of the clustering TGMM study (``experiments/studies/cluster/run.py``), from its saved JSON.

Every number is read from ``cluster_study.json``; each target of the study gets a rule and a verdict computed
here, with the margin by which it is missed where it is. The fixed prose is in ``report.md`` beside this file.
"""

from __future__ import annotations

import os

import numpy as np

from experiments.reporting import GAIN_TITLE, format_gain, format_gain_table, format_stat
from experiments.studies.base import Part, load_json
from experiments.studies.base import prose as _prose
from tgmm_jax.scoring import MODEL_METHOD

REFINED = "tgmm+em"
RESTARTS = "tgmm+kpp3"
METHODS = (
    MODEL_METHOD,
    REFINED,
    RESTARTS,
    "em_seeded",
    "em_seeded+em",
    "em_seeded+kpp3",
    "em",
    "em_kmeanspp",
    "spectral",
)


def prose(name: str, **fields) -> str:
    return _prose(__file__, name, **fields)


def _cell(cells, method, k):
    for c in cells:
        if c["method"] == method and c["K"] == k:
            return c
    return None


def _mean(cells, method, k):
    c = _cell(cells, method, k)
    if c is None or c["not_applicable"] == 1.0:
        return float("nan")
    return c["l2"]["mean"]


def _fmt(cell):
    if cell is None or cell["not_applicable"] == 1.0 or not np.isfinite(cell["l2"]["mean"]):
        return "n/a"
    text = format_stat(cell["l2"])
    if cell["not_applicable"] > 0:
        text += f" [{cell['not_applicable']:.0%} n/a]"
    return text


def _table(cells, methods=METHODS):
    ks = sorted({c["K"] for c in cells})
    lines = ["| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for m in methods:
        if any(c["method"] == m for c in cells):
            lines.append(f"| {m} | " + " | ".join(_fmt(_cell(cells, m, k)) for k in ks) + " |")
    return "\n".join(lines)


def _gain_table(cells):
    """The learned gain of each learned method over its skeleton, per K ('' when the cells carry none)."""
    summaries: dict = {}
    for c in cells:
        summaries.setdefault(c["method"], {})[c["K"]] = c
    return format_gain_table(summaries)


def _gain_summary(grid: dict) -> list[str]:
    """A computed statement of what the network adds over its skeleton across the grid (l2, same tasks)."""
    gains = [
        (f"d={d} K={c['K']}", c["learned_gain"])
        for d, res in sorted(grid.items(), key=lambda kv: int(kv[0]))
        for c in res["cells"]
        if c["method"] == MODEL_METHOD and "learned_gain" in c
    ]
    if not gains:
        return []
    better = [(lab, g) for lab, g in gains if g["z"] > 2]
    worse = [(lab, g) for lab, g in gains if g["z"] < -2]
    tied = len(gains) - len(better) - len(worse)
    largest = max(gains, key=lambda lg: abs(lg[1]["mean"]))
    listed = lambda found: f" ({', '.join(f'{lab}: {format_gain(g)}' for lab, g in found)})" if found else ""
    text = prose(
        "gain_summary",
        reference=gains[0][1]["reference"],
        better=len(better),
        cells=len(gains),
        better_cells=listed(better),
        worse=len(worse),
        worse_cells=listed(worse),
        tied=tied,
        largest=largest[0],
        largest_gain=format_gain(largest[1]),
    )
    return [text, ""]


def _verdict(pairs, limit, what):
    """pairs: (label, ours, reference); holds where ours <= limit * reference. One line + the worst cell."""
    held = [(lab, a / b) for lab, a, b in pairs if np.isfinite(a) and np.isfinite(b)]
    ok = sum(r <= limit for _, r in held)
    worst = max(held, key=lambda x: x[1]) if held else ("-", float("nan"))
    status = "met" if held and ok == len(held) else "NOT met"
    return f"| {what} | {ok} of {len(held)} cells | {status} | worst {worst[0]}: ratio {worst[1]:.3f} (limit {limit}) |"


def _load_text(timing: dict) -> str:
    """The 1-minute load average around a timing, or what is known of it."""
    if "load_average_before" in timing:
        return f"{timing['load_average_before'][0]:.1f} -> {timing['load_average_after'][0]:.1f}"
    return timing.get("load_note", "not recorded")


def _seeding_text(payload: dict) -> str:
    """How the slots were seeded in training and in this evaluation (they differ where the study overrode it)."""
    model = payload.get("config", {}).get("model", {})
    trained = payload.get("trained_slot_init", model.get("slot_init", "learned"))
    evaluated = payload.get("slot_init", trained)
    text = prose("seeding", trained=repr(trained))
    if evaluated != trained:
        text += " " + prose("seeding.overridden", evaluated=repr(evaluated))
    return text


def _previous_table(payload: dict, previous: dict) -> list[str]:
    """TGMM alone (and + EM) of the previous checkpoint beside this one, per (d, K), with em_kmeanspp."""
    heads = previous.get("config", {}).get("model", {}).get("num_heads")
    lines = [
        prose(
            "previous",
            workdir=previous["workdir"],
            seeding=_seeding_text(previous),
            heads=heads,
            step=previous.get("step"),
            shift=f"{payload.get('shift', {}).get('mean_shift', float('nan')):g}",
        ),
        "",
        f"| cell | previous {MODEL_METHOD} | this {MODEL_METHOD} | previous {REFINED} | this {REFINED} | em_kmeanspp |",
        "|---|---|---|---|---|---|",
    ]
    sources = [
        (f"d={d}", payload["grid"][d]["cells"], previous.get("grid", {}).get(d, {}).get("cells"))
        for d in sorted(payload.get("grid", {}), key=int)
    ]
    if payload.get("shift") and previous.get("shift"):
        sources.append(("shift", payload["shift"]["cells"], previous["shift"]["cells"]))
    for label, cells, old in sources:
        if not old:
            continue
        for k in sorted({c["K"] for c in cells}):
            values = (
                _mean(old, MODEL_METHOD, k),
                _mean(cells, MODEL_METHOD, k),
                _mean(old, REFINED, k),
                _mean(cells, REFINED, k),
                _mean(cells, "em_kmeanspp", k),
            )
            lines.append(f"| {label} K={k} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return lines + [""]


def _why_missed(pairs: dict, timing: dict) -> list[str]:
    """One line per missed target that the numbers explain: near-ties, and where the time goes."""
    lines = []
    refined = [(lab, a / b) for lab, a, b in pairs["refined_vs_kpp"] if np.isfinite(a) and np.isfinite(b)]
    missed = [(lab, r) for lab, r in refined if r > 1.0]
    if missed:
        worst = max(r for _, r in missed)
        kind = prose("missed.near_tie") if worst < 1.001 else prose("missed.real")
        lines.append(
            prose(
                "missed.refined",
                missed=len(missed),
                cells=", ".join(lab for lab, _ in missed),
                percent=f"{100 * (worst - 1):.2f}",
                kind=kind,
            )
        )
    if timing:
        alone = [t["em_kmeanspp"] / t[MODEL_METHOD] for t in timing.values()]
        lines.append(prose("missed.speed", low=f"{min(alone):.2f}", high=f"{max(alone):.2f}"))
    return lines + ([""] if lines else [])


def cluster_section(payload: dict, figure: str, previous: dict | None = None) -> list[str]:
    grid = payload.get("grid", {})
    config = payload.get("config", {})
    model = config.get("model", {})
    checkpoint = payload.get("checkpoint")
    intro = prose(
        "intro",
        figure=figure,
        workdir=payload["workdir"],
        step=payload.get("step"),
        checkpoint=prose("intro.checkpoint", checkpoint=checkpoint) if checkpoint else "",
        rank=model.get("project_rank"),
        backbone=model.get("backbone"),
        layers=model.get("num_layers"),
        width=model.get("width"),
        heads=model.get("num_heads"),
        iters=model.get("cluster_iters"),
        seeding=_seeding_text(payload),
        objective=config.get("objective"),
        resp_weight=config.get("resp_weight"),
        train_dims=tuple(config.get("train_dims", ())),
        tasks_per_k=config.get("tasks_per_k"),
        n_max=config.get("task", {}).get("n_max"),
        refined=REFINED,
        refine_steps=payload.get("refine_steps"),
        tasks_per_cell=payload.get("tasks_per_cell"),
    )
    out = [intro, ""]
    pairs = {name: [] for name in ("alone_vs_em", "alone_vs_kpp", "refined_vs_kpp", "restarts_vs_kpp")}
    for d, res in sorted(grid.items(), key=lambda kv: int(kv[0])):
        cells = res["cells"]
        out += [prose("dim", dim=d), "", _table(cells), ""]
        gains = _gain_table(cells)
        if gains:
            out += [f"{GAIN_TITLE}:", "", gains, ""]
        for k in sorted({c["K"] for c in cells}):
            label = f"d={d} K={k}"
            t, r = _mean(cells, MODEL_METHOD, k), _mean(cells, REFINED, k)
            em, kpp = _mean(cells, "em", k), _mean(cells, "em_kmeanspp", k)
            pairs["alone_vs_em"].append((label, t, em))
            if int(d) >= 8:
                pairs["alone_vs_kpp"].append((label, t, kpp))
            pairs["refined_vs_kpp"].append((label, r, kpp))
            pairs["restarts_vs_kpp"].append((label, _mean(cells, RESTARTS, k), kpp))
    targets = ["| target | holds in | verdict | margin |", "|---|---|---|---|"]
    if grid:
        targets.append(_verdict(pairs["alone_vs_em"], 1.0, prose("target.alone_vs_em")))
        targets.append(_verdict(pairs["alone_vs_kpp"], 2.0, prose("target.alone_vs_kpp")))
        refined = prose("target.refined_vs_kpp", refine_steps=payload.get("refine_steps"))
        targets.append(_verdict(pairs["refined_vs_kpp"], 1.0, refined))
        targets.append(
            _verdict(pairs["restarts_vs_kpp"], 1.0, prose("target.restarts_vs_kpp", restarts=RESTARTS))
        )
    timing = payload.get("timing", {})
    if timing:
        speed = [
            (f"d={d}", t["em_kmeanspp"] / t[REFINED])
            for d, t in sorted(timing.items(), key=lambda kv: int(kv[0]))
        ]
        ok = sum(s >= 5 for _, s in speed)
        slowest = min(speed, key=lambda x: x[1])
        targets.append(
            f"| {prose('target.speed', refined=REFINED)} | {ok} of {len(speed)} d | "
            f"{'met' if ok == len(speed) else 'NOT met'} | slowest {slowest[0]}: {slowest[1]:.2f}x |"
        )
    shift = payload.get("shift")
    if shift:
        cells = shift["cells"]
        ks = sorted({c["K"] for c in cells})
        shift_pairs = [(f"K={k}", _mean(cells, REFINED, k), _mean(cells, "em_kmeanspp", k)) for k in ks]
        targets.append(_verdict(shift_pairs, 1.5, prose("target.shift", shift=f"{shift['mean_shift']:g}")))
    out += [prose("targets"), "", *targets, ""]
    out += _gain_summary(grid)
    out += _why_missed(pairs, timing)
    if previous and grid:
        out += _previous_table(payload, previous)
    if timing:
        out += [
            prose("timing"),
            "",
            f"| d | tasks | {MODEL_METHOD} | {REFINED} | {RESTARTS} | em_kmeanspp | em_kmeanspp / {REFINED} | load |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for d, t in sorted(timing.items(), key=lambda kv: int(kv[0])):
            out.append(
                f"| {d} | {t['tasks']} | {t[MODEL_METHOD]:.3f} | {t[REFINED]:.3f} | {t.get(RESTARTS, float('nan')):.3f} | "
                f"{t['em_kmeanspp']:.3f} | {t['em_kmeanspp'] / t[REFINED]:.2f}x | {_load_text(t)} |"
            )
        out.append("")
    if shift:
        out += [
            prose("shift", shift=f"{shift['mean_shift']:g}"),
            "",
            _table(shift["cells"]),
            "",
        ]
        gains = _gain_table(shift["cells"])
        if gains:
            out += [f"{GAIN_TITLE}:", "", gains, ""]
    ablation = payload.get("ablation", [])
    if ablation:
        ks = sorted({c["K"] for c in ablation[0]["by_dim"]["8"]["cells"]})
        out += [
            prose("ablation"),
            "",
            "| stage | steps | "
            + " | ".join(f"d=8 K={k}" for k in ks)
            + " | "
            + " | ".join(f"d=32 K={k}" for k in ks)
            + " |",
            "|---" * (2 + 2 * len(ks)) + "|",
        ]
        for stage in ablation:
            row = [f"{stage['name']} (`{stage['workdir']}`)", str(stage["step"])]
            for d in ("8", "32"):
                cells = stage["by_dim"].get(d, {}).get("cells", [])
                row += [f"{_mean(cells, MODEL_METHOD, k):.3f}" if cells else "n/a (fixed d)" for k in ks]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    curves = payload.get("curves", {})
    if curves:
        out += [prose("curves"), ""]
        for name, curve in curves.items():
            pts = curve.get("points", [])
            if pts:
                text = "; ".join(
                    f"{p['minutes']:.1f} min: "
                    + "/".join(f"{v:.3f}" for _, v in sorted(p["l2"].items(), key=lambda kv: int(kv[0])))
                    for p in pts
                )
                out.append(f"- {name} (K = 2/3/4/5): {text}")
        out.append("")
    return out


def build(results: str, scale: str):
    cluster = load_json(os.path.join(results, "cluster_study.json"))
    if not cluster or scale != "cpu":
        return None
    previous = load_json(os.path.join(results, "cluster_study_farthest_init.json"))
    part = Part(sections=cluster_section(cluster, "cluster_study.png", previous))
    part.runs += [(cluster["workdir"], cluster["step"])] if "step" in cluster else []
    part.runs += [(stage["workdir"], stage["step"]) for stage in cluster.get("ablation", [])]
    return part
