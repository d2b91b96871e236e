"""The REPORT section of the how-many-clusters study (``experiments/studies/k_posterior/run.py``), from its JSON.

``k_posterior_section(saved, figure, reliability_figure)`` returns the section's markdown lines; the figure
paths are as the report should link them (relative to the report). The fixed prose is in ``report.md`` beside
this file.
"""

from __future__ import annotations

import os

from experiments.studies.base import Part, load_json
from experiments.studies.base import prose as _prose

METHODS = ("model", "model_all", "bic", "aic", "bgm", "bic_raw", "aic_raw")
LABELS = {
    "model": "learned P(K|X)",
    "model_all": "learned, all points",
    "bic": "BIC",
    "aic": "AIC",
    "bgm": "BayesianGMM",
    "bic_raw": "BIC, collapsed kept",
    "aic_raw": "AIC, collapsed kept",
    "bic_softmax": "BIC-softmax",
    "bayes": "Bayes (AIS)",
}


def prose(name: str, **fields) -> str:
    return _prose(__file__, name, **fields)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x, fmt=".3f") -> str:
    return "–" if x is None else format(x, fmt)


def k_posterior_section(
    saved: dict,
    figure: str = "k_posterior/k_posterior.png",
    reliability_figure: str = "k_posterior/k_posterior_reliability.png",
) -> list[str]:
    s, summary, targets = saved["settings"], saved["summary"], saved.get("targets", {})
    dims, ns = s["dims"], s["ns"]
    present = [m for m in METHODS if any(m in c["accuracy"] for c in saved["cells"])]
    intro = prose(
        "intro",
        figure=figure,
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
    out += [
        "",
        "| | learned P(K|X) | BIC-softmax |",
        "|---|---|---|",
        f"| log-loss of the true K, all cells | {_num(ll.get('model'))} | {_num(ll.get('bic_softmax'))} |",
        f"| log-loss of the true K, N ≤ 128 | {_num(ll_s.get('model'))} | {_num(ll_s.get('bic_softmax'))} |",
        (
            "| expected calibration error of the top K (10 bins) | "
            f"{_num(rel.get('model', {}).get('ece'))} | {_num(rel.get('bic_softmax', {}).get('ece'))} |"
        ),
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

        text = prose(
            "targets",
            accuracy_gain=f"{100 * a['model_minus_bic']:+.1f}",
            accuracy=verdict(a),
            logloss=f"{lo['model']:.3f}",
            logloss_bic=f"{lo['bic_softmax']:.3f}",
            logloss_verdict=verdict(lo),
            k1=_pct(k1["model"]),
            k1_verdict=verdict(k1),
        )
        out += [text, ""]
    return out


def bayes_lines(saved: dict) -> list[str]:
    """The Bayes posterior (AIS, baselines/bayes_k.py) against the others on the tasks it was computed on."""
    bayes = saved["summary"].get("bayes")
    if not bayes:
        return []
    config = saved["settings"].get("bayes", {})
    methods = [m for m in ("bayes", "model", "bic", "aic", "bgm") if m in bayes["all"]["accuracy"]]
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
        + " | agrees with Bayes: learned / BIC | log-loss: Bayes / learned / BIC-softmax"
        + " | KL(Bayes ‖ learned) | KL(Bayes ‖ BIC-softmax) |",
        "|---|---|---|" + "---|" * len(methods) + "---|---|---|---|",
    ]
    for label, v in rows:
        agree, ll, kl = v["agrees_with_bayes"], v["logloss"], v["kl_from_bayes"]
        ks = v.get("true_ks")
        partial = f" (K {ks[0]}-{ks[-1]})" if ks and len(ks) < 8 else ""
        out.append(
            f"| {label} | {v['tasks']}{partial} | "
            + " | ".join(_pct(v["accuracy"].get(m)) for m in methods)
            + f" | {_pct(agree.get('model'))} / {_pct(agree.get('bic'))}"
            + f" | {_num(ll.get('bayes'))} / {_num(ll.get('model'))} / {_num(ll.get('bic_softmax'))}"
            + f" | {_num(kl.get('model'))} | {_num(kl.get('bic_softmax'))} |"
        )
    checks = "; ".join(
        f"D = {key[1:].split('_n')[0]}, N = {key.split('_n')[1]}: "
        + ", ".join(f"{p:.3f}" for p in v["mean_posterior"])
        for key, v in bayes["by_dn"].items()
        if "mean_posterior" in v
    )
    out += ["", prose("bayes_reading"), ""]
    return out + ([prose("bayes_check", checks=checks), ""] if checks else [])


def build(results: str, scale: str):
    saved = load_json(os.path.join(results, "k_posterior", "k_posterior.json"))
    return Part(lead=k_posterior_section(saved)) if saved and scale == "cpu" else None
