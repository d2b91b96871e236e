"""The REPORT section of the phase-transition study (``experiments/studies/phase_transition/run.py``), from its saved JSON.

The rebuttal's claim is qualitative (its table did not survive in the text we have); the verdict on it is
computed here with the rule stated next to it.
"""

from __future__ import annotations

import os

import numpy as np

from experiments.reporting import format_gain
from experiments.studies.base import Part, load_json
from tgmm_jax.scoring import MODEL_METHOD

PLANNED = ("d2", "d8", "b0.1", "b1")  # experiments.studies.phase_transition.run's default settings
METHODS = (
    "oracle",
    MODEL_METHOD,
    "tgmm+em",
    "tgmm_paper",
    "em_seeded",
    "em_seeded+em",
    "em",
    "em_kmeanspp",
    "spectral",
)
CLAIM = (
    "Rebuttal to Reviewer 4R4H, Q4 (OpenReview): on K = 2 tasks of Ndaoud's (a, b, n) configuration, four"
    ' configurations "right on the line", "TGMM performs on par with EM near the recovery threshold under the'
    ' recovery metric (cluster accuracy), while performing worse than the spectral method"; l2 errors of the'
    ' three are "similar in general"; "when the underlying problem is hard, TGMM doesn\'t show extra benefits'
    ' but performs on par with baselines". Their numbers are not in the text we have.'
)


def _cell(cells, method, rho):
    for c in cells:
        if c["method"] == method and c["rho"] == rho:
            return c
    return None


def _acc(cell):
    if cell is None or cell["not_applicable"] == 1.0:
        return "n/a"
    return (
        f"{cell['cluster_acc']['mean']:.3f} ± {cell['cluster_acc']['sem']:.3f} ({cell['exact_recovery']:.0%})"
    )


def _l2(cell):
    if cell is None or cell["not_applicable"] == 1.0 or not np.isfinite(cell["l2"]["mean"]):
        return "n/a"
    return f"{cell['l2']['mean']:.3g} ± {cell['l2']['sem']:.2g}"


def _gain(cell):
    return format_gain(cell["learned_gain"]) if cell and "learned_gain" in cell else "n/a"


def _table(cells, rhos, fmt):
    lines = ["| method | " + " | ".join(f"rho={r:g}" for r in rhos) + " |", "|---" * (len(rhos) + 1) + "|"]
    for m in METHODS:
        if any(c["method"] == m for c in cells):
            lines.append(f"| {m} | " + " | ".join(fmt(_cell(cells, m, r)) for r in rhos) + " |")
    return "\n".join(lines)


def _compare(cells, a, b):
    """'on par' where |acc_a - acc_b| <= 2 combined sem, else which is higher; None when one is missing."""
    ca, cb = _cell(cells, a, 1.0), _cell(cells, b, 1.0)
    if ca is None or cb is None:
        return None
    diff = ca["cluster_acc"]["mean"] - cb["cluster_acc"]["mean"]
    sem = float(np.hypot(ca["cluster_acc"]["sem"], cb["cluster_acc"]["sem"]))
    word = "on par" if abs(diff) <= 2 * sem else ("higher" if diff > 0 else "lower")
    return word, diff, sem


