"""The REPORT section of the hard-regime study (``experiments.studies.hard_regime.run``): the learned gain of the shipped model
over its skeleton, and every method against the Bayes limit, with the gap cells listed. The fixed prose is in
``report.md`` beside this file."""

from __future__ import annotations

import os

import numpy as np

from experiments.reporting import format_gain
from experiments.studies.base import Part, load_json
from experiments.studies.base import prose as _prose

ORDER = (
    "tgmm",
    "tgmm+em",
    "em_seeded",
    "em_seeded+em",
    "em_kmeanspp",
    "em_averaged",
    "spectral",
    "bgm",
    "bayes",
)


def prose(name: str, **fields) -> str:
    return _prose(__file__, name, **fields)


def _cells(saved, kind):
    return [c for c in saved["cells"] if c["kind"] == kind]


def _find(cells, method, **where):
    for c in cells:
        if c["method"] == method and all(c.get(k) == v for k, v in where.items()):
            return c
    return None


def _l2(cell, key="l2"):
    if cell is None or key not in cell:
        return "n/a"
    return f"{cell[key]['mean']:.3f}"


def _ratio(cell, bayes, key="l2_on_bayes_tasks"):
    if cell is None or bayes is None or key not in cell or "l2" not in bayes:
        return "n/a"
    return f"{cell[key]['mean'] / bayes['l2']['mean']:.2f}"


def _gain(cell):
    return format_gain(cell["learned_gain"]) if cell and "learned_gain" in cell else "n/a"


def _methods(cells):
    present = {c["method"] for c in cells}
    return [m for m in ORDER if m in present]


def _limit_rows(cells, keys, where_of, gap_ratio):
    """Rows: each cell's bayes l2, the ratios to it on the bayes tasks, and the learned gains."""
    rows = []
    for key in keys:
        where = where_of(key)
        bayes = _find(cells, "bayes", **where)
        em = _find(cells, "em_kmeanspp", **where)
        gap = (
            em is not None
            and bayes is not None
            and "l2" in bayes
            and em["l2_on_bayes_tasks"]["mean"] >= gap_ratio * bayes["l2"]["mean"]
        )
        label = ", ".join(f"{k}={v}" for k, v in where.items()) + (" **gap**" if gap else "")
        row = [label, _l2(bayes)]
        row += [
            _ratio(_find(cells, m, **where), bayes)
            for m in ("em_kmeanspp", "em_seeded", "tgmm", "tgmm+em", "bgm")
        ]
        row += [_gain(_find(cells, "tgmm", **where)), _gain(_find(cells, "tgmm+em", **where))]
        rows.append("| " + " | ".join(row) + " |")
    return rows


