"""The REPORT section of the architecture study (``experiments/studies/architecture/run.py``), from its saved JSON.

Each paper claim (RQ3: anisotropic mixtures, Mamba2) and each of our ablation hypotheses gets a rule and a
verdict computed here, next to the numbers. A difference counts as clear only where it exceeds twice the
combined standard error of the two means (same tasks for every variant). The fixed prose is in ``report.md``
beside this file.
"""

from __future__ import annotations

import os

import numpy as np

from experiments.reporting import format_stat
from experiments.studies.base import Part, load_json
from experiments.studies.base import prose as _prose

REFERENCE = "set-2x64"
TRIVIAL_L2 = 25.0 / 3.0  # the zero estimator's l2 on means ~ U[-5, 5]^d: E[mu^2] = 8.33 per coordinate
NON_TRIVIAL = 0.25  # 'non-trivial' = l2 at most a quarter of the trivial estimator's, in every K
SCALE_DEPTH = ("set-1x64", REFERENCE, "set-4x64")
SCALE_WIDTH = ("set-2x32", REFERENCE, "set-2x128")


def prose(name: str, **fields) -> str:
    return _prose(__file__, name, **fields)


def _cell(cells, k):
    for c in cells:
        if c["K"] == k:
            return c
    return None


def _stat(cells, k, metric="l2"):
    c = _cell(cells, k)
    if c is None or c["not_applicable"] == 1.0 or metric not in c:
        return float("nan"), float("nan")
    return c[metric]["mean"], c[metric]["sem"]


def _fmt(cells, k, metric="l2"):
    c = _cell(cells, k)
    if c is None or c["not_applicable"] == 1.0 or metric not in c or not np.isfinite(c[metric]["mean"]):
        return "n/a"
    return format_stat(c[metric])


def _rows(section: dict) -> list[tuple[str, str, list]]:
    """(name, description, cells) of every variant, then every baseline."""
    steps = max(v["step"] for v in section["variants"])
    rows = [
        (
            v["name"],
            v["tests"] + (f"; **step {v['step']} of {steps}**" if v["step"] < steps else ""),
            v["cells"],
        )
        for v in section["variants"]
    ]
    return rows + [(b, "baseline", cells) for b, cells in section["baselines"].items()]


def _ks(section: dict) -> list[int]:
    return sorted({c["K"] for _, _, cells in _rows(section) for c in cells})


def _table(section: dict, metric: str, extra=None) -> list[str]:
    ks = _ks(section)
    head = "| method | tests | " + " | ".join(f"K={k}" for k in ks) + " |"
    lines = [head, "|---" * (len(ks) + 2) + "|"]
    for name, what, cells in _rows(section):
        lines.append(f"| {name} | {what} | " + " | ".join(_fmt(cells, k, metric) for k in ks) + " |")
    return lines


def _variant(section: dict, name: str):
    for v in section.get("variants", []):
        if v["name"] == name:
            return v
    return None


def _compare(a_cells, b_cells, ks, metric="l2"):
    """Per K: (K, mean a, mean b, 'lower'/'higher'/'tie' of a against b by the 2-sem rule)."""
    out = []
    for k in ks:
        (ma, sa), (mb, sb) = _stat(a_cells, k, metric), _stat(b_cells, k, metric)
        if not (np.isfinite(ma) and np.isfinite(mb)):
            continue
        margin = 2.0 * np.hypot(sa, sb)
        out.append((k, ma, mb, "lower" if ma < mb - margin else "higher" if ma > mb + margin else "tie"))
    return out


def _pairs_table(rows, a: str, b: str) -> str:
    lines = [f"| K | {a} l2 | {b} l2 | ratio | {a} vs {b} (2 sem) |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {ma:.3f} | {mb:.3f} | {ma / mb:.2f} | {v} |" for k, ma, mb, v in rows]
    return "\n".join(lines)


def _count(rows, verdict):
    return sum(v == verdict for *_, v in rows)


def _mean_over_k(cells, metric="l2") -> float:
    means = [c[metric]["mean"] for c in cells if c["not_applicable"] < 1.0 and metric in c]
    return float(np.mean(means)) if means else float("nan")


