"""The REPORT section of the how-many-clusters study (``experiments/studies/k_posterior/run.py``), from its JSON.

``k_posterior_section(saved, figure, reliability_figure)`` returns the section's markdown lines; the figure
paths are as the report should link them (relative to the report). The fixed prose is in ``report.md`` beside
this file.
"""

from __future__ import annotations

import os

from experiments.studies.base import Part, load_json
from experiments.studies.base import prose as _prose

METHODS = (
    "model",
    "model_all",
    "ablation",
    "ablation_all",
    "bic",
    "aic",
    "bgm",
    "bic_raw",
    "aic_raw",
    "model_noise",
    "bic_known",
)
LABELS = {
    "model": "learned P(K|X)",
    "model_all": "learned, all points",
    "ablation": "learned, set network alone",
    "ablation_all": "set network alone, all points",
    "bic": "BIC",
    "aic": "AIC",
    "bgm": "BayesianGMM",
    "bic_raw": "BIC, collapsed kept",
    "aic_raw": "AIC, collapsed kept",
    "bic_softmax": "BIC-softmax",
    "model_noise": "learned, noise known",
    "bic_known": "BIC, noise known",
    "bic_known_softmax": "BIC-softmax, noise known",
    "bayes": "Bayes (AIS)",
}


def prose(name: str, **fields) -> str:
    return _prose(__file__, name, **fields)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x, fmt=".3f") -> str:
    return "–" if x is None else format(x, fmt)


def _network(cfg: dict) -> str:
    """What a run's network reads, from its training config."""
    if not cfg.get("evidence_restarts"):
        return prose("set_alone")
    return prose("with_evidence", restarts=cfg["evidence_restarts"], steps=cfg.get("evidence_steps", "–"))


def _stage_budget(run: dict) -> tuple[int, int] | None:
    """(steps, tasks per batch) of a run's last stage, from its training config (None where it lacks them)."""
    if not all(key in run for key in ("steps", "tasks_per_k", "k_max")):
        return None
    return int(run["steps"]), int(run["tasks_per_k"]) * int(run["k_max"])


def _runs(s: dict) -> str:
    """Which trained run each learned column is, from the study's settings, after a space (empty for a JSON
    without them)."""
    runs = s.get("runs", {})
    if "model" not in runs:
        return ""
    model = runs["model"]
    text = prose(
        "model_run",
        workdir=s["workdir"],
        steps=model.get("steps", "–"),
        start=" " + prose("started_from", init_from=model["init_from"]) if model.get("init_from") else "",
    )
    if "ablation" in runs:
        ablation = runs["ablation"]
        text += " " + prose(
            "ablation_run",
            workdir=s["ablation_workdir"],
            network=_network(ablation),
            steps=ablation.get("steps", "–"),
            start=" " + prose("started_from", init_from=ablation["init_from"])
            if ablation.get("init_from")
            else "",
        )
        if model.get("init_from") == s["ablation_workdir"]:
            text += " " + prose("model_from_ablation", steps=model.get("steps", "–"))
        budgets = [_stage_budget(run) for run in (model, ablation)]
        if None not in budgets and budgets[0] != budgets[1]:
            (m_steps, m_batch), (a_steps, a_batch) = budgets
            text += " " + prose(
                "unequal_budget",
                model_tasks=m_steps * m_batch,
                model_steps=m_steps,
                model_batch=m_batch,
                ablation_tasks=a_steps * a_batch,
                ablation_steps=a_steps,
                ablation_batch=a_batch,
            )
    return " " + text


