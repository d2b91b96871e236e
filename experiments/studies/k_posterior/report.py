"""The REPORT section of the how-many-clusters study (``experiments/studies/k_posterior/run.py``), from its JSON.

``k_posterior_section(saved, figure, reliability_figure)`` returns the section's markdown lines; the figure
paths are as the report should link them (relative to the report).
"""

from __future__ import annotations

import os

from experiments.studies.base import Part, load_json

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
}


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
    out = [
        "## How many clusters: a learned posterior over K",
        f"![K accuracy against true K]({figure})",
        "",
        (
            "`python -m experiments.train_k_posterior` then `python -m experiments.studies.k_posterior.run`: "
            "`KPosterior` (tgmm_jax/models/k_posterior.py: the normalised read-in without the absolute scale, the "
            "`set` backbone, masked-mean and attention pooling, an MLP head to log P(K | X), K = 1..8) trained by "
            "the cross-entropy of the true K on the prior Algorithm 1 without the cosine filter (it cannot place 8 "
            "means at D = 2), K uniform on 1..8, N ~ U{32..128}, D alternating 2 and 8. "
            f"Held-out tasks from that prior (seed {s.get('seed')}), {s['tasks_per_cell']} per (D, N, true K), "
            "the same tasks for every method. BIC and AIC: spherical EM per K = 1..8, the best of "
            f"{s.get('n_init', 10)} k-means++ restarts (scikit-learn GaussianMixture) among those where no component "
            "collapsed on a point (smallest variance < 1e-3 x the data's variance: an unbounded likelihood); "
            "the `collapsed kept` columns are sklearn's own rule (best restart whatever it is), which at small N "
            "picks large K on pure noise. The BIC-softmax P(K) ∝ exp(-BIC/2) is mixed with 1e-3 of the uniform "
            "distribution (a K whose restarts all collapsed would have probability 0). BayesianGMM: scikit-learn, 8 "
            f"spherical components, Dirichlet-process weights; K = components with weight > {s['bgm_threshold']}. "
            f"Tasks with N > {s['model_reads_at_most']} (the training range) are read by the model through a seeded "
            f"subsample of {s['model_reads_at_most']} points (`learned, all points` reads every point). The MCMC "
            "reference (baselines/bayes.py) is fixed-K and is not run: choosing K with it would need each K's "
            "marginal likelihood."
        ),
        "",
        "K accuracy (%) per (D, N), averaged over true K = 1..8:",
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
        "On pure noise (K = 1), share of tasks answered 1 (%): "
        + ", ".join(f"{LABELS[m]} {_pct(summary['k1_rate'].get(m))}" for m in present)
        + ".",
        "",
        "BayesianGMM at other weight thresholds (K accuracy %, all cells): "
        + ", ".join(
            f"{t:.3g}: {_pct(summary['accuracy'].get(f'bgm@{t:.3g}'))}"
            for t in s["bgm_thresholds_sensitivity"]
        )
        + ".",
        "",
        f"![reliability of P(K | X)]({reliability_figure})",
        "",
    ]
    if targets:
        a = targets["accuracy_beats_bic_by_10_points_n_le_128"]
        lo = targets["logloss_beats_bic_softmax"]
        k1 = targets["k1_answers_1_at_least_95pct"]

        def verdict(t):
            return "**met**" if t["met"] else "**not met**"

        out += [
            "The targets on these held-out tasks:",
            (
                f"- K accuracy over BIC at N ≤ 128 (mean over D, N, K): {100 * a['model_minus_bic']:+.1f} points "
                f"(target ≥ +10): {verdict(a)}."
            ),
            (
                f"- log-loss of the true K: {lo['model']:.3f} against the BIC-softmax's {lo['bic_softmax']:.3f}: "
                f"{verdict(lo)}."
            ),
            (
                f"- K = 1 answered 1: {_pct(k1['model'])}% of the tasks (target ≥ 95%): {verdict(k1)}. (The estimator's "
                '`n_components="auto"` does not use this model yet.)'
            ),
            "",
        ]
    return out


def build(results: str, scale: str):
    saved = load_json(os.path.join(results, "k_posterior", "k_posterior.json"))
    return Part(lead=k_posterior_section(saved)) if saved and scale == "cpu" else None
