"""Exports a training workdir's checkpoint as package data: ``tgmm_jax/pretrained/NAME/`` (parameters only).

    python -m experiments.export_pretrained --workdir=runs/cluster --name=cluster \
        --card_results=results/cluster_eval.json \
        --command="python -m experiments.train --config=experiments/configs/cluster.py:steps=8000 --workdir=runs/cluster"

Writes params.msgpack (float32 parameter pytree), config.json (ModelConfig + TaskSpec + step) and MODEL_CARD.md
(config, steps, device, wall time, and the evaluation table of ``--card_results``, a JSON written by
``experiments.evaluate --output``). ``tgmm_jax.pretrained.load_pretrained(NAME)`` reads it back.

    python -m experiments.export_pretrained --name=cluster --refresh_card \
        --card_results=results/pretrained/cluster_eval.json

rewrites only the card's evaluation section of an already shipped checkpoint (no workdir needed; the weights
and config are left as they are). The evaluation must be of that checkpoint: its step and seedings must match.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import app, flags

from tgmm_jax import pretrained
from tgmm_jax.train.restore import load_run
from tgmm_jax.trained import with_slot_init

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (orbax checkpoints + config).")
_NAME = flags.DEFINE_string("name", None, "Checkpoint name, e.g. 'cluster' (the estimator's default).")
_OUT = flags.DEFINE_string("out_dir", None, "Parent directory (default: the package's tgmm_jax/pretrained).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_RESULTS = flags.DEFINE_string("card_results", None, "experiments.evaluate JSON for the card's table.")
_COMMAND = flags.DEFINE_string("command", None, "The training command, quoted in the card.")
_SLOT_INIT = flags.DEFINE_string(
    "slot_init",
    None,
    "Clustering read-out only: ship with these slot seedings instead of the trained ones (no parameters).",
)
_TARGETS = flags.DEFINE_string(
    "targets_results",
    None,
    "An experiments.studies.hard_regime.run JSON of this checkpoint (--workdir run with --noise_scale_range): the card gets "
    "its learned gain over the skeleton, its distance to bayes and the unknown-noise cells.",
)
_SPEED = flags.DEFINE_string("speed_results", None, "A benchmarks.speed_vs_bayes JSON of this checkpoint.")
_EASY = flags.DEFINE_string(
    "easy_results", None, "A hard_regime JSON of this checkpoint on easy cells (large N)."
)
_REFRESH = flags.DEFINE_bool(
    "refresh_card", False, "Rewrite the shipped card's evaluation section from --card_results only."
)
flags.mark_flags_as_required(["name"])

EVALUATION_HEADING = "## Evaluation"


def _read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def training_facts(workdir: str) -> dict:
    """Device and wall time of a training run, from its environment.json and metrics.jsonl (if present)."""
    env = _read_json(os.path.join(workdir, "environment.json")) or []
    devices = sorted({f"{e.get('device_count')} x {e.get('device_kind')} ({e.get('backend')})" for e in env})
    seconds, last, rows = 0.0, 0, []
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    # steps_per_sec of each log window times its steps: the training time, evaluation excluded
    for row in rows:
        if row.get("steps_per_sec"):
            seconds += (row["step"] - last) / row["steps_per_sec"]
        last = row.get("step", last)
    return {"device": ", ".join(devices) or "not recorded", "train_seconds": seconds or None, "starts": env}


def model_card(
    name: str,
    run,
    workdir: str,
    results: dict | None,
    command: str | None,
    results_source: str | None = None,
    trained_slot_init: str | None = None,
    extra: str = "",
) -> str:
    facts = training_facts(workdir)
    hours = (
        f"{facts['train_seconds'] / 3600:.2f} h (sum of logged step times)"
        if facts["train_seconds"]
        else "n/a"
    )
    lines = [
        f"# TGMM checkpoint `{name}`",
        "",
        f"- source workdir: `{workdir}`, step {run.step} of {run.config.total_steps}",
        f"- training command: `{command or 'not recorded'}`",
        f"- device: {facts['device']}; wall time: {hours}; training starts: {len(facts['starts'])}",
        f"- dimension-free: {run.model_config.dimension_free} (trained d = {run.spec.dim}"
        + (f", mixed d {tuple(run.config.train_dims)}" if run.config.get("train_dims") else "")
        + f"); trained K: {run.spec.ks}; variant: {run.spec.variant}",
        f"- objective: {run.config.objective}, resp_weight {run.config.get('resp_weight', 0.0)}",
    ]
    if run.config.get("init_from"):
        lines.append(
            f"- started from the parameters of `{run.config.init_from}` (config.init_from: a fresh optimizer and "
            "schedule; the steps and wall time above are this stage's only)"
        )
    if trained_slot_init and trained_slot_init != run.model_config.slot_init:
        lines.append(
            f"- slot seedings: trained with {trained_slot_init!r}, shipped with {run.model_config.slot_init!r} "
            "(the seedings have no parameters; the model config below is the shipped one)"
        )
    lines += [
        "",
        "## Model config",
        "",
        "```json",
        json.dumps(run.model_config.to_dict(), indent=1, sort_keys=True, default=str),
        "```",
        "",
        "## Task spec",
        "",
        "```json",
        json.dumps(dataclasses.asdict(run.spec), indent=1, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines) + "\n" + extra + evaluation_section(results, results_source)


def evaluation_section(results: dict | None, results_source: str | None) -> str:
    """The card's evaluation section: the tables of an ``experiments.evaluate`` JSON, the learned gain included."""
    lines = [EVALUATION_HEADING, ""]
    if results:
        from experiments import reporting

        lines += [
            f"From `{results_source or 'the results JSON'}` (step {results.get('step')}):",
            "",
            reporting.markdown_report(results),
        ]
    else:
        lines.append("No evaluation results were given to the export (--card_results).")
    return "\n".join(lines) + "\n"


