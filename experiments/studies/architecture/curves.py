"""Training-loss comparison of the architecture study's runs, read from their logs (no JAX, no evaluation).

    python -m experiments.studies.architecture.curves [--root=runs/architecture] [--results=results]

Every variant of ``experiments/studies/architecture/run.py`` trains on the same batch stream (same seed; each step's
tasks are drawn from (seed, step) only, fresh every step), and the trainer logs the mean loss of each window
of steps on its batches before the update. So the logged loss at a step is an estimate of the population
objective of the network at that step, comparable across variants with the same objective at equal steps.
Writes ``architecture_curves.json`` and ``architecture_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

WINDOW = 500  # steps averaged for the end-of-training comparison


def read_run(workdir: str) -> dict | None:
    """Config summary, logged losses ([step, loss]) and median ms per step of one workdir (None if absent)."""
    metrics, config_path = os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "config.json")
    if not (os.path.exists(metrics) and os.path.exists(config_path)):
        return None
    with open(config_path) as f:
        config = json.load(f)
    with open(metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "train" in r]
    if not rows:
        return None
    speeds = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r]
    model = config["model"]
    return dict(
        workdir=workdir,
        step=rows[-1]["step"],
        total_steps=config["total_steps"],
        objective=config["objective"],
        resp_weight=config.get("resp_weight", 0.0),
        variant=config["task"]["variant"],
        model={k: model[k] for k in ("backbone", "readout", "readin", "num_layers", "width")},
        ms_per_step=1000.0 / float(np.median(speeds[1:] or speeds)),
        loss_curve=[[r["step"], r["train"]["loss"]] for r in rows],
    )


def window_stat(curve, last: int, window: int = WINDOW) -> dict:
    """Mean and sem over the logged windows with last - window < step <= last (each a mean over log_every steps)."""
    values = np.asarray([loss for step, loss in curve if last - window < step <= last], np.float64)
    if values.size == 0:
        return dict(mean=float("nan"), sem=float("nan"), windows=0)
    sem = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
    return dict(mean=float(values.mean()), sem=float(sem), windows=int(values.size))


def collect(root: str) -> dict:
    runs = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        run = read_run(os.path.join(root, name))
        if run is not None:
            runs[name] = run
    return dict(root=root, window=WINDOW, runs=runs)


def plot(payload: dict, path: str) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for i, (name, run) in enumerate(payload["runs"].items()):
        if run["resp_weight"] or run["variant"] != "isotropic":
            continue  # another loss: not on the same axis
        steps, losses = zip(*run["loss_curve"])
        ax.plot(steps, losses, label=f"{name} ({run['step']} steps)", color=colormaps["tab10"](i % 10))
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (est_matched, 50-step means)")
    ax.set_yscale("log")
    ax.set_title("architecture study: training loss, same batch stream (CPU scale)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/architecture")
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    payload = collect(args.root)
    if not payload["runs"]:
        raise SystemExit(f"no training logs under {args.root}")
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "architecture_curves.json"), "w") as f:
        json.dump(payload, f, indent=1)
    plot(payload, os.path.join(args.results, "architecture_curves.png"))
    print(f"wrote {args.results}/architecture_curves.json ({len(payload['runs'])} runs)")


if __name__ == "__main__":
    main()
