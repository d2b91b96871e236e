"""REPORT.md's baseline-speed section: the batched baselines against the per-task tools, from
``results/benchmark_baselines_<scale>.json`` (``python -m benchmarks.baselines``)."""

from __future__ import annotations

import os

from experiments.studies.base import Part, load_json, prose

# Speed targets of the batched baselines against the per-task tools, on the benchmark's 2-core CPU.
SPEED_TARGETS = {"em": 100.0, "em_kmeanspp": 100.0, "spectral": 200.0}


def speed_section(bench, scale):
    """Baseline speed against SPEED_TARGETS, with the quality both sides reached."""
    machine, settings = bench["machine"], bench["settings"]
    out = [
        prose(__file__, "heading"),
        "",
        prose(__file__, "source", scale=scale, machine=machine, settings=settings),
        "",
        "| shape | method | ours (s) | reference (s) | ratio | target | mean aligned l2 ours / reference |",
        "|---|---|---|---|---|---|---|",
    ]
    met, total = 0, 0
    for shape in bench["shapes"]:
        for name, row in shape["results"].items():
            target = SPEED_TARGETS.get(name)
            ok = target is not None and row["ratio"] >= target
            met, total = met + ok, total + (target is not None)
            verdict = "n/a" if target is None else f"{target:.0f}x ({'met' if ok else 'NOT met'})"
            out.append(
                f"| N={shape['N']} D={shape['D']} K={shape['K']} | {name} | {row['ours_s']:.3f} | "
                f"{row['reference_s']:.2f} | {row['ratio']:.0f}x | {verdict} | "
                f"{row['ours_l2_means']:.4f} / {row['reference_l2_means']:.4f} |"
            )
    out += ["", prose(__file__, "verdict", met=met, total=total), ""]
    return out


def build(results: str, scale: str) -> Part | None:
    bench = load_json(os.path.join(results, f"benchmark_baselines_{scale}.json"))
    return Part(sections=speed_section(bench, scale)) if bench else None