def refresh_card(name: str, results: dict, results_source: str, out_dir: str | None = None) -> str:
    """Replaces the evaluation section of shipped checkpoint ``name``'s card; returns the card's path. Refuses
    results of another step or seeding than the checkpoint's."""
    directory = os.path.join(out_dir or os.path.dirname(os.path.abspath(pretrained.__file__)), name)
    ckpt = pretrained.load_exported(directory, name)
    seeding = ckpt.model_config.slot_init if ckpt.model_config.readout == "cluster" else None
    if results.get("step") != ckpt.step or (seeding and results.get("slot_init") != seeding):
        raise ValueError(
            f"{results_source} evaluated step {results.get('step')} with slot_init {results.get('slot_init')!r}; "
            f"checkpoint {name!r} is step {ckpt.step} with {seeding!r}"
        )
    path = os.path.join(directory, pretrained.CARD_FILE)
    with open(path) as f:
        card = f.read()
    head = card.split(EVALUATION_HEADING)[0]
    with open(path, "w") as f:
        f.write(head + evaluation_section(results, results_source))
    return path


def export(
    workdir: str,
    name: str,
    out_dir: str | None = None,
    step: int | None = None,
    results: dict | None = None,
    command: str | None = None,
    results_source: str | None = None,
    slot_init: str | None = None,
    extra: str = "",
) -> str:
    """Writes ``out_dir/name`` from ``workdir``'s checkpoint (read out with ``slot_init`` where given); returns
    the directory. ``extra``: markdown put in the card before its evaluation section."""
    trained = load_run(workdir, step)
    run = with_slot_init(trained, slot_init)
    directory = os.path.join(out_dir or os.path.dirname(os.path.abspath(pretrained.__file__)), name)
    card = model_card(
        name, run, workdir, results, command, results_source, trained.config.model.slot_init, extra
    )
    return pretrained.save_exported(
        directory, run.model_config, run.spec, run.params, step=run.step, source=workdir, card=card
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = None
    if _RESULTS.value:
        with open(_RESULTS.value) as f:
            results = json.load(f)
    if _REFRESH.value:
        if results is None:
            raise app.UsageError("--refresh_card needs --card_results")
        print(f"wrote {refresh_card(_NAME.value, results, _RESULTS.value, _OUT.value)}")
        return
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required (except with --refresh_card)")
    extra = ""
    if _TARGETS.value:
        from experiments.studies.hard_regime.report import learning_targets_section, unknown_noise_section

        saved = _read_json(_TARGETS.value)
        if saved is None:
            raise app.UsageError(f"--targets_results: no file {_TARGETS.value}")
        speed = _read_json(_SPEED.value) if _SPEED.value else None
        easy = _read_json(_EASY.value) if _EASY.value else None
        lines = learning_targets_section(saved, _NAME.value, speed, easy)
        lines += unknown_noise_section(saved, _NAME.value)
        extra = f"From `{_TARGETS.value}`" + (f" and `{_SPEED.value}`" if speed else "") + ":\n\n"
        extra += "\n".join(lines) + "\n"
    directory = export(
        _WORKDIR.value,
        _NAME.value,
        _OUT.value,
        _STEP.value,
        results,
        _COMMAND.value,
        _RESULTS.value,
        _SLOT_INIT.value,
        extra,
    )
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
    print(f"wrote {directory} ({size / 1e6:.2f} MB): {sorted(os.listdir(directory))}")


if __name__ == "__main__":
    app.run(main)
