"""Architecture study (RQ3 and ablations): named variants trained at one budget, scored once.

    python -m experiments.studies.architecture.run --sections=timing             # ms/step of every variant
    nohup python -m experiments.studies.architecture.run > runs/architecture.log 2>&1 &

Every variant trains with the same steps, tasks per K, data seed and task family (d, N_max); only the network
(and, for the clustering TGMM, its own recipe) differs. Each trains in ``--root/<name>`` (resumable; a finished
run is reused) and is evaluated once, with EM (official init), EM with k-means++ and spectral, on the same
fresh tasks at N = N_max. Sections:
  isotropic    the backbone (set / gpt2 / mamba2), read-out (attentive / naive / cluster) and width/depth
               variants on isotropic tasks;
  anisotropic  the paper's model with its scale head and the clustering TGMM on anisotropic tasks (diagonal
               per-component scales), against diagonal EM; spectral is not applicable there;
  timing       milliseconds per training step of each variant (a few steps in a scratch directory).
Writes ``architecture_study.json`` and ``architecture_study.png`` in ``--results``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags, logging

from experiments import methods as methods_lib
from experiments import study
from experiments.configs import cluster, tiny
from tgmm_jax import scoring
from tgmm_jax.train.restore import load_run

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command: importing this module defines none."""
    flags.DEFINE_integer("dim", 8, "Data dimension of every task.")
    flags.DEFINE_integer("n", 128, "N_max of training (N from N_max / 2) and N of the evaluation tasks.")
    flags.DEFINE_integer("steps", 1500, "Training steps of every variant.")
    flags.DEFINE_integer("tasks_per_k", 16, "Training tasks per K per step (K in 2..5).")
    flags.DEFINE_integer("tasks_per_cell", 256, "Evaluation tasks per K.")
    flags.DEFINE_integer("eval_seed", 20261215, "Seed of the evaluation tasks (the same for every variant).")
    flags.DEFINE_integer("timing_steps", 30, "Steps of each timing run.")
    flags.DEFINE_string("root", "runs/architecture", "Parent of the training workdirs.")
    flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")
    flags.DEFINE_list(
        "sections", ["isotropic", "anisotropic"], "Sections to run (isotropic, anisotropic, timing)."
    )
    flags.DEFINE_list("variants", [], "Only these variants (default: all of the sections').")
    flags.DEFINE_bool(
        "train_only", False, "Train (or resume) the selected variants and stop (parallel runs)."
    )
    flags.DEFINE_bool(
        "eval_only", False, "Never train: wait for each variant's run (trained elsewhere) to finish."
    )
    flags.DEFINE_integer(
        "min_steps",
        None,
        "With --eval_only: evaluate a run's latest checkpoint once it reaches this step (default --steps).",
    )
    flags.DEFINE_list(
        "baselines", [], "Only these baselines (default: em, em_kmeanspp and, isotropic only, spectral)."
    )


REFERENCE = "set-2x64"  # the tiny recipe's network: every other isotropic variant changes one thing
ISO_BASELINES = ("em", "em_kmeanspp", "spectral")
ANISO_BASELINES = ("em", "em_kmeanspp")  # diagonal EM; spectral does not apply to the anisotropic variant

# name -> (section, what it tests, recipe, model overrides). Recipe 'tiny' = configs/tiny.py (set, 2L x 64,
# est_matched, Adam 2e-3 constant); 'cluster' = configs/cluster.py at one d (its own schedule and losses).
VARIANTS = {
    REFERENCE: ("isotropic", "reference (tiny recipe)", "tiny", {}),
    "gpt2-2x64": ("isotropic", "backbone: causal gpt2", "tiny", dict(backbone="gpt2")),
    "set-2x64-naive": ("isotropic", "read-out: naive last token", "tiny", dict(readout="naive")),
    "set-2x32": ("isotropic", "width 32", "tiny", dict(width=32, num_heads=2)),
    "set-2x128": ("isotropic", "width 128", "tiny", dict(width=128)),
    "set-1x64": ("isotropic", "depth 1", "tiny", dict(num_layers=1)),
    "set-4x64": ("isotropic", "depth 4", "tiny", dict(num_layers=4)),
    "cluster-3x64": ("isotropic", "ours: clustering TGMM (one d)", "cluster", {}),
    "mamba2-2x64": ("isotropic", "backbone: mamba2 (8 heads, state 16)", "tiny", dict(backbone="mamba2")),
    "aniso-set-2x64": ("anisotropic", "paper read-out with scale head", "tiny", {}),
    "aniso-cluster-3x64": ("anisotropic", "ours: clustering read-out (scales too)", "cluster", {}),
}