def hard_regime_section(saved: dict, figure: str) -> list[str]:
    gap_ratio = saved["gap_ratio"]
    s = saved["settings"]
    grid, pt = _cells(saved, "grid"), _cells(saved, "phase_transition")
    intro = prose(
        "intro",
        figure=figure,
        checkpoint=saved["checkpoint"],
        tasks_per_cell=s["tasks_per_cell"],
        bayes_tasks=s["bayes_tasks"],
        refine_steps=saved["refine_steps"],
        gap_ratio=gap_ratio,
    )
    out = [intro, ""]
    gaps = [g for g in saved.get("gaps", []) if g["gap"]]
    checked = [g for g in saved.get("gaps", [])]
    out += [prose("gaps", gaps=len(gaps), checked=len(checked)), ""]
    for g in gaps:
        where = (
            f"d={g['dim']}, K={g['K']}, N={g['N']}"
            if g["kind"] == "grid"
            else f"{g['setting']} (D={g['dim']}), rho={g['rho']}"
        )
        extra = ", ".join(
            f"{m} {g[f'{m}_over_bayes']:.2f}x" for m in ("tgmm", "em_seeded", "bgm") if f"{m}_over_bayes" in g
        )
        out.append(f"- {where}: em_kmeanspp {g['em_over_bayes']:.2f}x bayes; {extra}")
    target = saved.get("target_check")
    if target:
        t = target
        ratio = t["bayes_over_em"]
        check = prose(
            "target_check",
            dim=t["dim"],
            k=t["K"],
            n=t["N"],
            num_tasks=t["num_tasks"],
            bayes=f"{t['l2']['bayes']['mean']:.3f} ± {t['l2']['bayes']['sem']:.3f}",
            em=f"{t['l2']['em_kmeanspp']['mean']:.3f} ± {t['l2']['em_kmeanspp']['sem']:.3f}",
            ratio=f"{ratio:.2f}",
            met="met" if ratio <= 0.6 else "NOT met",
            em_failures=t["em_failures"],
            ratio_without_failures=f"{t['bayes_over_em_without_failures']:.2f}",
            median_ratio=f"{t['median_per_task_ratio']:.2f}",
            em_from_truth=f"{t['l2']['em_from_truth']['mean']:.3f}",
            ratio_from_truth=f"{t['bayes_over_em_from_truth']:.2f}",
        )
        out += ["", check]
    head = (
        "| cell | bayes l2 | em_kmeanspp / bayes | em_seeded / bayes | tgmm / bayes | tgmm+em / bayes | bgm / bayes"
        " | learned gain of tgmm (vs em_seeded) | of tgmm+em (vs em_seeded+em) |"
    )
    sep = "|---" * 9 + "|"
    for dim in sorted({c["dim"] for c in grid}):
        mine = [c for c in grid if c["dim"] == dim]
        keys = sorted({(c["K"], c["N"]) for c in mine}, key=lambda kn: (kn[1], kn[0]))
        out += ["", prose("limit.dim", dim=dim), "", head, sep]
        out += _limit_rows(mine, keys, lambda kn: dict(N=kn[1], K=kn[0]), gap_ratio)
    if pt:
        out += ["", prose("limit.phase_transition"), "", head, sep]
        keys = sorted({(c["setting"], c["rho"]) for c in pt})
        out += _limit_rows(pt, keys, lambda sr: dict(setting=sr[0], rho=sr[1]), gap_ratio)
        if not any(c["method"] == "bayes" for c in pt):
            out += ["", prose("limit.no_bayes_sampler")]
    for metric in ("l2", "cluster_acc"):
        methods = _methods(grid)
        out += [
            "",
            prose(f"per_method.{metric}", tasks_per_cell=s["tasks_per_cell"], bayes_tasks=s["bayes_tasks"]),
            "",
            "| d | N | K | " + " | ".join(methods) + " |",
            "|---" * (3 + len(methods)) + "|",
        ]
        for dim in sorted({c["dim"] for c in grid}):
            for n in sorted({c["N"] for c in grid}):
                for k in sorted({c["K"] for c in grid}):
                    vals = []
                    for m in methods:
                        cell = _find(grid, m, dim=dim, N=n, K=k)
                        ok = cell is not None and metric in cell
                        vals.append(f"{cell[metric]['mean']:.3f}" if ok else "n/a")
                    out.append(f"| {dim} | {n} | {k} | " + " | ".join(vals) + " |")
    methods = _methods(saved["cells"])
    out += [
        "",
        prose("time_per_task"),
        "",
        "| d | " + " | ".join(methods) + " |",
        "|---" * (1 + len(methods)) + "|",
    ]
    for dim in sorted({c["dim"] for c in saved["cells"]}):
        vals = []
        for m in methods:
            secs = [c["seconds_per_task"] for c in saved["cells"] if c["dim"] == dim and c["method"] == m]
            vals.append(f"{np.mean(secs):.4f}" if secs else "n/a")
        out.append(f"| {dim} | " + " | ".join(vals) + " |")
    return out + [""]


def _count_word(n: int) -> str:
    return {2: "Two", 3: "Three", 4: "Four"}.get(n, str(n))