def k_posterior_section(
    saved: dict,
    figure: str = "k_posterior/k_posterior.png",
    reliability_figure: str = "k_posterior/k_posterior_reliability.png",
) -> list[str]:
    s, summary, targets = saved["settings"], saved["summary"], saved.get("targets", {})
    dims, ns = s["dims"], s["ns"]
    present = [m for m in METHODS if any(m in c["accuracy"] for c in saved["cells"])]
    model_cfg = s.get("runs", {}).get("model", {})
    intro = prose(
        "intro",
        figure=figure,
        evidence=(
            " "
            + prose(
                "evidence",
                restarts=model_cfg["evidence_restarts"],
                steps=model_cfg.get("evidence_steps", "–"),
            )
            if model_cfg.get("evidence_restarts")
            else ""
        ),
        training=(
            prose(
                "training_range",
                n_min=model_cfg["n_min"],
                n_max=model_cfg["n_max"],
                dims=", ".join(str(d) for d in model_cfg["dims"]),
            )
            if {"n_min", "n_max", "dims"} <= model_cfg.keys()
            else ""
        ),
        runs=_runs(s),
        seed=s.get("seed"),
        tasks_per_cell=s["tasks_per_cell"],
        n_init=s.get("n_init", 10),
        bgm_threshold=s["bgm_threshold"],
        reads_at_most=s["model_reads_at_most"],
    )
    out = [
        intro,
        "",
        "| D | N | " + " | ".join(LABELS[m] for m in present) + " |",
        "|---|---|" + "---|" * len(present),
    ]
    for d in dims:
        for n in ns:
            row = summary["accuracy_by_dn"].get(f"d{d}_n{n}", {})
            out.append(f"| {d} | {n} | " + " | ".join(_pct(row.get(m)) for m in present) + " |")
    out.append(
        "| all | ≤ 128 | " + " | ".join(_pct(summary["accuracy_n_le_128"].get(m)) for m in present) + " |"
    )
    out.append("| all | all | " + " | ".join(_pct(summary["accuracy"].get(m)) for m in present) + " |")
    ll, ll_s = summary["logloss"], summary.get("logloss_n_le_128", {})
    rel = saved.get("reliability", {})
    scored = [m for m in ("model", "ablation") if m in present] + ["bic_softmax"]
    scored += [m for m in ("model_noise", "bic_known_softmax") if ll.get(m) is not None]

    def row(name, values):
        return f"| {name} | " + " | ".join(_num(v) for v in values) + " |"

    out += [
        "",
        "| | " + " | ".join(LABELS[m] for m in scored) + " |",
        "|---|" + "---|" * len(scored),
        row("log-loss of the true K, all cells", [ll.get(m) for m in scored]),
        row("log-loss of the true K, N ≤ 128", [ll_s.get(m) for m in scored]),
        row("expected calibration error of the top K (10 bins)", [rel.get(m, {}).get("ece") for m in scored]),
        "",
        prose(
            "k1_rate",
            rates=", ".join(f"{LABELS[m]} {_pct(summary['k1_rate'].get(m))}" for m in present),
        ),
        "",
        prose(
            "bgm_thresholds",
            accuracies=", ".join(
                f"{t:.3g}: {_pct(summary['accuracy'].get(f'bgm@{t:.3g}'))}"
                for t in s["bgm_thresholds_sensitivity"]
            ),
        ),
        "",
        prose("reliability", figure=reliability_figure),
        "",
    ]
    out += bayes_lines(saved)
    if targets:
        a = targets["accuracy_beats_bic_by_10_points_n_le_128"]
        lo = targets["logloss_beats_bic_softmax"]
        k1 = targets["k1_answers_1_at_least_95pct"]

        def verdict(t):
            return prose("met") if t["met"] else prose("not_met")

        se, tasks = accuracy_gap_se(saved["cells"], "model", "bic", max_n=128)
        text = prose(
            "targets",
            accuracy_gain=f"{100 * a['model_minus_bic']:+.1f}",
            accuracy_se=f"{100 * se:.1f}",
            accuracy_tasks=tasks,
            accuracy=verdict(a),
            logloss=f"{lo['model']:.3f}",
            logloss_bic=f"{lo['bic_softmax']:.3f}",
            logloss_verdict=verdict(lo),
            k1=_pct(k1["model"]),
            k1_verdict=verdict(k1),
        )
        out += [text, ""]
    if "noise_known_accuracy_beats_bic_by_10_points_n_le_128" in targets:
        out += [noise_known_targets(saved), ""]
    return out


def noise_known_targets(saved: dict) -> str:
    """The targets met by the model told the noise variance, against BIC (the issue's) and BIC told it too."""
    targets = saved["targets"]
    a = targets["noise_known_accuracy_beats_bic_by_10_points_n_le_128"]
    lo = targets["noise_known_logloss_beats_bic_softmax"]
    k1 = targets["noise_known_k1_answers_1_at_least_95pct"]
    se, tasks = accuracy_gap_se(saved["cells"], "model_noise", "bic", max_n=128)
    se_known, _ = accuracy_gap_se(saved["cells"], "model_noise", "bic_known", max_n=128)
    known = a.get("model_noise_minus_bic_known")
    return prose(
        "targets_noise_known",
        accuracy_gain=f"{100 * a['model_noise_minus_bic']:+.1f}",
        accuracy_se=f"{100 * se:.1f}",
        accuracy_tasks=tasks,
        accuracy=prose("met") if a["met"] else prose("not_met"),
        known_gain="–" if known is None else f"{100 * known:+.1f} ± {100 * se_known:.1f}",
        logloss=f"{lo['model_noise']:.3f}",
        logloss_bic=f"{lo['bic_softmax']:.3f}",
        logloss_known="–"
        if saved["summary"]["logloss"].get("bic_known_softmax") is None
        else f"{saved['summary']['logloss']['bic_known_softmax']:.3f}",
        logloss_verdict=prose("met") if lo["met"] else prose("not_met"),
        k1=_pct(k1["model_noise"]),
        k1_verdict=prose("met") if k1["met"] else prose("not_met"),
    )