def phase_transition_section(saved: dict, figure: str) -> list[str]:
    cells, rhos = saved["cells"], saved["rhos"]
    out = [
        "## Phase transition near the exact-recovery threshold (rebuttal Q4, Ndaoud 2018)",
        f"![accuracy against separation]({figure})",
        "",
        (
            "`python -m experiments.studies.phase_transition.run`: tasks from `sample_phase_transition_tasks` (the official"
            " `abn_config`: n points, D = int(b n log n), weights 1/2, means ±(Δ/2)u plus a shared offset Δ N(0, I),"
            " unit noise); tasks per (setting, ρ) as in each heading, the same tasks for every method."
            " The sweep is ρ = Δ / Δ_line with Δ_line² = (1 + √(1 + 2b)) log n. **Two thresholds:** the official"
            " configuration's line a = 1 + 2b (ρ = 1) puts Ndaoud's value on Δ², the squared *distance between the"
            " means*; Ndaoud's exact-recovery threshold is on ‖θ‖² for means ±θ, i.e. on (Δ/2)², which is ρ = 2."
            " On the official line even the true parameters (the `oracle` row, the Bayes classifier) miss"
            " about Φ(−Δ/2) of the points, so no method can recover every label there; ρ = 2 is where exact recovery"
            " becomes possible. No training: `tgmm` is the shipped dimension-free `cluster` model (trained on"
            f" d in (2, 8, 32), N ≤ 128), `tgmm+em` adds {saved['refine_steps']} EM steps, `tgmm_paper` is the shipped"
            " paper-architecture model where its d matches (paper_d2 at D = 2, trained on N ≤ 32; paper_d8 at D = 8)."
            " Neither was trained on these tasks (nor was the rebuttal's: it used the standard task sampler)."
        ),
        "",
        f"**The paper's claim.** {CLAIM}",
        "",
    ]
    missing = [s for s in PLANNED if s not in saved["settings"]]
    if missing:
        out += [
            (
                f"Not in these results: setting(s) {', '.join(missing)} of the script's default list (b1: n = 128,"
                " b = 1, D = 621) did not finish on the 2-core CPU (load 30-40 from other jobs during the run)"
                " and were stopped; `python -m experiments.studies.phase_transition.run` resumes them (finished settings"
                " are cached)."
            ),
            "",
        ]
    verdicts = []
    for setting, info in saved["settings"].items():
        mine = [c for c in cells if c["setting"] == setting]
        if not mine:
            continue
        out += [
            (
                f"### {setting}: n = {info['n']}, b = {info['b']}, D = {info['dim']},"
                f" {info.get('tasks_per_cell', saved['tasks_per_cell'])} tasks per ρ"
            ),
            "",
            "Cluster accuracy (best label permutation), mean ± sem over tasks (exact-recovery rate):",
            "",
            _table(mine, rhos, _acc),
            "",
            "l2 error (means + weights, optimal alignment), mean ± sem:",
            "",
            _table(mine, rhos, _l2),
            "",
        ]
        if any("learned_gain" in c for c in mine):
            out += [
                (
                    "Learned gain (l2 of the skeleton em_seeded, or em_seeded+em for tgmm+em, minus the model's,"
                    " same tasks; mean ± sem (z); positive = the network helps):"
                ),
                "",
                _table([c for c in mine if "learned_gain" in c], rhos, _gain),
                "",
            ]
        for ref in ("em", "spectral"):
            got = _compare(mine, MODEL_METHOD, ref)
            if got:
                verdicts.append(f"| {setting} | tgmm vs {ref} | {got[0]} | {got[1]:+.3f} ± {got[2]:.3f} |")
    out += [
        "### Verdict on the official line (ρ = 1)",
        "",
        "Rule: 'on par' where the accuracy difference is within 2 combined standard errors.",
        "",
        "| setting | comparison | verdict | accuracy difference ± combined sem |",
        "|---|---|---|---|",
        *verdicts,
        "",
        *_observations(saved),
    ]
    if "shipped_cluster_checkpoint" in saved:
        out += [f"Checkpoint: {saved['shipped_cluster_checkpoint']}.", ""]
    return out


def _observations(saved: dict) -> list[str]:
    """Computed statements: where exact recovery is possible, and how the fixed-d paper model fares."""
    cells, rhos = saved["cells"], saved["rhos"]
    lines = []
    for rho in (1.0, 2.0):
        oracle = [c for c in cells if c["method"] == "oracle" and c["rho"] == rho]
        if oracle:
            acc = [c["cluster_acc"]["mean"] for c in oracle]
            exact = [c["exact_recovery"] for c in oracle]
            lines.append(
                f"- ρ = {rho:g}: the true parameters label {min(acc):.3f}-{max(acc):.3f} of the points correctly and"
                f" recover every label in {min(exact):.0%}-{max(exact):.0%} of the tasks (across settings)."
            )
    lo, hi = min(rhos), max(rhos)
    for setting in saved["settings"]:
        a, b = _cell_in(cells, setting, "tgmm_paper", lo), _cell_in(cells, setting, "tgmm_paper", hi)
        t = _cell_in(cells, setting, MODEL_METHOD, hi)
        if a and b and t:
            lines.append(
                f"- {setting}: the paper-architecture model's l2 goes from {a['l2']['mean']:.3g} at ρ = {lo:g} to"
                f" {b['l2']['mean']:.3g} at ρ = {hi:g} (the dimension-free model: {t['l2']['mean']:.3g}). Likely"
                " cause (not isolated here): its raw read-in sees the shared offset Δ N(0, I), whose per-coordinate"
                " spread Δ grows with ρ past the training means' range [-5, 5]; the clustering model centres each"
                " task first."
            )
    return ["What the numbers show:", "", *lines, ""] if lines else []


def _cell_in(cells, setting, method, rho):
    return _cell([c for c in cells if c["setting"] == setting], method, rho)


def build(results: str, scale: str):
    saved = load_json(
        os.path.join(results, "phase_transition.json")
    )  # an evaluation-only study of shipped models
    return (
        Part(sections=phase_transition_section(saved, "phase_transition.png"))
        if saved and scale == "cpu"
        else None
    )
