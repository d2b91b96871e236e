"""REPORT.md's d = 2 loss comparison (paper loss vs matched loss vs EM), from
``results/prototype_matched_loss.json``, the result of a retired prototype script. The fixed prose is in ``report.md`` beside this file."""

from __future__ import annotations

import os

from experiments.studies.base import Part, load_json, prose
from experiments.studies.rq.report import ratio_rows

_LAST_COMMIT = "91173fa"  # the retired script's last commit (results/prototype_matched_loss.json: "retired")


def prototype_section(proto):
    """The d = 2, N = 32 loss comparison, with its own settings."""
    l2 = {name: proto[name]["final_l2"] for name in ("est_matched", "est")}
    l2["em_official_init"] = proto["em_official_init"]
    ks = sorted(l2["est_matched"], key=int)
    rows = [f"| {name} | " + " | ".join(f"{l2[name][k]:.3f}" for k in ks) + " |" for name in l2]
    out = [
        prose(__file__, "heading"),
        "",
        prose(__file__, "source", metric=proto["metric"], machine=proto["machine"], last=_LAST_COMMIT),
        "",
        "| method | " + " | ".join(f"K={k}" for k in ks) + " |",
        "|---" * (len(ks) + 1) + "|",
        *rows,
        "",
    ]
    big = [k for k in ks if int(k) > 2]
    pairs = [(f"d=2, K={k}", l2["est_matched"][k], l2["em_official_init"][k]) for k in big]
    better = sum(a < b for _, a, b in pairs)
    paper_loss = sum(l2["est"][k] < l2["em_official_init"][k] for k in big)
    claim = (
        prose(__file__, "rule", better=better, cells=len(pairs), paper_loss=paper_loss)
        + "\n\n| cell | TGMM l2 | EM l2 | ratio |\n|---|---|---|---|\n"
        + ratio_rows(pairs)
    )
    return out, {prose(__file__, "claim"): claim}


def build(results: str, scale: str) -> Part | None:
    proto = load_json(os.path.join(results, "prototype_matched_loss.json"))
    if not proto or scale != "cpu":
        return None
    sections, claims = prototype_section(proto)
    return Part(sections=sections, claims=claims)
