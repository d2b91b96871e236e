"""Regenerates ``results/REPORT.md`` from the studies' saved JSON (no training, no evaluation).

    python -m experiments.make_report [--results=results] [--scale=cpu]

Every number in the report is read from the JSON files the studies wrote. It walks the registry of studies
(``experiments.studies.registry``): each study's report builder reads its own JSON, computes its verdicts on
the paper's claims with the rules stated beside them, and fills its fixed prose (the Markdown beside it). The
report's own frame is in ``make_report.md``.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from absl import app, flags

from experiments.studies import registry
from experiments.studies.base import load_json as _load
from experiments.studies.base import prose

flags.DEFINE_string("results", "results", "Directory holding the studies' JSON and figures.")
flags.DEFINE_string("scale", "cpu", "Which scale's results to report (cpu or paper).")
FLAGS = flags.FLAGS


def _previous_descriptions(report_path):
    """workdir -> its line in an earlier REPORT.md ("- `workdir`: ..."), for runs no longer on disk."""
    if not os.path.exists(report_path):
        return {}
    with open(report_path) as f:
        lines = [line.strip() for line in f if line.startswith("- `")]
    out = {}
    for line in lines:  # keyed by workdir and by (workdir, step): one workdir can be listed at two steps
        workdir = line[3:].split("`", 1)[0]
        step = re.search(r"checkpoint step (\d+)", line)
        out.setdefault(workdir, line[2:])
        if step:
            out[(workdir, int(step.group(1)))] = line[2:]
    return out


def _run_description(workdir, step, previous=None):
    """Config, evaluated checkpoint step, device and training speed of one workdir, from its own files.

    ``runs/`` is not versioned: on a checkout without the workdir, its line from ``previous`` (the last
    report's descriptions) is kept rather than lost."""
    config = _load(os.path.join(workdir, "config.json"))
    if config is None:
        previous = previous or {}
        return previous.get((workdir, step), previous.get(workdir, f"`{workdir}`: not found"))
    env = _load(os.path.join(workdir, "environment.json")) or []
    device = (
        ", ".join(sorted({f"{e['device_count']}x {e['device_kind']} ({e['backend']})" for e in env}))
        or "not recorded"
    )
    speeds = []
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            speeds = [r["steps_per_sec"] for r in map(json.loads, f) if "steps_per_sec" in r][
                1:
            ]  # skip compile
    m, t = config["model"], config["task"]
    speed = f"{np.median(speeds):.1f} steps/s (median)" if speeds else "n/a"
    hours = step / np.median(speeds) / 3600 if speeds else float("nan")
    return (
        f"`{workdir}`: d={t['dim']}, N_max={t['n_max']}, {m['backbone']} {m['num_layers']}L x {m['width']}, "
        f"objective {config['objective']}, checkpoint step {step} x {config['tasks_per_k']} tasks/K, "
        f"lr {config['optim']['learning_rate']}; trained on {device} at {speed} (~{hours:.2f} h)"
    )


def build_report(results: str, scale: str) -> str:
    """REPORT.md's text: every registered study's part, in the registry's order."""
    parts = [p for study in registry.STUDIES if study.report and (p := study.report(results, scale))]
    if not any(p.sections for p in parts):
        raise app.UsageError(f"no study results for scale {scale!r} in {results}")
    lines = [prose(__file__, "title", scale=scale), "", prose(__file__, "protocol"), ""]
    if scale == "cpu":
        lines += [prose(__file__, "scale_cpu"), ""]
    for part in parts:
        lines += part.lead
    previous = _previous_descriptions(os.path.join(results, "REPORT.md"))
    runs = dict.fromkeys(run for part in parts for run in part.runs)
    lines += ["## What was run", ""]
    lines += [f"- {_run_description(w, step, previous)}" for w, step in runs] + [""]
    lines += [prose(__file__, "learned_gain"), ""]
    lines += ["## The paper's claims against our numbers", ""]
    for part in parts:
        for claim, text in part.claims.items():
            lines += [f"### {claim}", "", text, ""]
    for part in parts:
        lines += part.sections
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    text = build_report(FLAGS.results, FLAGS.scale)
    path = os.path.join(FLAGS.results, "REPORT.md")
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
