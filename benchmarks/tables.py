"""Markdown tables of the benchmark JSONs (the tables of results/PERFORMANCE.md), and the H100 estimate.

    python -m benchmarks.tables --train-step results/benchmark_train_step_cpu.json \
        --evaluate results/benchmark_evaluate_cpu.json
"""

from __future__ import annotations

import argparse
import json

H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM, dense bf16 tensor-core peak
ASSUMED_MFUS = (0.05, 0.10, 0.20)


def _load(load) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def _rate(side: dict, peak: float) -> str:
    """Achieved GFLOP/s (% of peak) from the analytic count of the side's step and its median time."""
    flops = side.get("flops_per_step_analytic", side["flops_per_step"])  # the torch side's count is analytic
    gflops = flops / (side["ms_per_step_median"] / 1e3) / 1e9
    return f"{gflops:.1f} ({100 * gflops / peak:.1f}%)"


def train_step_table(report: dict) -> str:
    """The train-step table; FLOP/s use the analytic count of each step (the flops_per_step of
    older JSON files was XLA's count, which a loop body hides work from)."""
    peak = report["peak"]
    lines = [
        f"float32 matmul peak {peak['jax']['size']}^2: JAX {peak['jax']['best_gflops_per_s']:.1f} GFLOP/s"
        + (f", torch {peak['torch']['best_gflops_per_s']:.1f} GFLOP/s" if "torch" in peak else "")
        + f"; fractions below use {peak['used_gflops_per_s']:.1f}.",
        "",
        (
            "| size | ours ms/step | torch ms/step (2 thr) | torch ms (1 thr) | ours/torch time | speed-up | "
            "GFLOP/step (analytic / XLA / torch counter) | ours GFLOP/s (% peak) | torch GFLOP/s (% peak) | "
            "load before -> after |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["sizes"]:
        o, t, t1 = row["ours"], row.get("torch"), row.get("torch_1thread")
        xla = o.get("flops_per_step_xla", o.get("flops_per_step_xla_scanned_program") or o["flops_per_step"])
        flops = f"{o['flops_per_step_analytic'] / 1e9:.1f} / {xla / 1e9:.1f}"
        flops += f" / {t['flops_per_step_torch_counter'] / 1e9:.1f}" if t else " / -"
        lines.append(
            f"| {row['size']} | {o['ms_per_step_median']:.0f} | {t['ms_per_step_median']:.0f} | "
            if t
            else f"| {row['size']} | {o['ms_per_step_median']:.0f} | - | "
        )
        lines[-1] += f"{t1['ms_per_step_median']:.0f} | " if t1 else "- | "
        if t:
            lines[-1] += f"{row['time_ratio_ours_over_torch']:.2f} | {row['speedup_vs_torch']:.2f}x | "
        else:
            lines[-1] += "- | - | "
        used = peak["used_gflops_per_s"]
        lines[-1] += f"{flops} | {_rate(o, used)} | " + (f"{_rate(t, used)} | " if t else "- | ")
        lines[-1] += f"{_load(o['load_before'])} -> {_load(o['load_after'])} |"
    return "\n".join(lines)


def evaluate_table(report: dict) -> str:
    s = report["settings"]
    ks = [f"K={k}" for k in s["ks"]]
    lines = [
        (
            f"{s['tasks_per_cell']} tasks per cell, d = {s['d']}, N = {s['n']}; warm seconds (median of "
            f"{s['repeats']}), compile reported apart."
        ),
        "",
        "| method | compile + first call s | " + " | ".join(f"{k} s" for k in ks) + " | l2 K=5 | load |",
        "|---|---|" + "---|" * len(ks) + "---|---|",
    ]
    for name, row in report["methods"].items():
        cells = " | ".join(f"{row['cells'][k]['seconds_median']:.3f}" for k in ks)
        lines.append(
            f"| {name} | {row['first_call_s']:.1f} | {cells} | {row['cells']['K=5']['l2_mean']:.3f} | "
            f"{_load(row['load_before'])} -> {_load(row['load_after'])} |"
        )
    return "\n".join(lines)


def h100_estimate(report: dict, steps: int = 100_000) -> str:
    rows = [r for r in report["sizes"] if r["size"] == "paper"]
    if not rows:
        return "(no paper-size row in the train-step JSON)"
    flops = rows[0]["ours"]["flops_per_step_analytic"]
    lines = [
        (
            f"ESTIMATE, not a measurement: paper-size step = {flops / 1e12:.3f} TFLOP (analytic count); "
            f"H100 dense bf16 peak {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s."
        ),
        "",
        "| assumed MFU | ms per step | 100k steps |",
        "|---|---|---|",
    ]
    for mfu in ASSUMED_MFUS:
        seconds = flops / (H100_BF16_DENSE_TFLOPS * 1e12 * mfu)
        lines.append(f"| {100 * mfu:.0f}% | {1e3 * seconds:.1f} | {seconds * steps / 60:.0f} min |")
    return "\n".join(lines)


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-step")
    parser.add_argument("--evaluate")
    args = parser.parse_args(argv)
    if args.train_step:
        report = _read(args.train_step)
        print(train_step_table(report), "\n", h100_estimate(report), sep="\n")
    if args.evaluate:
        print("", evaluate_table(_read(args.evaluate)), sep="\n")


if __name__ == "__main__":
    main()
