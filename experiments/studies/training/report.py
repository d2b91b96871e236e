"""The REPORT sections of the training studies (depth x N, objectives, seeds), from their JSON.

Every number is read from ``depth_sample_size.json``, ``objectives_study.json`` and ``seeds_study.json``; the
verdicts are computed here with the rules stated beside them.
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.studies.base import Part
from experiments.studies.training.common import cell
from tgmm_jax.scoring import MODEL_METHOD

FALLS = 0.8  # "the error falls with N": l2 at the largest test N <= FALLS x l2 at the training N


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
    out = [
        "## Depth x sample size (rebuttal Tables 1 and 3)",
        f"![depth x N]({figure})",
        "",
        (
            "**The paper's claim** (rebuttal to Reviewer 4R4H, Table 1; to Reviewer YKHK, Table 3): a deep enough"
            " TGMM, trained on a range of N, has an error that keeps falling as the test N grows, beyond the training"
            " N too; without proper depth the errors do not shrink as N grows, and a 1-layer TGMM is poor. (The"
            " rebuttal's d, K, depths and N range are symbols lost from our stored copy of the text, so the setting"
            " below is ours.)"
        ),
        "",
        (
            f"**Ours** (`python -m experiments.studies.training.depth`): one model per depth L in {{{', '.join(layers)}}}, the"
            f" tiny recipe at the `tiny` width (set backbone, width 32, 2 heads, est_matched, Adam 2e-3, 16 tasks"
            f" per K), d = {p['dim']}, K = 2..5, trained on N in [{n_lo}, {n_hi}] for {p['steps']} steps each;"
            f" tested at N = {', '.join(map(str, ns))} on the same {p['tasks_per_cell']} fresh tasks per (K, N)."
            f" Deviations from the paper: CPU scale ({p['steps']} steps, not 100k; width 32, not 128; depths"
            " up to 6 where the rebuttal went to 12, as the deeper models did not fit the CPU budget); the set"
            " backbone instead of the causal GPT-2, because GPT-2's learned position rows beyond the training N are"
            " never trained (ours would run at N = 512, `max_positions` = 4096, but on untrained positions), while"
            " the set backbone has no positions."
        ),
        "",
        "l2 error (mean over K = 2..5 of the per-K means ± combined sem):",
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
    out += [
        "",
        (
            f"The last column is the geometric mean over K of l2(N = {ns[-1]}) / l2(N = {n_hi}); with the labels"
            f" known the means' error would fall as 1/N, a ratio of {n_hi / ns[-1]:.3f}."
        ),
        "",
    ]
    falls = {L: r <= FALLS for L, r in ratios.items() if np.isfinite(r)}
    shallow, deep = layers[0], [L for L in layers if L != layers[0]]
    best = min(layers, key=lambda L: _over_k(p["by_layers"][L]["cells"], MODEL_METHOD, N=n_hi)[0])
    em_at_train = _over_k(deepest, "em", N=n_hi)[0]
    best_at_train = _over_k(p["by_layers"][best]["cells"], MODEL_METHOD, N=n_hi)[0]
    undertrained = np.isfinite(em_at_train) and best_at_train >= em_at_train
    verdict = (
        "inconclusive: no depth beats EM with the official initialisation even at the training N"
        f" ({best_at_train:.2f} against {em_at_train:.2f}), so the models are undertrained and a flat curve says"
        " nothing about depth"
        if undertrained
        else "holds"
        if not falls.get(shallow, True) and all(falls.get(L, False) for L in deep)
        else "partly holds"
        if any(falls.values()) and not falls.get(shallow, True)
        else "does not hold"
    )
    out += [
        (
            f'**Verdict** (rule: the error "falls with N" where the ratio is <= {FALLS}; the claim holds when it'
            f" falls for every L > {shallow} and not for L = {shallow}; inconclusive where no depth beats EM's official"
            f" initialisation at the training N): **{verdict}**, at this scale. The error falls"
            f" with N for L = {', '.join(L for L, f in falls.items() if f) or 'none'}; it does not for L ="
            f" {', '.join(L for L, f in falls.items() if not f) or 'none'}. The lowest in-distribution error"
            f" (N = {n_hi}) is at L = {best}."
        ),
        "",
    ]
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
    out = [
        "## Objectives: est, est_matched, lik, est+lik (rebuttal Table 3 to Reviewer TJ7f)",
        f"![objectives]({figure})",
        "",
        (
            "**The paper's claim** (rebuttal, Table 3): training on the observed log-likelihood (TGMM(lik))"
            " significantly improves the test log-likelihood, surpassing EM and spectral, while its parameter"
            " estimation and cluster recovery deteriorate against TGMM(est); est+lik strikes a balance between the"
            " two. Ours adds est_matched, the permutation-matched loss of our CPU recipe."
        ),
        "",
        (
            f"**Ours** (`python -m experiments.studies.training.objectives`): the paper's architecture at CPU size"
            f" (`tiny.py:d={p['dim']},n={p['n']}`: set backbone 2 layers x 64, Adam 2e-3, 16 tasks per K; the"
            f" objective switch of `lik.py`, whose paper-size model does not fit a CPU budget), seed {p['seed']},"
            f" {p['steps']} steps per objective (the paper: 100k), the same data stream for all; evaluated on the"
            f" same {p['tasks_per_cell']} fresh tasks per K at N = {p['n']}. log-likelihood is the mean per point"
            " under the estimate (the true parameters' value minus `oracle_gap`)."
        ),
        "",
    ]
    missing = [o for o in ("est", "est_matched", "lik", "est+lik") if o not in objectives]
    if missing:
        out += [
            (
                f"**Not evaluated:** TGMM({'), TGMM('.join(missing)}): not trained to the budget (rerun the"
                " command above; training resumes)."
            ),
            "",
        ]
    for metric, title, digits in (
        ("l2", "aligned l2 error", 3),
        ("loglik", "log-likelihood per point (higher is better)", 3),
        ("cluster_acc", "cluster accuracy", 3),
    ):
        out += [
            f"{title}, mean ± sem:",
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
            (
                "TGMM(lik) has a higher log-likelihood than TGMM(est)",
                mean["lik"]["loglik"] > mean["est"]["loglik"],
            ),
            *[
                (f"TGMM(lik) has a higher log-likelihood than {m}", mean["lik"]["loglik"] > v)
                for m, v in base.items()
                if np.isfinite(v)
            ],
            ("TGMM(lik) has a larger l2 than TGMM(est)", mean["lik"]["l2"] > mean["est"]["l2"]),
            (
                "TGMM(lik) has a lower cluster accuracy than TGMM(est)",
                mean["lik"]["cluster_acc"] < mean["est"]["cluster_acc"],
            ),
        ]
        if "est+lik" in mean:
            lo, hi = sorted((mean["est"]["loglik"], mean["lik"]["loglik"]))
            checks.append(
                (
                    "TGMM(est+lik)'s log-likelihood lies between est's and lik's",
                    lo <= mean["est+lik"]["loglik"] <= hi,
                )
            )
            lo, hi = sorted((mean["est"]["l2"], mean["lik"]["l2"]))
            checks.append(
                ("TGMM(est+lik)'s l2 lies between est's and lik's", lo <= mean["est+lik"]["l2"] <= hi)
            )
        est_curve = p["by_objective"]["est"]["curve"]
        if est_curve:
            first, last = (np.mean(list(est_curve[i]["l2"].values())) for i in (0, -1))
            out += [
                (
                    f"At this budget TGMM(est)'s l2 (mean over K) only fell from {first:.2f} (step"
                    f" {est_curve[0]['step']}) to {last:.2f} (step {est_curve[-1]['step']}): every comparison with it"
                    " measures learning speed more than where each objective ends after the paper's 100k steps."
                ),
                "",
            ]
        out += [
            "Each part of the claim, on the means over K above (a part holds or not at this scale and budget):",
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
            (
                "Learning curves: l2 (mean over K) of the periodic evaluations during training (the same 32 tasks"
                f" per K at N = {p['n']} every round, from each run's metrics.jsonl):"
            ),
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
            never = f"not within {p['steps']} steps"
            text = ", ".join(f"{o}: {never if s is None else f'step {s}'}" for o, s in reach["steps"].items())
            out += [
                f"First evaluated step at which each reaches TGMM(est)'s last l2 ({reach['level']:.3f}): {text}.",
                "",
            ]
    return out


def seeds_section(p: dict, figure: str) -> list[str]:
    out = [
        "## Seeds and machines: the headline cells with several training seeds",
        f"![seeds]({figure})",
        "",
        (
            "**The question**: the README's main job printed different numbers on different machines (a"
            " fresh clone printed 0.47 / 0.82 / 1.15 / 1.48 for TGMM at K = 2..5 with the older README job, the"
            " paper architecture at d = 2, against 0.27 / 0.55 / 0.91 / 1.64 in an earlier note: those two runs"
            " differ by -10% to +74% per K; we did not rerun them). The same seed on another machine follows another"
            " trajectory (float rounding in XLA's CPU kernels differs), so training seeds measure that spread. Here"
            " each headline model is trained with several seeds and evaluated on the same"
            f" {p['tasks_per_cell']} fresh tasks per K (`python -m experiments.studies.training.seeds`)."
        ),
        "",
    ]
    if "cluster" not in p["parts"]:
        out += [
            (
                "**Not run: the README's main job (`cluster.py`) with several seeds.** On the 2-core CPU of"
                " these runs, under a load average of 20-40 from other jobs, one seed of `cluster.py:steps=300` had not"
                " logged its 50th step after 16 minutes (the step's compilation alone took minutes), so the three"
                " seeds, let alone three 1000-step runs, did not fit; `python -m experiments.studies.training.seeds"
                " --parts=cluster --cluster_steps=1000` runs them (6-9 minutes per 1000-step seed on an idle 2-core CPU)."
                " The README's wording rests on the spread measured here for the paper architecture and on the two"
                " runs of the older job quoted above."
            ),
            "",
        ]
    for name, part in p["parts"].items():
        steps = p["paper_steps"] if name == "paper" else p["cluster_steps"]
        what = (
            f"the paper's architecture at CPU size, `tiny.py:d={part['d']},n={part['N']}` with {steps} steps"
            " (the shipped `paper_d8` has 3000; the budget here is reduced)"
            if name == "paper"
            else f"the README's main job, `cluster.py:steps={steps}`"
            + ("" if steps >= 1000 else " (the README runs 1000 steps; the budget here is reduced)")
        )
        ks = part["ks"]
        out += [
            f"### {'Paper architecture' if name == 'paper' else 'Clustering TGMM (README job)'}: {what}",
            "",
            (
                f"TGMM l2 per seed (mean ± sem over {p['tasks_per_cell']} tasks), across seeds (mean, std, min-max), and"
                " the baselines on the same tasks:"
            ),
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
            (
                "Orderings against the baselines that every seed shares (TGMM's l2 below or above the baseline's;"
                " 'tied' where the two means differ by less than their combined standard error):"
            ),
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
            out += [
                "",
                "What the training job itself printed at its last evaluation (its own 32 or 64 tasks per K, drawn"
                " from each seed's own key), per seed: "
                + "; ".join(
                    f"seed {r['seed']}: " + " / ".join(f"{job[i][j]:.3f}" for i in range(len(ks)))
                    for j, r in enumerate(part["runs"])
                )
                + ". These prints vary between seeds by a factor max/min of "
                + " / ".join(f"{max(vs) / min(vs):.2f}" for vs in job)
                + " (the two runs of the older README job: 1.74 / 1.49 / 1.26 / 1.11), more than the evaluation on"
                " the larger, shared task set below: a print on a few dozen tasks per K adds task sampling noise to"
                " the seed spread.",
            ]
        rel = [part["spread"][str(k)]["l2"] for k in ks]
        out += [
            "",
            (
                "Across seeds, TGMM's l2 varies by a factor max/min of "
                + " / ".join(f"{s['max'] / s['min']:.2f}" for s in rel)
                + f" at K = {'/'.join(map(str, ks))}, against a within-seed sem of "
                + " / ".join(f"{part['spread'][str(k)]['l2_sem_within_seed']:.3f}" for k in ks)
                + ". Claims worded to survive it: an ordering against a baseline only where the table above says"
                " 'in all' seeds, and single-run numbers quoted as one run's, with the seed spread beside them."
            ),
            "",
        ]
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