def variant_config(name: str, *, dim: int, n: int, steps: int, tasks_per_k: int):
    """The training config of variant ``name`` at the study's budget (same steps, batch, data seed)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    section, _, recipe, overrides = VARIANTS[name]
    if recipe == "tiny":
        config = tiny.get_config(f"d={dim},n={n},steps={steps}")
    else:
        config = cluster.get_config(f"d={dim},n={n},steps={steps},dims=,tasks_per_k={tasks_per_k}")
    config.seed = 0
    config.tasks_per_k = tasks_per_k
    config.checkpoint_every = max(min(250, steps // 4), 1)
    config.log_every = max(min(50, steps // 10), 1)
    config.eval_every = 0  # evaluated once, after training, on the study's tasks
    config.tensorboard = False
    config.task.variant = section
    config.eval.baselines = ()
    for field, value in overrides.items():
        config.model[field] = value
    return config


def _selected(section: str) -> list[str]:
    names = [v for v, (s, *_) in VARIANTS.items() if s == section]
    return [v for v in names if v in FLAGS.variants] if FLAGS.variants else names


def _budget() -> dict:
    return dict(dim=FLAGS.dim, n=FLAGS.n, steps=FLAGS.steps, tasks_per_k=FLAGS.tasks_per_k)


def _num_params(params) -> int:
    import jax

    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def _train_speed(workdir: str) -> tuple[float, float]:
    """(training wall seconds, median ms per step after the first logged window) from the run's logged speeds.

    The first window holds the compilation; a resumed run's first window after the resume holds it again.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return float("nan"), float("nan")
    total, last, speeds = 0.0, 0, []
    with open(path) as f:
        for row in map(json.loads, f):
            if "steps_per_sec" in row:
                total += (row["step"] - last) / row["steps_per_sec"]
                last = row["step"]
                speeds.append(row["steps_per_sec"])
    return total, 1000.0 / float(np.median(speeds[1:] or speeds))


def _loss_curve(workdir: str) -> list:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [[r["step"], r["train"]["loss"]] for r in map(json.loads, f) if "train" in r]


def _evaluate(name: str, workdir: str, baselines: tuple, baseline_cells: dict) -> dict:
    """TGMM of the variant on the study's tasks; the baselines once per section (their cells are reused)."""
    run = load_run(workdir)
    names = (scoring.MODEL_METHOD,) + tuple(b for b in baselines if b not in baseline_cells)
    methods, params, references = methods_lib.methods_for_run(run, names)
    res = scoring.evaluate_methods(
        methods,
        run.spec,
        params=params,
        references=references,
        tasks_per_cell=FLAGS.tasks_per_cell,
        ns=(FLAGS.n,),
        seed=FLAGS.eval_seed,
    )
    for cell in res["cells"]:  # the model's reference (its skeleton) has this model's settings: not shared
        if cell["method"] not in (scoring.MODEL_METHOD, *references.values()):
            baseline_cells.setdefault(cell["method"], []).append(cell)
    model = json.loads(run.config.to_json())["model"]
    return dict(
        name=name,
        tests=VARIANTS[name][1],
        recipe=VARIANTS[name][2],
        workdir=workdir,
        step=run.step,
        num_params=_num_params(run.params),
        model=dict(
            backbone=model["backbone"],
            readout=model["readout"],
            readin=model["readin"],
            num_layers=model["num_layers"],
            width=model["width"],
        ),
        train_seconds=_train_speed(workdir)[0],
        ms_per_step=_train_speed(workdir)[1],
        loss_curve=_loss_curve(workdir),
        fingerprint=res["task_fingerprints"][str(FLAGS.n)],
        cells=[c for c in res["cells"] if c["method"] == scoring.MODEL_METHOD],
    )


def run_section(section: str, baselines: tuple) -> dict:
    """Trains (or resumes) and evaluates every selected variant of ``section``; the baselines beside them."""
    variants, baseline_cells = [], {}
    if FLAGS.baselines:
        baselines = tuple(b for b in baselines if b in FLAGS.baselines)
    for name in _selected(section):
        workdir = os.path.join(FLAGS.root, name)
        if FLAGS.eval_only:
            while (study._latest_step(workdir) or 0) < (FLAGS.min_steps or FLAGS.steps):
                time.sleep(30)
        else:
            study.train_model(variant_config(name, **_budget()), workdir)
        variants.append(_evaluate(name, workdir, baselines, baseline_cells))
        print(f"{section}: {name} done", flush=True)
    fingerprints = {v["fingerprint"] for v in variants}
    if len(fingerprints) > 1:
        raise RuntimeError(f"the variants of {section} were evaluated on different tasks: {fingerprints}")
    return dict(variants=variants, baselines=baseline_cells)


