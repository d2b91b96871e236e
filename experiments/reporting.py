"""Text for people: Markdown tables of evaluation results, the official tail-10 protocol read from training
logs, and the one method order used by tables, figures and the report."""

from __future__ import annotations

import json

import numpy as np
from etils import epath

from baselines import NAMES
from tgmm_jax.scoring import MODEL_METHOD


def format_stat(stat: dict) -> str:
    """'mean ± sem', with '(median m)' where the stat has one (JSON saved before medians has none)."""
    text = f"{stat['mean']:.3f} ± {stat['sem']:.3f}"
    return text + f" (median {stat['median']:.3f})" if "median" in stat else text


def format_table(summaries: dict[str, dict[int, dict]], metric: str = "l2") -> str:
    """Markdown table: one row per method, one column per K, ``format_stat`` of ``metric`` ('n/a' if none applied)."""
    ks = sorted({k for s in summaries.values() for k in s})
    lines = ["| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for method, summary in summaries.items():
        cells = []
        for k in ks:
            entry = summary.get(k)
            ok = entry is not None and np.isfinite(entry[metric]["mean"])
            cells.append(format_stat(entry[metric]) if ok else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


GAIN_TITLE = (
    "learned gain: reference l2 minus the model's l2 on the same tasks, mean ± sem (z); positive = the network "
    "beats the parameter-free machinery it is built on (em_seeded: its own skeleton; em_kmeanspp for a model "
    "without one)"
)


def format_gain(gain: dict) -> str:
    """'+mean ± sem (z z)' of a ``learned_gain`` entry (z from mean / sem where the entry has none)."""
    z = gain.get("z")
    if z is None:
        z = gain["mean"] / gain["sem"] if gain["sem"] else float("nan")
    return f"{gain['mean']:+.2g} ± {gain['sem']:.2g} (z {z:+.1f})"


def format_gain_table(summaries: dict[str, dict[int, dict]]) -> str:
    """Markdown table of every method with a ``learned_gain``: one row per method (named with its reference),
    one column per K; '' when no method has one."""
    ks = sorted({k for s in summaries.values() for k in s})
    rows = []
    for method, summary in summaries.items():
        gains = {k: e["learned_gain"] for k, e in summary.items() if "learned_gain" in e}
        if not gains:
            continue
        reference = next(iter(gains.values())).get("reference", "reference")
        cells = [format_gain(gains[k]) if k in gains else "n/a" for k in ks]
        rows.append(f"| {method} vs {reference} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    head = ["| learned gain | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    return "\n".join(head + rows)


def gain_verdict(summaries: dict[str, dict[int, dict]]) -> str:
    """One computed sentence per learned method: the range of its learned gain over K and whether any K
    differs from its reference beyond 2 standard errors ('' when no method has a gain)."""
    sentences = []
    for method, summary in summaries.items():
        gains = [e["learned_gain"] for e in summary.values() if "learned_gain" in e]
        if not gains:
            continue
        ref = gains[0].get("reference", "its reference")
        zs = [g.get("z", g["mean"] / g["sem"] if g["sem"] else 0.0) for g in gains]
        lo, hi = min(g["mean"] for g in gains), max(g["mean"] for g in gains)
        if all(abs(z) <= 2 for z in zs):
            verdict = f"no K differs from {ref} beyond 2 standard errors: the accuracy above is {ref}'s"
        elif all(z < -2 for z in zs):
            verdict = f"worse than {ref} at every K"
        else:
            better = sum(z > 2 for z in zs)
            worse = sum(z < -2 for z in zs)
            verdict = f"better than {ref} at {better} K, worse at {worse}, tied at {len(zs) - better - worse}"
        sentences.append(
            f"**What the network adds ({method})**: learned gain {lo:+.2g} to {hi:+.2g} over K (|z| up to"
            f" {max(abs(z) for z in zs):.1f}); {verdict}."
        )
    return " ".join(sentences)


def summaries_from_cells(cells: list[dict], n: int) -> dict[str, dict[int, dict]]:
    """{method: {K: entry}} for one N, the shape ``format_table`` takes."""
    out: dict[str, dict[int, dict]] = {}
    for cell in cells:
        if cell["N"] == n:
            out.setdefault(cell["method"], {})[cell["K"]] = cell
    return out


def markdown_report(results: dict) -> str:
    """Markdown tables of a results dict (``evaluate_methods`` or ``training_tail_protocol``), one block per N."""
    blocks = [f"Protocol: {results['protocol']}."]
    for n in results["ns"]:
        summaries = summaries_from_cells(results["cells"], n)
        blocks.append(f"### N = {n}, mean shift {results.get('mean_shift', 0.0)}")
        for metric, title in (
            ("l2", "l2 error (means + weights, optimal alignment)"),
            ("l2_official", "l2 under the official code's inverse-permutation alignment (comparison only)"),
            ("cluster_acc", "clustering accuracy"),
            ("oracle_gap", "log-likelihood gap to the true parameters (per point)"),
        ):
            blocks.append(f"{title}:\n\n{format_table(summaries, metric)}")
        gains = format_gain_table(summaries)
        if gains:
            blocks.append(f"{GAIN_TITLE}:\n\n{gains}\n\n{gain_verdict(summaries)}")
        rows = []
        for method, summary in summaries.items():
            na = ", ".join(
                f"K={k}: {e['not_applicable']:.0%}" for k, e in sorted(summary.items()) if e["not_applicable"]
            )
            seconds = next(iter(summary.values())).get("seconds")
            timing = f"{seconds:.2f} s" if seconds is not None else "n/a"
            rows.append(f"| {method} | {timing} | {na or 'none'} |")
        blocks.append("| method | wall time (all K) | not applicable |\n|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(blocks)


def training_tail_protocol(workdir: str, rounds: int = 10) -> dict:
    """The official protocol from a training log: per (method, K), the mean of the last ``rounds`` evaluations.

    Standard errors are across rounds. Uses the evaluations logged in ``workdir/metrics.jsonl``.
    """
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path}")
    evals = [row for row in map(json.loads, path.read_text().splitlines()) if "eval" in row]
    if not evals:
        raise ValueError(f"{path} holds no evaluation rounds (was eval_every 0?)")
    config = json.loads((epath.Path(workdir) / "config.json").read_text())
    n = config["eval"]["n"] or config["task"]["n_max"]
    tail = evals[-rounds:]
    values: dict[tuple, list] = {}
    for row in tail:
        for key, value in row["eval"].items():
            method, k, metric = key.split("/")
            values.setdefault((method, int(k.removeprefix("K=")), metric), []).append(value)
    cells: dict[tuple, dict] = {}
    for (method, k, metric), vs in values.items():
        cell = cells.setdefault((method, k), {"method": method, "K": k, "N": n, "rounds": len(vs)})
        vs = np.asarray(vs, np.float64)
        if metric == "not_applicable":
            cell[metric] = float(vs.mean())
        else:
            sem = float(vs.std(ddof=1) / np.sqrt(vs.size)) if vs.size > 1 else float("nan")
            cell[metric] = {"mean": float(vs.mean()), "sem": sem}
    steps = f"steps {tail[0]['step']}..{tail[-1]['step']}"
    return {
        "protocol": f"training tail: mean of the last {len(tail)} evaluation rounds ({steps})",
        "ns": [n],
        "cells": list(cells.values()),
        "workdir": workdir,
    }


def ordered_methods(cells) -> list[str]:
    """The methods of result ``cells`` in a fixed order: TGMM, the registered baselines, then others sorted."""
    order = [MODEL_METHOD, *NAMES]
    present = dict.fromkeys(c["method"] for c in cells)
    return sorted(present, key=lambda m: (order.index(m) if m in order else len(order), m))