def small_n_ablation_section(arms: dict[str, dict], figure_dir: str = "small_n_ablation") -> list[str]:
    """The same-budget ablation on the gap regime: each arm's learned gain over its skeleton per (d, N, K), and
    its l2 against bayes on the same tasks. ``arms`` maps a label to its ``hard_regime --workdir`` JSON."""
    labels = list(arms)
    first = next(iter(arms.values()))
    grid = [c for c in first["cells"] if c["kind"] == "grid"]
    keys = sorted({(c["dim"], c["N"], c["K"]) for c in grid})
    intro = prose(
        "small_n.intro",
        count=_count_word(len(arms)),
        arms="; ".join(f"`{label}`: {arm['checkpoint']}" for label, arm in arms.items()),
        tasks_per_cell=first["settings"]["tasks_per_cell"],
        bayes_tasks=first["settings"]["bayes_tasks"],
        noise=" " + prose("small_n.noise") if "noise-conditioned" in arms else "",
    )
    out = [
        intro,
        "",
        "| d | N | K | em_kmeanspp / bayes | "
        + " | ".join(f"{label}: learned gain | {label}: tgmm / bayes" for label in labels)
        + " |",
        "|---" * (4 + 2 * len(labels)) + "|",
    ]
    wins = {label: 0 for label in labels}
    losses = {label: 0 for label in labels}
    for dim, n, k in keys:
        row = [str(dim), str(n), str(k)]
        where = dict(dim=dim, N=n, K=k)
        bayes0 = _find(first["cells"], "bayes", **where)
        row.append(_ratio(_find(first["cells"], "em_kmeanspp", **where), bayes0))
        for label in labels:
            cells = arms[label]["cells"]
            model = _find(cells, "tgmm", **where)
            row += [_gain(model), _ratio(model, _find(cells, "bayes", **where))]
            if model and "learned_gain" in model:
                wins[label] += model["learned_gain"]["z"] > 2
                losses[label] += model["learned_gain"]["z"] < -2
        out.append("| " + " | ".join(row) + " |")
    counts = ", ".join(f"{label} {wins[label]} / {losses[label]} of {len(keys)}" for label in labels)
    out += ["", prose("small_n.significant", counts=counts), ""]
    return out


def _sigma_units(cell):
    return f"{cell['l2_sigma_units']['mean']:.3f}" if cell and "l2_sigma_units" in cell else "n/a"


def pooled_gain(cells: list[dict]) -> dict | None:
    """The learned gains of ``cells`` pooled with each cell weighted equally: the mean of the cell means, its
    sem (the root of the summed squared sems over the number of cells) and z; None without gains."""
    gains = [c["learned_gain"] for c in cells if c and "learned_gain" in c]
    if not gains:
        return None
    mean = float(np.mean([g["mean"] for g in gains]))
    sem = float(np.sqrt(np.sum([g["sem"] ** 2 for g in gains])) / len(gains))
    return {"mean": mean, "sem": sem, "z": mean / sem if sem > 0 else float("nan"), "cells": len(gains)}