def accuracy_gap_se(cells: list[dict], a: str, b: str, max_n: int) -> tuple[float, int]:
    """(standard error of mean-over-cells accuracy(a) - accuracy(b), tasks) over the cells with n <= max_n:
    each cell's accuracies as independent binomials over its tasks, the two methods unpaired."""
    chosen = [c for c in cells if c["n"] <= max_n and a in c["accuracy"] and b in c["accuracy"]]
    var = (
        sum(sum(c["accuracy"][m] * (1 - c["accuracy"][m]) / c["tasks"] for m in (a, b)) for c in chosen)
        / len(chosen) ** 2
    )
    return var**0.5, sum(c["tasks"] for c in chosen)


def bayes_lines(saved: dict) -> list[str]:
    """The Bayes posterior (AIS, baselines/bayes_k.py) against the others on the tasks it was computed on."""
    bayes = saved["summary"].get("bayes")
    if not bayes:
        return []
    config = saved["settings"].get("bayes", {})
    methods = [
        m
        for m in ("bayes", "model", "ablation", "model_noise", "bic", "bic_known", "aic", "bgm")
        if m in bayes["all"]["accuracy"]
    ]
    learned = [m for m in ("model", "ablation", "model_noise") if m in methods]
    short = {"model": "learned", "ablation": "set network alone", "model_noise": "learned, noise known"}
    rows = [(key.replace("d", "").replace("_n", " | "), v) for key, v in bayes["by_dn"].items()]
    rows.append(
        (
            "all | " + ", ".join(str(n) for n in sorted({c["n"] for c in saved["cells"] if "bayes" in c})),
            bayes["all"],
        )
    )
    out = [
        prose(
            "bayes",
            tasks=config.get("tasks", "–"),
            particles=config.get("particles", "–"),
            temperatures=config.get("temperatures", "–"),
            beta_min=config.get("beta_min", "–"),
        ),
        "",
        "| D | N | tasks | "
        + " | ".join(f"{LABELS[m]} acc." for m in methods)
        + " | agrees with Bayes: "
        + " / ".join([short[m] for m in learned] + ["BIC"])
        + " | log-loss: "
        + " / ".join(["Bayes"] + [short[m] for m in learned] + ["BIC-softmax"])
        + "".join(f" | KL(Bayes ‖ {short[m]})" for m in learned)
        + " | KL(Bayes ‖ BIC-softmax) |",
        "|---|---|---|" + "---|" * len(methods) + "---|---|" + "---|" * (len(learned) + 1),
    ]
    for label, v in rows:
        agree, ll, kl = v["agrees_with_bayes"], v["logloss"], v["kl_from_bayes"]
        ks = v.get("true_ks")
        partial = f" (K {ks[0]}-{ks[-1]})" if ks and len(ks) < 8 else ""
        out.append(
            f"| {label} | {v['tasks']}{partial} | "
            + " | ".join(_pct(v["accuracy"].get(m)) for m in methods)
            + " | "
            + " / ".join(_pct(agree.get(m)) for m in [*learned, "bic"])
            + " | "
            + " / ".join(_num(ll.get(m)) for m in ["bayes", *learned, "bic_softmax"])
            + "".join(f" | {_num(kl.get(m))}" for m in [*learned, "bic_softmax"])
            + " |"
        )
    checks = "; ".join(
        f"D = {key[1:].split('_n')[0]}, N = {key.split('_n')[1]}: "
        + ", ".join(f"{p:.3f}" for p in v["mean_posterior"])
        for key, v in bayes["by_dn"].items()
        if "mean_posterior" in v
    )
    out += ["", prose("bayes_reading"), ""]
    beaten = _beats_bayes(bayes["by_dn"], methods)
    out += [prose("bayes_beaten", cells=beaten), ""] if beaten else []
    return out + ([prose("bayes_check", checks=checks), ""] if checks else [])


def _beats_bayes(by_dn: dict, methods: list) -> str:
    """The (D, N) rows where a method has a higher K accuracy or a lower log-loss than the Bayes column."""
    rows = []
    for key, v in by_dn.items():
        acc, ll = v["accuracy"], v["logloss"]
        found = []
        for m in methods[1:] + ["bic_softmax"]:
            if acc.get(m) is not None and m != "bic_softmax" and acc[m] > acc["bayes"]:
                found.append(f"{LABELS[m]} accuracy {_pct(acc[m])} against {_pct(acc['bayes'])}")
            if ll.get(m) is not None and ll[m] < ll["bayes"]:
                found.append(f"{LABELS[m]} log-loss {_num(ll[m])} against {_num(ll['bayes'])}")
        if found:
            d, n = key[1:].split("_n")
            rows.append(f"D = {d}, N = {n}: " + ", ".join(found))
    return "; ".join(rows)


def build(results: str, scale: str):
    saved = load_json(os.path.join(results, "k_posterior", "k_posterior.json"))
    return Part(lead=k_posterior_section(saved)) if saved and scale == "cpu" else None