def _loss_at(a: dict, b: dict, window: int = 200) -> str:
    """Mean training loss of runs a and b over the last ``window`` steps that both logged (same batches)."""
    last = min(a["step"], b["step"])
    mean = lambda v: np.mean([loss for step, loss in v["loss_curve"] if last - window < step <= last])
    return prose(
        "loss_at",
        first=last - window + 1,
        last=last,
        a=a["name"],
        loss_a=f"{mean(a):.3f}",
        b=b["name"],
        loss_b=f"{mean(b):.3f}",
    )


def _claims_isotropic(iso: dict) -> dict:
    ks = _ks(iso)
    claims = {}
    ref, gpt2, mamba = (_variant(iso, n) for n in (REFERENCE, "gpt2-2x64", "mamba2-2x64"))
    if mamba and gpt2:
        limit = NON_TRIVIAL * TRIVIAL_L2
        nontrivial = sum(_stat(mamba["cells"], k)[0] <= limit for k in ks)
        rows = _compare(mamba["cells"], gpt2["cells"], ks)
        worse = _count(rows, "higher")
        verdict = "holds" if nontrivial == len(ks) and worse == len(rows) else "does not hold in full"
        claims[prose("claim.mamba")] = (
            prose(
                "rule.mamba",
                fraction=NON_TRIVIAL,
                trivial=f"{TRIVIAL_L2:.2f}",
                limit=f"{limit:.2f}",
                nontrivial=nontrivial,
                ks=len(ks),
                worse=worse,
                cells=len(rows),
                verdict=verdict,
            )
            + "\n\n"
            + _pairs_table(rows, "mamba2", "gpt2")
        )
    if ref and gpt2:
        rows = _compare(ref["cells"], gpt2["cells"], ks)
        better = _count(rows, "lower")
        rule = prose(
            "rule.set_vs_gpt2",
            better=better,
            cells=len(rows),
            worse=_count(rows, "higher"),
            ties=_count(rows, "tie"),
        )
        claims[prose("claim.set_vs_gpt2")] = rule + "\n\n" + _pairs_table(rows, "set", "gpt2")
    ours = _variant(iso, "cluster-3x64")
    if ref and ours:
        rows = _compare(ours["cells"], ref["cells"], ks)
        rule = prose(
            "rule.cluster",
            reference=REFERENCE,
            lower=_count(rows, "lower"),
            cells=len(rows),
            higher=_count(rows, "higher"),
        )
        claims[prose("claim.cluster")] = rule + "\n\n" + _pairs_table(rows, "cluster", "reference")
    naive = _variant(iso, "set-2x64-naive")
    if ref and naive:
        rows = _compare(naive["cells"], ref["cells"], ks)
        worse = _count(rows, "higher")
        early = ""
        if naive["step"] < ref["step"]:
            early = " " + prose(
                "rule.naive.early",
                naive_step=naive["step"],
                ref_step=ref["step"],
                loss=_loss_at(naive, ref),
            )
        rule = prose("rule.naive", worse=worse, cells=len(rows), early=early)
        claims[prose("claim.naive")] = rule + "\n\n" + _pairs_table(rows, "naive", "attentive")
    return claims


