"""REPORT.md's missing-values section, from ``missing_values/missing_values.json``
(``experiments.studies.missing_values.run``): l2 and ARI per (d, rate, method), the model's paired differences
against the two baselines, where tgmm_restarts' kept fit came from, and the issue's two done-when checks at 30%
missing per model arm, computed here from the numbers.
The fixed prose is in ``report.md`` beside this file."""

from __future__ import annotations

import os

from experiments.studies.base import Part, load_json
from experiments.studies.base import prose as _prose

MODELS = ("tgmm", "tgmm_refine", "tgmm_restarts")
RESTARTS_ARM = "tgmm_restarts"  # the network's start plus k-means++ restarts (the others: the network alone)
BASELINES = ("em_missing", "em_mean_impute")
CHECK_RATE = 0.3  # the done-when rate: 30% of coordinates missing
L2_FACTOR = 1.2  # the model's l2 within this factor of exact missing-data EM's
ARI_REFERENCE = "em_mean_impute"  # the model's ARI at least this method's
L2_REFERENCE = "em_missing"


def prose(name: str, **fields) -> str:
    return _prose(__file__, name, **fields)


def _mean_sem(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['sem']:.3f}"


def _methods(cells) -> list[str]:
    return [m for m in MODELS + BASELINES if any(m in c["methods"] for c in cells)]


def checks(saved: dict) -> list[dict]:
    """The done-when checks per (model method, d) at ``CHECK_RATE``, from the cells' mean l2 and ARI:
    ``ari_met``: the model's mean ARI >= em_mean_impute's; ``l2_met``: its mean l2 <= 1.2 x em_missing's."""
    return [
        _check(m, c)
        for m in MODELS
        for c in sorted(saved["cells"], key=lambda c: c["dim"])
        if abs(c["rate"] - CHECK_RATE) <= 1e-9 and m in c["methods"]
    ]


def _check(method: str, cell: dict) -> dict:
    """The two done-when verdicts of ``method`` in ``cell`` (see ``checks``)."""
    methods = cell["methods"]
    ari, ari_ref = methods[method]["ari"]["mean"], methods[ARI_REFERENCE]["ari"]["mean"]
    l2, l2_ref = methods[method]["l2"]["mean"], methods[L2_REFERENCE]["l2"]["mean"]
    return dict(
        method=method,
        dim=cell["dim"],
        rate=cell["rate"],
        ari=ari,
        ari_reference=ari_ref,
        ari_met=bool(ari >= ari_ref),
        l2=l2,
        l2_reference=l2_ref,
        l2_limit=L2_FACTOR * l2_ref,
        l2_met=bool(l2 <= L2_FACTOR * l2_ref),
        l2_median=methods[method]["l2"]["median"],
        l2_reference_median=methods[L2_REFERENCE]["l2"]["median"],
    )


def _verdict(met: bool) -> str:
    return prose("met") if met else prose("not_met")


def check_line(c: dict) -> str:
    """One check as a list item of the report (also what the study prints)."""
    return prose(
        "check",
        method=c["method"],
        dim=c["dim"],
        rate=f"{100 * c['rate']:.0f}",
        ari=f"{c['ari']:.3f}",
        ari_reference=f"{c['ari_reference']:.3f}",
        ari_verdict=_verdict(c["ari_met"]),
        l2=f"{c['l2']:.3f}",
        l2_reference=f"{c['l2_reference']:.3f}",
        l2_limit=f"{c['l2_limit']:.3f}",
        l2_ratio=f"{c['l2'] / c['l2_reference']:.2f}",
        l2_verdict=_verdict(c["l2_met"]),
        l2_median=f"{c['l2_median']:.3f}",
        l2_reference_median=f"{c['l2_reference_median']:.3f}",
    )