def unknown_noise_section(saved: dict, label: str) -> list[str]:
    """The unknown-noise cells of a ``hard_regime --noise_scale_range`` run of a noise-conditioned model: each
    method's l2 in units of the task's sigma, the model over scikit-learn's GaussianMixture in the data's units,
    and the learned gain over the skeleton (told nothing either), pooled over the cells."""
    cells = _cells(saved, "grid_noise")
    if not cells:
        return []
    keys = sorted({(c["dim"], c["N"], c["K"]) for c in cells})
    lo, hi = cells[0]["noise_scale_range"]
    intro = prose(
        "unknown.intro",
        label=label,
        checkpoint=saved["checkpoint"],
        lo=f"{lo:g}",
        hi=f"{hi:g}",
        bayes_tasks=saved["settings"]["bayes_tasks"],
    )
    out = [
        intro,
        "",
        "| d | N | K | sklearn_gmm | em_seeded | tgmm | bayes | tgmm / sklearn_gmm (data units) | learned gain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for dim, n, k in keys:
        where = dict(dim=dim, N=n, K=k)
        found = {m: _find(cells, m, **where) for m in ("sklearn_gmm", "em_seeded", "tgmm", "bayes")}
        ratio = "n/a"
        if found["tgmm"] and found["sklearn_gmm"] and "l2" in found["tgmm"] and "l2" in found["sklearn_gmm"]:
            value = found["tgmm"]["l2"]["mean"] / found["sklearn_gmm"]["l2"]["mean"]
            ratios.append(value)
            ratio = f"{value:.2f}"
        row = [str(dim), str(n), str(k)] + [_sigma_units(found[m]) for m in found]
        out.append("| " + " | ".join(row + [ratio, _gain(found["tgmm"])]) + " |")
    pooled = pooled_gain([_find(cells, "tgmm", dim=d, N=n, K=k) for d, n, k in keys])
    # cells where the skeleton itself is worse than scikit-learn: there a gain over it is cheap
    weak = [
        (d, n, k)
        for d, n, k in keys
        if all(_find(cells, m, dim=d, N=n, K=k) for m in ("em_seeded", "sklearn_gmm"))
        and _find(cells, "em_seeded", dim=d, N=n, K=k)["l2_sigma_units"]["mean"]
        > _find(cells, "sklearn_gmm", dim=d, N=n, K=k)["l2_sigma_units"]["mean"]
    ]
    summary = []
    if ratios:
        summary.append(
            prose(
                "unknown.ratios",
                low=f"{min(ratios):.2f}",
                high=f"{max(ratios):.2f}",
                cells=len(ratios),
                within=sum(r <= 0.8 for r in ratios),
            )
        )
    if pooled:
        summary.append(
            prose(
                "unknown.pooled",
                cells=pooled["cells"],
                mean=f"{pooled['mean']:+.3f}",
                sem=f"{pooled['sem']:.3f}",
                z=f"{pooled['z']:+.1f}",
            )
        )
    rest = pooled_gain([_find(cells, "tgmm", dim=d, N=n, K=k) for d, n, k in keys if (d, n, k) not in weak])
    if weak and rest:
        summary.append(
            prose(
                "unknown.weak",
                weak=", ".join(f"d={d} N={n} K={k}" for d, n, k in weak),
                mean=f"{rest['mean']:+.3f}",
                sem=f"{rest['sem']:.3f}",
                z=f"{rest['z']:+.1f}",
                cells=rest["cells"],
            )
        )
    return out + ["", " ".join(summary), ""] if summary else out + [""]


def _gap_keys(saved: dict, kind: str) -> list[tuple]:
    return sorted((g["dim"], g["N"], g["K"]) for g in saved.get("gaps", []) if g["kind"] == kind and g["gap"])


def _pooled(cells: list[dict], key: str) -> dict | None:
    """``pooled_gain`` of the ``key`` entries (learned_gain or gain_over_classical) of ``cells``."""
    return pooled_gain([{"learned_gain": c[key]} for c in cells if c and key in c])


def _z(pooled: dict | None) -> str:
    if pooled is None:
        return "n/a"
    return f"{pooled['mean']:+.3f} ± {pooled['sem']:.3f} (z {pooled['z']:+.1f}, {pooled['cells']} cells)"


def learning_targets_section(
    saved: dict, label: str, speed: dict | None = None, easy: dict | None = None
) -> list[str]:
    """The learning issue's targets, checked on one ``hard_regime --noise_scale_range`` run of a model: gap cells
    with the noise known (the share of em_kmeanspp's excess over bayes that the model alone closes, target 60%,
    and the pooled paired gains over the skeleton and over em_kmeanspp, target z >= 3), gap cells with the
    noise unknown (the model over GaussianMixture in the data's units, target 0.8, and the pooled gain over it
    in sigma units), the easy cells of ``easy`` (a hard_regime JSON of the same model at large N: tgmm over
    em_kmeanspp, target 1.03) and the speed of ``benchmarks.speed_vs_bayes`` (``speed``, its JSON) where given."""
    grid, noise = _cells(saved, "grid"), _cells(saved, "grid_noise")
    out = [prose("targets.intro", label=label, checkpoint=saved["checkpoint"]), ""]
    keys = _gap_keys(saved, "grid")
    if keys:
        averaged = any(c["method"] == "em_averaged" for c in grid)  # the parameter-free hedge, where run
        out += [
            prose("targets.known", gap_ratio=saved["gap_ratio"]),
            "",
            "| d | N | K | em_kmeanspp / bayes | tgmm / bayes | closed | gain over em_seeded | gain over em_kmeanspp |"
            + (" em_averaged: closed |" if averaged else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if averaged else ""),
        ]
        closed_all, models = [], []
        for dim, n, k in keys:
            where = dict(dim=dim, N=n, K=k)
            bayes, em, model = (_find(grid, m, **where) for m in ("bayes", "em_kmeanspp", "tgmm"))
            b, e = bayes["l2"]["mean"], em["l2_on_bayes_tasks"]["mean"]
            t = model["l2_on_bayes_tasks"]["mean"]
            closed = (e - t) / (e - b)
            closed_all.append(closed)
            models.append(model)
            over_em = format_gain(model["gain_over_classical"]) if "gain_over_classical" in model else "n/a"
            row = f"| {dim} | {n} | {k} | {e / b:.2f} | {t / b:.2f} | {100 * closed:.0f}% | {_gain(model)} | {over_em} |"
            if averaged:
                hedge = _find(grid, "em_averaged", **where)
                a = hedge["l2_on_bayes_tasks"]["mean"] if hedge else None
                row += f" {100 * (e - a) / (e - b):.0f}% |" if a is not None else " n/a |"
            out.append(row)
        met = sum(c >= 0.6 for c in closed_all)
        summary = prose(
            "targets.known.summary",
            met=met,
            cells=len(keys),
            low=f"{100 * min(closed_all):.0f}",
            high=f"{100 * max(closed_all):.0f}",
            over_skeleton=_z(_pooled(models, "learned_gain")),
            over_em=_z(_pooled(models, "gain_over_classical")),
        )
        out += ["", summary, ""]
    keys = _gap_keys(saved, "grid_noise")
    if keys:
        ratios, models = [], []
        for dim, n, k in keys:
            where = dict(dim=dim, N=n, K=k)
            model, sk = _find(noise, "tgmm", **where), _find(noise, "sklearn_gmm", **where)
            if model and sk:
                ratios.append((dim, n, k, model["l2"]["mean"] / sk["l2"]["mean"]))
                models.append(model)
        if ratios:
            unknown = prose(
                "targets.unknown",
                ratios=", ".join(f"d={d} N={n} K={k} {r:.2f}" for d, n, k, r in ratios),
                within=sum(r <= 0.8 for *_, r in ratios),
                cells=len(ratios),
                over_gmm=_z(_pooled(models, "gain_over_classical")),
                over_skeleton=_z(_pooled(models, "learned_gain")),
            )
            out += [unknown, ""]
    if easy:
        rows = []
        for c in sorted(_cells(easy, "grid"), key=lambda c: (c["N"], c["dim"], c["K"])):
            em = _find(_cells(easy, "grid"), "em_kmeanspp", dim=c["dim"], N=c["N"], K=c["K"])
            if c["method"] == "tgmm" and em and "l2" in c and "l2" in em:
                rows.append((c["dim"], c["N"], c["K"], c["l2"]["mean"] / em["l2"]["mean"]))
        if rows:
            easy_text = prose(
                "targets.easy",
                checkpoint=easy["checkpoint"],
                ratios=", ".join(f"d={d} N={n} K={k} {r:.2f}" for d, n, k, r in rows),
                within=sum(r <= 1.03 for *_, r in rows),
                cells=len(rows),
            )
            out += [easy_text, ""]
    if speed:
        machine = speed["machine"]
        out += [
            prose(
                "targets.speed",
                checkpoint=speed.get("checkpoint_arg") or _repo_relative(speed["checkpoint"]),
                slot_init=repr(speed["slot_init"]) if "slot_init" in speed else "its evaluation seedings",
                machine=machine.get("cpu", machine.get("device_kind", "")),
                load=f"{machine['load_average_before'][0]:.1f}",
            ),
            "",
            "| N | tgmm | em_seeded | em_kmeanspp | bayes | tgmm / bayes | tgmm / em_kmeanspp |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in speed["rows"]:
            per = {m: row[m]["seconds_per_task"] for m in ("tgmm", "em_seeded", "em_kmeanspp", "bayes")}
            out.append(
                f"| {row['N']} | "
                + " | ".join(f"{per[m]:.1e}" for m in per)
                + f" | 1/{1 / row['tgmm_over_bayes']:.0f} | {row['tgmm_over_em_kmeanspp']:.2f} |"
            )
        out.append("")
    return out


# The noise-conditioned arms (the small-N recipe with noise='conditioned'; label -> small_n_ablation/<name>.json):
# their known-noise cells join the ablation, and each has an unknown-noise section.
NOISE_ARMS = {
    "noise-conditioned": "noise_cond1",
    "noise-conditioned, 6000 steps": "noise_cond2",
    "noise-conditioned, 20000 steps": "noise_cond3",
    "noise-conditioned, 32000 steps": "noise_cond5",
    "curriculum to N = 128 (+6000 steps)": "noise_cond4",
    "curriculum to N = 128, two seedings": "noise_cond4_s2",
    "curriculum to N = 128, seedings averaged": "noise_cond4_avg",
    "same pool, true targets (+8000 steps)": "distill_truth",
    "distilled on bayes (+8000 steps)": "distill_bayes",
    "distilled on bayes, soft labels (+8000 steps)": "distill_bayes_resp",
    "3 read-out iterations (+4000 steps)": "iters3",
    "6 read-out iterations (+4000 steps)": "iters6",
}
# Arms whose learning targets are checked: label -> (its easy cells' JSON name, its speed benchmark's JSON file).
TARGET_ARMS = {
    "noise-conditioned, 20000 steps": ("noise_cond3_easy", "benchmark_speed_vs_bayes_cpu.json"),
    # no speed run of its own: the same network shape and seedings as the 20000-step one
    "noise-conditioned, 32000 steps": ("noise_cond5_easy", None),
    "curriculum to N = 128 (+6000 steps)": ("noise_cond4_easy", "benchmark_speed_vs_bayes_cond4_cpu.json"),
    "curriculum to N = 128, two seedings": (
        "noise_cond4_easy_s2",
        "benchmark_speed_vs_bayes_cond4_s2_cpu.json",
    ),
    "curriculum to N = 128, seedings averaged": ("noise_cond4_easy_avg", None),  # no speed run of its own
    # no speed runs of their own: the 20000-step model's network shape and seedings
    "same pool, true targets (+8000 steps)": ("distill_truth_easy", None),
    "distilled on bayes (+8000 steps)": ("distill_bayes_easy", None),
    "distilled on bayes, soft labels (+8000 steps)": ("distill_bayes_resp_easy", None),
    # the read-out iterations ablation: both from the 20000-step model, the same batches; no speed runs
    "3 read-out iterations (+4000 steps)": ("iters3_easy", None),
    "6 read-out iterations (+4000 steps)": ("iters6_easy", None),
}


def _repo_relative(path: str) -> str:
    """``path`` relative to the repository root where it lies under it (benchmarks recorded absolute paths);
    an absolute path of another checkout's ``runs/`` as ``runs/...``, so the report does not depend on where
    the repository was cloned."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    if not os.path.isabs(path):
        return path
    if os.path.commonpath([root, path]) == root:
        return os.path.relpath(path, root)
    parts = path.split(os.sep)
    return os.path.join(*parts[parts.index("runs") :]) if "runs" in parts else path


def build(results: str, scale: str):
    """The report's opening: the hard-regime limits, then the small-N ablation, its unknown-noise cells and
    the learning targets of each arm of TARGET_ARMS whose results exist."""
    if scale != "cpu":
        return None
    part = Part()
    hard = load_json(os.path.join(results, "hard_regime.json"))  # the measuring stick
    if hard:
        part.lead += hard_regime_section(hard, "hard_regime.png")

    def arm(name):
        return load_json(os.path.join(results, "small_n_ablation", f"{name}.json"))

    arms = {"no correction": arm("corr0"), "correction head": arm("corr1")}
    # the same recipe with noise='conditioned' (and at 4x the steps): their known-noise cells join the ablation
    noise_arms = {label: arm(name) for label, name in NOISE_ARMS.items()}
    noise_arms = {label: saved for label, saved in noise_arms.items() if saved}
    if arms["no correction"] and arms["correction head"]:
        part.lead += small_n_ablation_section({**arms, **noise_arms})
        for label, saved in noise_arms.items():
            part.lead += unknown_noise_section(saved, label)
        # the learning targets, on each arm with its easy cells and speed benchmark
        for label, (easy_name, speed_file) in TARGET_ARMS.items():
            if label in noise_arms:
                speed = load_json(os.path.join(results, speed_file)) if speed_file else None
                part.lead += learning_targets_section(noise_arms[label], label, speed, arm(easy_name))
    return part
