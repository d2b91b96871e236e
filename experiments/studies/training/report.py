"""The REPORT sections of the training studies (depth x N, objectives, seeds), from their JSON.

Every number is read from ``depth_sample_size.json``, ``objectives_study.json`` and ``seeds_study.json``; the
verdicts are computed here with the rules stated beside them. The fixed prose is in ``report.md`` beside this
file.
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.studies.base import Part
from experiments.studies.base import prose as _prose
from experiments.studies.training.common import cell
from tgmm_jax.scoring import MODEL_METHOD

FALLS = 0.8  # "the error falls with N": l2 at the largest test N <= FALLS x l2 at the training N


def prose(name: str, **fields) -> str:
    return _prose(__file__, name, **fields)


def _side(ours: dict, baseline: dict) -> str:
    """'below', 'above', or 'tied' (means closer than their combined standard error) for two l2 summaries."""
    diff = ours["mean"] - baseline["mean"]
    if abs(diff) <= (ours["sem"] ** 2 + baseline["sem"] ** 2) ** 0.5:
        return "tied"
    return "below" if diff < 0 else "above"


def _load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _over_k(cells, method, metric="l2", **where):
    """Mean over K of the per-K means, and its sem (the per-K sems combined), or (nan, nan)."""
    found = [c for c in cells if c["method"] == method and all(c[k] == v for k, v in where.items())]
    found = [c for c in found if c["not_applicable"] < 1.0 and np.isfinite(c[metric]["mean"])]
    if not found:
        return float("nan"), float("nan")
    means = [c[metric]["mean"] for c in found]
    sems = [c[metric]["sem"] for c in found]
    return float(np.mean(means)), float(np.sqrt(np.sum(np.square(sems))) / len(sems))


def _fmt(mean, sem=None, digits=3):
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if sem is None else f"{mean:.{digits}f} ± {sem:.{digits}f}"


def _cell_text(c, metric="l2", digits=3):
    if c is None or c["not_applicable"] >= 1.0 or not np.isfinite(c[metric]["mean"]):
        return "n/a"
    text = _fmt(c[metric]["mean"], c[metric]["sem"], digits)
    return text + (f" [{c['not_applicable']:.0%} n/a]" if c["not_applicable"] > 0 else "")


def depth_section(p: dict, figure: str) -> list[str]:
    ns = p["test_n"]
    n_lo, n_hi = p["n_train"]
    layers = sorted(p["by_layers"], key=int)
    deepest = p["by_layers"][layers[-1]]["cells"]
    baselines = list(dict.fromkeys(c["method"] for c in deepest if c["method"] != MODEL_METHOD))
    intro = prose(
        "depth.intro",
        figure=figure,
        layers=", ".join(layers),
        dim=p["dim"],
        n_lo=n_lo,
        n_hi=n_hi,
        steps=p["steps"],
        test_n=", ".join(map(str, ns)),
        tasks_per_cell=p["tasks_per_cell"],
    )
    out = [
        intro,
        "",
        "| model | " + " | ".join(f"N={n}" for n in ns) + f" | l2(N={ns[-1]}) / l2(N={n_hi}) |",
        "|---" * (len(ns) + 2) + "|",
    ]
    ratios = {}
    for L in layers:
        res = p["by_layers"][L]
        ratios[L] = res["trend"]["geomean"]
        row = [_fmt(*_over_k(res["cells"], MODEL_METHOD, N=n)) for n in ns]
        out.append(f"| TGMM L={L} | " + " | ".join(row) + f" | {ratios[L]:.2f} |")
    for m in baselines:
        row = [_fmt(*_over_k(deepest, m, N=n)) for n in ns]
        out.append(f"| {m} | " + " | ".join(row) + f" | {p['baseline_trend'][m]['geomean']:.2f} |")
    out += ["", prose("depth.ratio", n_max=ns[-1], n_hi=n_hi, known_labels=f"{n_hi / ns[-1]:.3f}"), ""]
    falls = {L: r <= FALLS for L, r in ratios.items() if np.isfinite(r)}
    shallow, deep = layers[0], [L for L in layers if L != layers[0]]
    best = min(layers, key=lambda L: _over_k(p["by_layers"][L]["cells"], MODEL_METHOD, N=n_hi)[0])
    em_at_train = _over_k(deepest, "em", N=n_hi)[0]
    best_at_train = _over_k(p["by_layers"][best]["cells"], MODEL_METHOD, N=n_hi)[0]
    undertrained = np.isfinite(em_at_train) and best_at_train >= em_at_train
    verdict = (
        prose("depth.inconclusive", best=f"{best_at_train:.2f}", em=f"{em_at_train:.2f}")
        if undertrained
        else "holds"
        if not falls.get(shallow, True) and all(falls.get(L, False) for L in deep)
        else "partly holds"
        if any(falls.values()) and not falls.get(shallow, True)
        else "does not hold"
    )
    text = prose(
        "depth.verdict",
        falls=FALLS,
        shallow=shallow,
        verdict=verdict,
        falling=", ".join(L for L, f in falls.items() if f) or "none",
        flat=", ".join(L for L, f in falls.items() if not f) or "none",
        n_hi=n_hi,
        best=best,
    )
    out += [text, ""]
    return out


def objectives_section(p: dict, figure: str) -> list[str]:
    objectives = list(p["by_objective"])
    ks = p["ks"]
    baselines = list(dict.fromkeys(c["method"] for c in p["baselines"]))

    def name(o):
        step = p["by_objective"][o]["step"]
        return f"TGMM({o})" + ("" if step == p["steps"] else f" [stopped at step {step}]")

    rows = [(name(o), p["by_objective"][o]["cells"], MODEL_METHOD) for o in objectives]
    rows += [(m, p["baselines"], m) for m in baselines]
    intro = prose(
        "objectives.intro",
        figure=figure,
        dim=p["dim"],
        n=p["n"],
        seed=p["seed"],
        steps=p["steps"],
        tasks_per_cell=p["tasks_per_cell"],
    )
    out = [intro, ""]
    missing = [o for o in ("est", "est_matched", "lik", "est+lik") if o not in objectives]
    if missing:
        out += [prose("objectives.missing", missing="), TGMM(".join(missing)), ""]
    for metric, digits in (("l2", 3), ("loglik", 3), ("cluster_acc", 3)):
        out += [
            prose(f"objectives.{metric}"),
            "",
            "| method | " + " | ".join(f"K={k}" for k in ks) + " | mean over K |",
        ]
        out.append("|---" * (len(ks) + 2) + "|")
        for label, cells, method in rows:
            texts = [_cell_text(cell(cells, method, K=k), metric, digits) for k in ks]
            out.append(
                f"| {label} | " + " | ".join(texts) + f" | {_fmt(_over_k(cells, method, metric)[0])} |"
            )
        out.append("")
    mean = {
        o: {
            m: _over_k(p["by_objective"][o]["cells"], MODEL_METHOD, m)[0]
            for m in ("l2", "loglik", "cluster_acc")
        }
        for o in objectives
    }
    base = {m: _over_k(p["baselines"], m, "loglik")[0] for m in baselines}
    if {"est", "lik"} <= set(mean):
        checks = [
            (prose("objectives.check.lik_loglik"), mean["lik"]["loglik"] > mean["est"]["loglik"]),
            *[
                (prose("objectives.check.lik_loglik_baseline", baseline=m), mean["lik"]["loglik"] > v)
                for m, v in base.items()
                if np.isfinite(v)
            ],
            (prose("objectives.check.lik_l2"), mean["lik"]["l2"] > mean["est"]["l2"]),
            (
                prose("objectives.check.lik_cluster_acc"),
                mean["lik"]["cluster_acc"] < mean["est"]["cluster_acc"],
            ),
        ]
        if "est+lik" in mean:
            lo, hi = sorted((mean["est"]["loglik"], mean["lik"]["loglik"]))
            checks.append((prose("objectives.check.balance_loglik"), lo <= mean["est+lik"]["loglik"] <= hi))
            lo, hi = sorted((mean["est"]["l2"], mean["lik"]["l2"]))
            checks.append((prose("objectives.check.balance_l2"), lo <= mean["est+lik"]["l2"] <= hi))
        est_curve = p["by_objective"]["est"]["curve"]
        if est_curve:
            first, last = (np.mean(list(est_curve[i]["l2"].values())) for i in (0, -1))
            budget = prose(
                "objectives.est_budget",
                first=f"{first:.2f}",
                first_step=est_curve[0]["step"],
                last=f"{last:.2f}",
                last_step=est_curve[-1]["step"],
            )
            out += [budget, ""]
        out += [
            prose("objectives.checks"),
            "",
            "| part of the claim | ours |",
            "|---|---|",
            *[f"| {text} | {'yes' if ok else 'no'} |" for text, ok in checks],
            "",
        ]
    curves = {o: p["by_objective"][o]["curve"] for o in objectives}
    steps = sorted({pt["step"] for c in curves.values() for pt in c})
    if steps:
        out += [
            prose("objectives.curves", n=p["n"]),
            "",
            "| objective | " + " | ".join(f"step {s}" for s in steps) + " |",
            "|---" * (len(steps) + 1) + "|",
        ]
        for o, curve in curves.items():
            by_step = {pt["step"]: np.mean(list(pt["l2"].values())) for pt in curve}
            out.append(
                f"| TGMM({o}) | " + " | ".join(_fmt(by_step.get(s, float("nan"))) for s in steps) + " |"
            )
        out.append("")
        reach = p.get("reach_est_final")
        if reach:
            never = prose("objectives.never", steps=p["steps"])
            text = ", ".join(f"{o}: {never if s is None else f'step {s}'}" for o, s in reach["steps"].items())
            out += [prose("objectives.reach", level=f"{reach['level']:.3f}", steps=text), ""]
    return out


def seeds_section(p: dict, figure: str) -> list[str]:
    out = [prose("seeds.intro", figure=figure, tasks_per_cell=p["tasks_per_cell"]), ""]
    if "cluster" not in p["parts"]:
        out += [prose("seeds.cluster_not_run"), ""]
    for name, part in p["parts"].items():
        steps = p["paper_steps"] if name == "paper" else p["cluster_steps"]
        if name == "paper":
            heading = prose("seeds.heading.paper", d=part["d"], n=part["N"], steps=steps)
        else:
            reduced = "" if steps >= 1000 else " " + prose("seeds.heading.cluster.reduced")
            heading = prose("seeds.heading.cluster", steps=steps, reduced=reduced)
        ks = part["ks"]
        out += [
            heading,
            "",
            prose("seeds.per_seed", tasks_per_cell=p["tasks_per_cell"]),
            "",
            "| K | "
            + " | ".join(f"seed {r['seed']}" for r in part["runs"])
            + " | mean across seeds | std across seeds | min-max | std / within-seed sem |",
            "|---" * (len(part["runs"]) + 5) + "|",
        ]
        for k in ks:
            s = part["spread"][str(k)]
            per_seed = [_cell_text(cell(r["cells"], MODEL_METHOD, K=k)) for r in part["runs"]]
            out.append(
                f"| {k} | "
                + " | ".join(per_seed)
                + f" | {s['l2']['mean']:.3f} | {s['l2']['std']:.3f} | {s['l2']['min']:.3f}-{s['l2']['max']:.3f} |"
                f" {s['l2']['std'] / s['l2_sem_within_seed']:.1f} |"
            )
        baselines = list(dict.fromkeys(c["method"] for c in part["baselines"]))
        out += ["", "| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
        for m in baselines:
            out.append(
                f"| {m} | " + " | ".join(_cell_text(cell(part["baselines"], m, K=k)) for k in ks) + " |"
            )
        out += [
            "",
            prose("seeds.orderings"),
            "",
        ]
        out += ["| baseline | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
        for m in baselines:
            row = []
            for k in ks:
                b = cell(part["baselines"], m, K=k)
                if b is None or b["not_applicable"] >= 1.0:
                    row.append("n/a")
                    continue
                sides = [_side(cell(r["cells"], MODEL_METHOD, K=k)["l2"], b["l2"]) for r in part["runs"]]
                n = len(sides)
                counts = {side: sides.count(side) for side in ("below", "tied", "above") if side in sides}
                row.append(
                    f"{next(iter(counts))} in all"
                    if len(counts) == 1
                    else ", ".join(f"{side} in {c}" for side, c in counts.items()) + f" of {n}"
                )
            out.append(f"| {m} | " + " | ".join(row) + " |")
        job = [part["spread"][str(k)]["training_job_l2"] for k in ks]
        if all(v is not None for vs in job for v in vs):
            prints = "; ".join(
                f"seed {r['seed']}: " + " / ".join(f"{job[i][j]:.3f}" for i in range(len(ks)))
                for j, r in enumerate(part["runs"])
            )
            factors = " / ".join(f"{max(vs) / min(vs):.2f}" for vs in job)
            out += ["", prose("seeds.job_prints", prints=prints, factors=factors)]
        rel = [part["spread"][str(k)]["l2"] for k in ks]
        spread = prose(
            "seeds.spread",
            factors=" / ".join(f"{s['max'] / s['min']:.2f}" for s in rel),
            ks="/".join(map(str, ks)),
            sems=" / ".join(f"{part['spread'][str(k)]['l2_sem_within_seed']:.3f}" for k in ks),
        )
        out += ["", spread, ""]
    return out


def training_studies_sections(results_dir: str) -> tuple[list[str], list[tuple[str, int]]]:
    """The sections of whichever of the three studies has saved JSON, and the (workdir, step) of their runs."""
    sections, runs = [], []
    depth = _load(os.path.join(results_dir, "depth_sample_size.json"))
    if depth:
        sections += depth_section(depth, "depth_sample_size.png")
        runs += [(r["workdir"], r["step"]) for r in depth["by_layers"].values()]
    objectives = _load(os.path.join(results_dir, "objectives_study.json"))
    if objectives:
        sections += objectives_section(objectives, "objectives_study.png")
        runs += [(r["workdir"], r["step"]) for r in objectives["by_objective"].values()]
    seeds = _load(os.path.join(results_dir, "seeds_study.json"))
    if seeds:
        sections += seeds_section(seeds, "seeds_study.png")
        runs += [(r["workdir"], r["step"]) for part in seeds["parts"].values() for r in part["runs"]]
    return sections, runs


def build(results: str, scale: str):
    if scale != "cpu":
        return None
    sections, runs = training_studies_sections(results)
    return Part(sections=sections, runs=runs)
