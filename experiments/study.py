"""Shared steps of the study scripts: train (or resume) a model, evaluate it once, cache the JSON."""

from __future__ import annotations

import json
import os

from matplotlib.figure import Figure

from experiments import methods as methods_lib
from experiments.configs import paper, tiny
from tgmm_jax import scoring
from tgmm_jax.train.checkpoint import Checkpoints
from tgmm_jax.train.restore import load_run

SCALES = ("cpu", "paper")


def train_config(scale: str, dim: int, n_max: int, steps: int | None = None):
    """The study's training config: 'cpu' = the tiny recipe (4000 steps unless ``steps``), 'paper' = paper.py."""
    if scale == "cpu":
        return tiny.get_config(f"d={dim},n={n_max},steps={steps or 4000}")
    if scale == "paper":
        config = paper.get_config(f"d={dim},n={n_max}")
        if steps:
            config.total_steps = steps
        return config
    raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")


def _latest_step(workdir: str) -> int | None:
    checkpoints = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(checkpoints):
        return None
    with Checkpoints(checkpoints, read_only=True) as ckpts:
        return ckpts.latest_step()


def train_model(train_config, workdir: str) -> None:
    """Trains ``train_config`` in ``workdir``, resuming an interrupted run; a finished run is left as it is.

    A run that stops early (SIGTERM: the trainer saves and returns) ends the study with SystemExit, so
    that a half-trained model is never evaluated as if it were finished; rerunning resumes it.
    """
    latest = _latest_step(workdir)
    if latest is not None and latest >= train_config.total_steps:
        return
    methods_lib.train(train_config, workdir)
    latest = _latest_step(workdir)
    if latest is None or latest < train_config.total_steps:
        raise SystemExit(
            f"training in {workdir} stopped at step {latest} of {train_config.total_steps} (preempted?); "
            "rerun the same command to resume"
        )


def evaluate_cached(
    workdir: str,
    output: str,
    *,
    tasks_per_cell: int,
    ns,
    seed: int,
    mean_shift: float = 0.0,
    methods=None,
    force: bool = False,
) -> dict:
    """``scoring.evaluate_methods`` on the workdir's latest checkpoint, cached in ``output`` (JSON).

    Tasks of one N come from (seed, N) alone and the baselines do not depend on the model, so a cache made
    with the same evaluation settings is reused as far as it goes: all of it for the same checkpoint step
    (only the missing N are evaluated), and the baselines' cells for another step, when the tasks'
    fingerprints match (only TGMM is evaluated again).
    """
    run = load_run(workdir)
    settings = dict(tasks_per_cell=tasks_per_cell, eval_seed=seed, mean_shift=float(mean_shift))
    all_methods, params, references = methods_lib.methods_for_run(run, methods)
    cached = None
    if not force and os.path.exists(output):
        with open(output) as f:
            cached = json.load(f)
        if not all(cached.get(k) == v for k, v in settings.items()):
            cached = None
    same_step = cached is not None and cached.get("step") == run.step
    cells, fingerprints, results = [], {}, None
    if cached:
        keep = lambda c: same_step or c["method"] != scoring.MODEL_METHOD
        cells = [c for c in cached["cells"] if keep(c) and c["method"] in all_methods]
        fingerprints = dict(cached["task_fingerprints"])

    def evaluate(methods, n):
        return scoring.evaluate_methods(
            methods,
            run.spec,
            params=params,
            tasks_per_cell=tasks_per_cell,
            ns=(n,),
            seed=seed,
            mean_shift=mean_shift,
            references=references,
        )

    for n in ns:
        have = {c["method"] for c in cells if c["N"] == n}
        # a learned method runs with its reference, so its learned gain is paired on the same tasks
        have -= {references[m] for m in references if m not in have}
        todo = {name: fn for name, fn in all_methods.items() if name not in have}
        if not todo:
            continue
        part = evaluate(todo, n)
        if str(n) in fingerprints and part["task_fingerprints"][str(n)] != fingerprints[str(n)]:
            # the cached cells were made on other tasks: evaluate every method again
            cells = [c for c in cells if c["N"] != n]
            part = evaluate(all_methods, n)
        cells = [c for c in cells if not (c["N"] == n and c["method"] in todo)] + part["cells"]
        fingerprints.update(part["task_fingerprints"])
        results = part
    if results is None:  # nothing was missing
        if same_step:
            return cached
        results = dict(cached)  # only baselines asked for: the cache holds them all, now for this step
    results.update(
        ns=sorted({c["N"] for c in cells}),
        cells=cells,
        task_fingerprints={str(n): fingerprints[str(n)] for n in sorted({c["N"] for c in cells})},
        workdir=workdir,
        step=run.step,
    )
    results = json.loads(json.dumps(results))  # what a later call reads back from the cache
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w") as f:
        json.dump(results, f, indent=1)
    return results


def mean_sem(cells, method, metric="l2", **where):
    """(mean, sem) of ``metric`` for the one cell of ``method`` matching ``where`` (e.g. K=3, N=128)."""
    for cell in cells:
        if cell["method"] == method and all(cell[k] == v for k, v in where.items()):
            return cell[metric]["mean"], cell[metric]["sem"]
    return float("nan"), float("nan")


def define_common_flags(root: str, eval_seed: int) -> None:
    """Flags every study takes: scale, steps, tasks per cell, evaluation seed, runs root, results dir."""
    from absl import flags

    flags.DEFINE_enum("scale", "cpu", list(SCALES), "Model and recipe: CPU-sized or the paper's.")
    flags.DEFINE_integer("steps", None, "Override the training steps.")
    flags.DEFINE_integer("tasks_per_cell", 1280, "Evaluation tasks per (K, N).")
    flags.DEFINE_integer("eval_seed", eval_seed, "Seed of the evaluation tasks (the same for every method).")
    flags.DEFINE_string("root", root, "Parent of the training workdirs.")
    flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")


def shipped_checkpoint_text(name: str) -> str:
    """Which shipped checkpoint ``name`` a study used: its source workdir, step and slot seedings (for the JSON)."""
    from tgmm_jax import pretrained

    with open(os.path.join(pretrained.pretrained_path(name), pretrained.CONFIG_FILE)) as f:
        meta = json.load(f)
    model = meta.get("model", {})
    return (
        f"computed with the shipped `{name}` checkpoint ({meta.get('source')}, step {meta.get('step')}, "
        f"read out with slot_init {model.get('slot_init', 'learned')!r})"
    )


def write_json(results_dir: str, name: str, payload: dict) -> None:
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, name), "w") as f:
        json.dump(payload, f, indent=1)


def panel_figure(panels: list, path: str, *, xlabel: str, title, xlog: bool = False) -> None:
    """One log-y panel per entry of ``panels``: a list of (panel key, [(label, xs, [(mean, sem)], style)]).

    ``title(key)`` names a panel. Saves a PNG at ``path``.
    """
    labels = list(dict.fromkeys(label for _, series in panels for label, *_ in series))
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # one colour per method in every panel
    fig = Figure(
        figsize=(4 * len(panels), 3.4)
    )  # the object-oriented API: no pyplot state, no display backend
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (key, series) in zip(axes[0], panels):
        for label, xs, stats, style in series:
            ax.errorbar(
                xs,
                [m for m, _ in stats],
                yerr=[s for _, s in stats],
                marker="o",
                capsize=2,
                label=label,
                linestyle=style,
                color=colors[label],
            )
        if xlog:
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title(key))
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel("l2 error (mean ± sem)")
    handles = {}
    for ax in axes[0]:  # every method once, even one that is missing from the last panel
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0][-1].legend(list(handles.values()), list(handles), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