def timing(names) -> dict:
    """Milliseconds per training step of each variant (median of the logged windows after the first)."""
    out = {}
    for name in names:
        steps = FLAGS.timing_steps
        config = variant_config(name, **dict(_budget(), steps=steps))
        config.log_every = max(steps // 3, 1)
        config.checkpoint_every = steps
        workdir = tempfile.mkdtemp(prefix=f"timing_{name}_")
        try:
            methods_lib.train(config, workdir)
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                speeds = [r["steps_per_sec"] for r in map(json.loads, f) if "steps_per_sec" in r]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        out[name] = 1000.0 / float(np.median(speeds[1:] or speeds))
        print(f"timing {name}: {out[name]:.0f} ms/step", flush=True)
    return out


def _saved(path: str, budget: dict) -> dict:
    """The saved JSON if it was made with ``budget``, else a new payload."""
    if os.path.exists(path):
        with open(path) as f:
            payload = json.load(f)
        if payload.get("budget") == budget:
            return payload
    return dict(budget=budget)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if FLAGS.train_only:
        for section in ("isotropic", "anisotropic"):
            for name in _selected(section) if section in FLAGS.sections else ():
                study.train_model(variant_config(name, **_budget()), os.path.join(FLAGS.root, name))
                print(f"trained {name}", flush=True)
        return
    path = os.path.join(FLAGS.results, "architecture_study.json")
    budget = dict(_budget(), tasks_per_cell=FLAGS.tasks_per_cell, eval_seed=FLAGS.eval_seed, n_eval=FLAGS.n)
    computed = {}
    if "timing" in FLAGS.sections:
        names = FLAGS.variants or list(VARIANTS)
        computed["ms_per_step"] = timing(names)
    if "isotropic" in FLAGS.sections:
        computed["isotropic"] = run_section("isotropic", ISO_BASELINES)
    if "anisotropic" in FLAGS.sections:
        computed["anisotropic"] = run_section("anisotropic", ANISO_BASELINES)
    payload = _saved(path, budget)  # read now: another section may have been saved meanwhile
    payload.update(computed)
    payload["variants_defined"] = {name: [section, tests] for name, (section, tests, *_) in VARIANTS.items()}
    study.write_json(FLAGS.results, "architecture_study.json", payload)
    plot(payload, os.path.join(FLAGS.results, "architecture_study.png"))


def _stats(cells, k, metric="l2"):
    for c in cells:
        if c["K"] == k and c["not_applicable"] < 1.0:
            return c[metric]["mean"], c[metric]["sem"]
    return float("nan"), float("nan")


def plot(payload: dict, path: str) -> None:
    """One panel per section: l2 against K of every variant (solid) and baseline (dashed)."""
    panels = []
    for section in ("isotropic", "anisotropic"):
        res = payload.get(section)
        if not res or not res["variants"]:
            continue
        ks = sorted({c["K"] for v in res["variants"] for c in v["cells"]})
        baselines = [(b, ks, [_stats(cells, k) for k in ks], "--") for b, cells in res["baselines"].items()]
        groups = {section: [v["name"] for v in res["variants"]]}
        if section == "isotropic":  # two panels: backbones and read-outs; width and depth
            scale = [
                v
                for v in ("set-1x64", REFERENCE, "set-4x64", "set-2x32", "set-2x128")
                if v in groups[section]
            ]
            groups = {"backbone, read-out": [v for v in groups[section] if v == REFERENCE or v not in scale]}
            groups["width, depth"] = scale
        for title, names in groups.items():
            chosen = [v for v in res["variants"] if v["name"] in names]
            series = [(v["name"], ks, [_stats(v["cells"], k) for k in ks], "-") for v in chosen]
            panels.append((title, series + baselines))
        if section == "anisotropic":
            series = [
                (v["name"], ks, [_stats(v["cells"], k, "l2_scales") for k in ks], "-")
                for v in res["variants"]
            ]
            series += [
                (b, ks, [_stats(cells, k, "l2_scales") for k in ks], "--")
                for b, cells in res["baselines"].items()
            ]
            panels.append(("anisotropic: scales", series))
    if panels:
        _figure(panels, path, payload["budget"])


def _figure(panels, path: str, budget: dict) -> None:
    """Log-y panels of (mean ± sem) against K, each with its own legend; one colour per label everywhere."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(label for _, series in panels for label, *_ in series))
    colors = {label: colormaps["tab20"](i % 20) for i, label in enumerate(labels)}
    fig = Figure(figsize=(4.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels):
        for label, xs, stats, style in series:
            ax.errorbar(
                xs,
                [m for m, _ in stats],
                yerr=[e for _, e in stats],
                marker="o",
                capsize=2,
                linestyle=style,
                color=colors[label],
                label=label,
            )
        ax.set_yscale("log")
        ax.set_xticks(sorted({x for _, xs, _, _ in series for x in xs}))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("K")
        ax.legend(fontsize=6)
        ax.set_ylabel("l2 of the scales" if "scales" in title else "l2 (mean ± sem)", fontsize=8)
    fig.suptitle(f"d = {budget['dim']}, N = {budget['n']}, {budget['steps']} steps (CPU scale)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    define_flags()
    app.run(main)