def _scale_lines(iso: dict) -> list[str]:
    lines = [
        "| variant | layers x width | parameters | ms/step | train minutes | mean l2 over K | mean cluster acc over K |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(SCALE_DEPTH + SCALE_WIDTH):
        v = _variant(iso, name)
        if v is None:
            continue
        m = v["model"]
        lines.append(
            f"| {name} | {m['num_layers']} x {m['width']} | {v['num_params']:,} | {v['ms_per_step']:.0f} | "
            f"{v['train_seconds'] / 60:.1f} | "
            f"{_mean_over_k(v['cells']):.3f} | {_mean_over_k(v['cells'], 'cluster_acc'):.3f} |"
        )
    return lines


def _aniso_lines(aniso: dict) -> tuple[list[str], dict]:
    ks = _ks(aniso)
    out = []
    for metric in ("l2", "l2_scales", "l2_means", "l2_weights"):
        out += [prose(f"anisotropic.{metric}"), "", *_table(aniso, metric), ""]
    out += [prose("anisotropic.no_spectral"), ""]
    claims = {}
    big = [k for k in ks if k > 2]
    lines = []
    for ref in ("em", "em_kmeanspp"):
        ref_cells = aniso["baselines"].get(ref)
        for v in aniso["variants"] if ref_cells else ():
            for metric in ("l2", "l2_scales"):
                rows = _compare(v["cells"], ref_cells, big, metric)
                lines.append(
                    f"| {v['name']} | {ref} | {metric} | {_count(rows, 'lower')} of {len(rows)} | "
                    f"{_count(rows, 'higher')} | "
                    + ", ".join(f"K={k}: {a:.3f} vs {b:.3f}" for k, a, b, _ in rows)
                    + " |"
                )
    if lines:
        claims[prose("claim.anisotropic")] = (
            prose("rule.anisotropic")
            + "\n\n| variant | against | metric | TGMM clearly lower | TGMM clearly higher | TGMM vs baseline |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(lines)
        )
    return out, claims


def _sizes(payload: dict) -> str:
    """'L1-L2 layers of width W1-W2' over the variants that ran."""
    models = [
        v["model"] for part in ("isotropic", "anisotropic") for v in payload.get(part, {}).get("variants", [])
    ]
    if not models:
        return "small networks"
    span = lambda xs: f"{min(xs)}" if min(xs) == max(xs) else f"{min(xs)}-{max(xs)}"
    return f"{span([m['num_layers'] for m in models])} layers of width {span([m['width'] for m in models])}"


def architecture_section(payload: dict, figure: str) -> tuple[list[str], dict]:
    """The REPORT lines and the claims (title -> text with rule and verdict) of the architecture study."""
    b = payload["budget"]
    intro = prose(
        "intro",
        figure=figure,
        steps=b["steps"],
        tasks_per_k=b["tasks_per_k"],
        tasks_per_step=4 * b["tasks_per_k"],
        dim=b["dim"],
        n_min=b["n"] // 2,
        n=b["n"],
        tasks_per_cell=b["tasks_per_cell"],
        n_eval=b["n_eval"],
        eval_seed=b["eval_seed"],
        sizes=_sizes(payload),
    )
    out = [intro, ""]
    variants = [v for part in ("isotropic", "anisotropic") for v in payload.get(part, {}).get("variants", [])]
    ran = {v["name"] for v in variants}
    skipped = [f"`{n}` ({t})" for n, (_, t) in payload.get("variants_defined", {}).items() if n not in ran]
    if skipped:
        out += [prose("skipped", skipped=", ".join(skipped)), ""]
    if variants:
        timings = ", ".join(
            f"{v['name']} {v['ms_per_step']:.0f} ms ({v['train_seconds'] / 60:.1f} min)" for v in variants
        )
        out += [prose("timings", timings=timings), ""]
    claims = {}
    iso = payload.get("isotropic")
    if iso and iso["variants"]:
        out += [prose("isotropic.heading"), ""]
        out += [*_table(iso, "l2"), "", prose("isotropic.cluster_acc"), "", *_table(iso, "cluster_acc"), ""]
        out += [prose("isotropic.scale"), "", *_scale_lines(iso), ""]
        claims.update(_claims_isotropic(iso))
    if iso and iso["variants"] and not iso["baselines"]:
        out += [prose("isotropic.no_baselines"), ""]
    aniso = payload.get("anisotropic")
    if not (aniso and aniso["variants"]):
        out += [prose("anisotropic.not_run"), ""]
    if aniso and aniso["variants"]:
        out += [prose("anisotropic.heading"), ""]
        steps = sorted({v["step"] for v in aniso["variants"]})
        if steps and steps[-1] < b["steps"]:
            out += [prose("anisotropic.shorter", steps_run=", ".join(map(str, steps)), steps=b["steps"]), ""]
        lines, c = _aniso_lines(aniso)
        out += lines
        claims.update(c)
    return out, claims


def _curve_stat(run: dict, last: int, window: int) -> tuple[float, float]:
    values = np.asarray(
        [loss for step, loss in run["loss_curve"] if last - window < step <= last], np.float64
    )
    if values.size < 2:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


def _curve_pair(runs, a, b, last, window):
    (ma, sa), (mb, sb) = _curve_stat(runs[a], last, window), _curve_stat(runs[b], last, window)
    margin = 2.0 * np.hypot(sa, sb)
    verdict = "lower" if ma < mb - margin else "higher" if ma > mb + margin else "within 2 sem"
    return (
        f"| {a} vs {b} | {last - window + 1}-{last} | {ma:.3f} ± {sa:.3f} | {mb:.3f} ± {sb:.3f} | {verdict} |",
        verdict,
    )


def curves_section(curves: dict, figure: str) -> tuple[list[str], dict]:
    """The training-loss comparison (``experiments/studies/architecture/curves.py``): same batch stream, equal steps."""
    runs = {n: r for n, r in curves["runs"].items() if r["variant"] == "isotropic" and not r["resp_weight"]}
    out = [
        prose("curves.intro", figure=figure),
        "",
        "| run | backbone | read-out | layers x width | steps run | ms/step | loss 401-600 | loss 1501-2000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        m = r["model"]
        early, late = _curve_stat(r, 600, 200), _curve_stat(r, 2000, 500)
        fmt = lambda s: "n/a" if not np.isfinite(s[0]) else f"{s[0]:.3f} ± {s[1]:.3f}"
        out.append(
            f"| {name} | {m['backbone']} | {m['readout']} | {m['num_layers']} x {m['width']} | {r['step']} | "
            f"{r['ms_per_step']:.0f} | {fmt(early)} | {fmt(late)} |"
        )
    other = [n for n, r in curves["runs"].items() if n not in runs]
    if other:
        out += ["", prose("curves.other", other=", ".join(other))]
    out.append("")
    claims = {}
    header = "| comparison | steps | first | second | first vs second (2 sem) |\n|---|---|---|---|---|\n"
    if {"mamba2-2x64", "gpt2-2x64"} <= set(runs):
        row, verdict = _curve_pair(runs, "mamba2-2x64", "gpt2-2x64", 2000, 500)
        first = runs["mamba2-2x64"]["loss_curve"][0][1]
        final = _curve_stat(runs["mamba2-2x64"], 2000, 500)[0]
        rule = prose(
            "curves.rule.mamba",
            first=f"{first:.2f}",
            final=f"{final:.2f}",
            verdict=verdict,
            holds="holds" if verdict == "higher" else "is not shown",
            slower=f"{runs['mamba2-2x64']['ms_per_step'] / runs['gpt2-2x64']['ms_per_step']:.0f}",
        )
        claims[prose("curves.claim.mamba")] = rule + "\n\n" + header + row
    if {"set-2x64", "gpt2-2x64"} <= set(runs):
        row, verdict = _curve_pair(runs, "set-2x64", "gpt2-2x64", 2000, 500)
        row2, _ = _curve_pair(runs, "set-2x64", "gpt2-2x64", 600, 200)
        holds = "holds" if verdict == "lower" else "is not supported"
        rule = prose("curves.rule.set_vs_gpt2", verdict=verdict, holds=holds)
        claims[prose("curves.claim.set_vs_gpt2")] = rule + "\n\n" + header + row + "\n" + row2
    if {"set-2x64-naive", "set-2x64"} <= set(runs):
        row, verdict = _curve_pair(runs, "set-2x64-naive", "set-2x64", 600, 200)
        rule = prose("curves.rule.naive", naive_step=runs["set-2x64-naive"]["step"], verdict=verdict)
        claims[prose("curves.claim.naive")] = rule + "\n\n" + header + row
    scale = [n for n in ("set-2x64", "set-2x128", "set-4x64") if n in runs]
    if len(scale) > 1:
        rows = [_curve_pair(runs, n, "set-2x64", 2000, 500) for n in scale[1:]]
        rule = prose(
            "curves.rule.scale",
            verdicts="; ".join(f"{n}: **{v}**" for n, (_, v) in zip(scale[1:], rows)),
            times=", ".join(
                f"{n} {runs[n]['ms_per_step'] / runs['set-2x64']['ms_per_step']:.1f}x" for n in scale[1:]
            ),
        )
        claims[prose("curves.claim.scale")] = rule + "\n\n" + header + "\n".join(r for r, _ in rows)
    return out, claims


def build(results: str, scale: str):
    """The architecture study (RQ3 and the ablations), then the same runs by training loss."""
    if scale != "cpu":
        return None
    part = Part()
    arch = load_json(os.path.join(results, "architecture_study.json"))
    if arch:
        sections, claims = architecture_section(arch, "architecture_study.png")
        part.sections += sections
        part.claims.update(claims)
        part.runs += [
            (v["workdir"], v["step"])
            for which in ("isotropic", "anisotropic")
            for v in arch.get(which, {}).get("variants", [])
        ]
    curves = load_json(os.path.join(results, "architecture_curves.json"))
    if curves:
        sections, claims = curves_section(curves, "architecture_curves.png")
        part.sections += sections
        part.claims.update(claims)
        part.runs += [(run["workdir"], run["step"]) for run in curves["runs"].values()]
    return part