def _table(cells, methods, metric) -> list[str]:
    lines = [
        "| d | missing (masked) | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for c in sorted(cells, key=lambda c: (c["dim"], c["rate"])):
        row = [_mean_sem(c["methods"][m][metric]) if m in c["methods"] else "–" for m in methods]
        lines.append(
            f"| {c['dim']} | {100 * c['rate']:.0f}% ({100 * c['masked_fraction']:.1f}%) | "
            + " | ".join(row)
            + " |"
        )
    return lines


def _origin_table(cells) -> list[str]:
    header = (
        "| d | missing | kept the network start's fit | kept a restart's other fit | its log-likelihood gain | "
        f"{RESTARTS_ARM} − tgmm_refine: l2 | ARI |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["dim"], c["rate"])):
        origin, diff = c.get(f"{RESTARTS_ARM}_origin"), c.get(f"{RESTARTS_ARM}_minus_tgmm_refine")
        if origin is None or diff is None:
            continue
        kept, n = sum(origin["network_fit"]), len(origin["network_fit"])
        gain = "–" if kept == n else _mean_sem(origin["restart_gain"])
        lines.append(
            f"| {c['dim']} | {100 * c['rate']:.0f}% | {kept} of {n} | {n - kept} | {gain} | "
            f"{_mean_sem(diff['l2'])} | {_mean_sem(diff['ari'])} |"
        )
    return lines


def _paired_table(cells, models) -> list[str]:
    pairs = [(m, b) for m in models for b in BASELINES]
    lines = [
        "| d | missing | " + " | ".join(f"{m} − {b}: l2 | ARI" for m, b in pairs) + " |",
        "|---|---|" + "---|---|" * len(pairs),
    ]
    for c in sorted(cells, key=lambda c: (c["dim"], c["rate"])):
        row = []
        for m, b in pairs:
            diff = c.get(f"{m}_minus_{b}")
            row += [_mean_sem(diff["l2"]), _mean_sem(diff["ari"])] if diff else ["–", "–"]
        lines.append(f"| {c['dim']} | {100 * c['rate']:.0f}% | " + " | ".join(row) + " |")
    return lines


def missing_values_section(saved: dict, figure: str = "missing_values/missing_values.png") -> list[str]:
    s, cells = saved["settings"], saved["cells"]
    methods = _methods(cells)
    models = [m for m in MODELS if m in methods]
    out = [
        prose(
            "intro",
            figure=figure,
            tasks=s["tasks"],
            num_points=s["num_points"],
            num_components=s["num_components"],
            dims=", ".join(str(d) for d in s["dims"]),
            rates=", ".join(f"{100 * r:.0f}" for r in s["rates"]),
            seed=s["eval_seed"],
            n_init=s["n_init"],
            checkpoint=s.get("checkpoint", "–"),
            refine_steps=s.get("refine_steps", "–"),
            restarts=s.get("restarts", "–"),
            starts=s["restarts"] + 1 if "restarts" in s else "–",
        ),
        "",
        prose("l2"),
        "",
        *_table(cells, methods, "l2"),
        "",
        prose("ari"),
        "",
        *_table(cells, methods, "ari"),
        "",
    ]
    if not models:
        return out + [prose("not_scored"), ""]
    out += [prose("paired"), "", *_paired_table(cells, models), ""]
    origin = _origin_table(cells)
    if len(origin) > 2:
        below = {
            (c["dim"], c["rate"]): c[f"{RESTARTS_ARM}_origin"]["below_refine"]
            for c in sorted(cells, key=lambda c: (c["dim"], c["rate"]))
            if c.get(f"{RESTARTS_ARM}_origin", {}).get("below_refine")
        }
        where = ", ".join(f"{n} at d = {d}, {100 * r:.0f}%" for (d, r), n in below.items())
        below_text = (
            prose("origin_below", below=sum(below.values()), where=where)
            if below
            else prose("origin_below_none")
        )
        out += [prose("origin", below=below_text), "", *origin, ""]
    agreement = [c["methods"][m]["predict_agreement"] for c in cells for m in models if m in c["methods"]]
    agreement = [a for a in agreement if a is not None]
    if agreement:
        out += [prose("predict", agreement=f"{100 * min(agreement):.1f}"), ""]
    matched = {
        m: [c["methods"][m].get("predict_agreement_matched") for c in cells if m in c["methods"]]
        for m in models
    }
    matched = {m: [a for a in v if a is not None] for m, v in matched.items()}
    if any(matched.values()) and min(agreement) < 1.0:
        out += [
            prose(
                "predict_matched",
                matched="; ".join(f"`{m}` {100 * min(v):.1f}%" for m, v in matched.items() if v),
            ),
            "",
        ]
    found = checks(saved)
    if not found:
        return out + [prose("no_check_rate", rate=f"{100 * CHECK_RATE:.0f}"), ""]
    summaries = []
    for m in models:
        mine = [c for c in found if c["method"] == m]
        both = [c["ari_met"] and c["l2_met"] for c in mine]
        if mine:
            summaries += [
                prose(
                    "summary_met" if all(both) else "summary_not_met",
                    method=m,
                    what=prose(
                        f"arm_{m}", refine_steps=s.get("refine_steps", "–"), restarts=s.get("restarts", "–")
                    ),
                    rate=f"{100 * CHECK_RATE:.0f}",
                    held=sum(both),
                    cells=len(mine),
                ),
                "",
            ]
    out += [
        prose("checks", rate=f"{100 * CHECK_RATE:.0f}", factor=L2_FACTOR),
        "",
        *[check_line(c) for c in found],
        "",
        *summaries,
        prose("filling"),
        "",
    ]
    if any(c["dim"] == 2 and c["rate"] >= 0.5 for c in cells):
        out += [prose("d2_half"), ""]
    return out


# The runs scoring the networks trained with masks (``--arms``), beside the main one: N = 128 from `cluster`,
# N = 32 from `cluster_noise`. Each folder also holds the arms' training configs (``<workdir>_config.json``).
MASK_TRAINED = (
    os.path.join("missing_values", "trained_with_masks"),
    os.path.join("missing_values", "trained_with_masks_n32"),
)
ARM_SETTINGS = ("tgmm", "tgmm_refine")


def _arms(saved: dict) -> list[str]:
    return list(saved["settings"].get("arms", {}))


def _z(s: dict) -> str:
    if not (s["sem"] and s["sem"] > 0):
        return f"{s['mean']:+.4f} ± {s['sem']:.4f} (z –)"
    return f"{s['mean']:+.4f} ± {s['sem']:.4f} (z {s['mean'] / s['sem']:+.1f})"


def arm_checks(saved: dict) -> list[dict]:
    """``checks``' two verdicts at ``CHECK_RATE`` for every ``--arms`` method (tgmm@NAME, tgmm_refine@NAME)."""
    names = [f"{setting}@{arm}" for arm in _arms(saved) for setting in ARM_SETTINGS]
    return [
        _check(name, c)
        for c in sorted(saved["cells"], key=lambda c: c["dim"])
        if abs(c["rate"] - CHECK_RATE) <= 1e-9
        for name in names
    ]


def training_summary(configs: list[dict]) -> str:
    """The fine-tuning of the arms from their saved training configs: steps, learning rate, start."""
    if not configs:
        return "training configs not saved"
    parts = sorted(
        {
            f"{c['total_steps']} steps at learning rate {c['optim']['learning_rate']:g} from `{c['init_from']}`, "
            f"masking rate up to {c['missing_rate_max']:g}, seed {c['seed']}"
            for c in configs
        }
    )
    return "; ".join(parts)


def mask_trained_section(saved: dict, folder: str, configs: list[dict] | None = None) -> list[str]:
    """The networks trained with masks against the shipped one on the same tasks and masks: l2 and ARI per
    cell, the paired differences (training with masks; reading the mask), and the done-when checks."""
    s, cells = saved["settings"], saved["cells"]
    arms = _arms(saved)
    shown = [f"{setting}@{a}" for setting in ARM_SETTINGS for a in arms]
    methods = ["tgmm", *[m for m in shown if m.startswith("tgmm@")], "tgmm_refine"]
    methods += [m for m in shown if m.startswith("tgmm_refine@")] + list(BASELINES)
    pairs = [(f"tgmm@{a}", "tgmm") for a in arms]
    pairs += [(f"tgmm@{a}", f"tgmm@{b}") for i, a in enumerate(arms) for b in arms[i + 1 :]]
    pairs += [(f"tgmm_refine@{a}", f"tgmm_refine@{b}") for i, a in enumerate(arms) for b in arms[i + 1 :]]
    lines = [
        "| d | missing | " + " | ".join(f"{a} − {b}: l2 | ARI" for a, b in pairs) + " |",
        "|---|---|" + "---|---|" * len(pairs),
    ]
    for c in sorted(cells, key=lambda c: (c["dim"], c["rate"])):
        row = []
        for a, b in pairs:
            diff = c[f"{a}_minus_{b}"]
            row += [_z(diff["l2"]), _z(diff["ari"])]
        lines.append(f"| {c['dim']} | {100 * c['rate']:.0f}% | " + " | ".join(row) + " |")
    found = arm_checks(saved)
    zs = [z for a in arms for z in _z_values(cells, f"tgmm@{a}", "tgmm", "l2")]
    better, worse = sum(z <= -2 for z in zs), sum(z >= 2 for z in zs)
    verdict = (
        prose(
            "masks_better",
            checkpoint=s["checkpoint"],
            better=better,
            worse=worse,
            cells=len(cells) * len(arms),
        )
        if better
        else prose("masks_not_better", checkpoint=s["checkpoint"])
    )
    return [
        prose(
            "masks_intro",
            figure=os.path.join(folder, "missing_values.png"),
            folder=folder,
            arms=", ".join(f"`{a}` = `{p}`" for a, p in s["arms"].items()),
            tasks=s["tasks"],
            seed=s["eval_seed"],
            checkpoint=s["checkpoint"],
            num_points=s["num_points"],
            training=training_summary(configs or []),
        ),
        "",
        prose("l2"),
        "",
        *_table(cells, methods, "l2"),
        "",
        prose("ari"),
        "",
        *_table(cells, methods, "ari"),
        "",
        prose("masks_paired"),
        "",
        *lines,
        "",
        prose("checks", rate=f"{100 * CHECK_RATE:.0f}", factor=L2_FACTOR),
        "",
        *[check_line(c) for c in found],
        "",
        prose("masks_reading", reading=_reading(cells, pairs), verdict=verdict),
        "",
    ]


def _z_values(cells, a: str, b: str, metric: str) -> list[float]:
    """z of the paired ``a - b`` difference of ``metric`` in every cell whose sem is positive."""
    diffs = [c[f"{a}_minus_{b}"][metric] for c in cells]
    return [d["mean"] / d["sem"] for d in diffs if d["sem"] and d["sem"] > 0]


def _reading(cells, pairs) -> str:
    """Per pair: in how many cells its paired l2 (ARI) difference is below (above) zero by at least 2 sem,
    and the other way."""

    parts = []
    for a, b in pairs:
        l2, ari = _z_values(cells, a, b, "l2"), _z_values(cells, a, b, "ari")
        parts.append(
            prose(
                "masks_count",
                a=a,
                b=b,
                better=sum(z <= -2 for z in l2),
                worse=sum(z >= 2 for z in l2),
                ari_better=sum(z >= 2 for z in ari),
                ari_worse=sum(z <= -2 for z in ari),
                cells=len(cells),
            )
        )
    return " ".join(parts)


def build(results: str, scale: str) -> Part | None:
    saved = load_json(os.path.join(results, "missing_values", "missing_values.json"))
    if not saved or scale != "cpu":
        return None
    sections = missing_values_section(saved)
    for folder in MASK_TRAINED:
        arms = load_json(os.path.join(results, folder, "missing_values.json"))
        if arms and _arms(arms):
            configs = [
                load_json(os.path.join(results, folder, name))
                for name in sorted(os.listdir(os.path.join(results, folder)))
                if name.endswith("_config.json")
            ]
            sections += mask_trained_section(arms, folder, configs)
    return Part(sections=sections)
