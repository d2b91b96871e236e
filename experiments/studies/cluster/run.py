"""The clustering TGMM study: one dimension-free checkpoint against EM and spectral at every d.

    python -m experiments.train --config=experiments/configs/cluster.py:steps=8000 --workdir=runs/cluster
    python -m experiments.studies.cluster.run --workdir=runs/cluster            # grid, shift, timing, ablation

Sections (each cached in ``--results/cluster/*.json``; rerunning skips what is done, retraining resumes):
  grid      d in --dims x K in 2..5 at N = 128, ``--tasks_per_cell`` fresh tasks per cell: tgmm (network
            alone), tgmm+em (network + ``--refine_steps`` EM steps), tgmm+kpp3 (EM to convergence from the
            network and from 3 k-means++ starts, best likelihood), their parameter-free skeletons em_seeded,
            em_seeded+em and em_seeded+kpp3 (the read-out's seedings and EM steps with no learned term; each
            learned method's cells carry its learned gain over its skeleton on the same tasks), em (official
            init), em_kmeanspp (k-means++, 10 restarts), spectral;
  shift     the same at d = 8 with sigma_p = ``--shift`` (means += sigma_p N(0, I));
  timing    warm wall time of tgmm, tgmm+em, tgmm+kpp3 and em_kmeanspp on the same batch per d (best of 3
            after compiling);
  ablation  paper read-out -> +a normalised read-in -> +b clustering read-out -> +c responsibility loss ->
            +e mixed-d training, each trained for ``--ablation_steps`` steps (same batch, same schedule),
            evaluated at d = 8 and (where dimension-free) d = 32;
  curves    l2 of the periodic evaluations (d = 8) against wall-clock minutes, from each run's metrics.jsonl.
Writes ``cluster_study.json`` and ``cluster_study.png`` in ``--results``; sections not run this time are kept
from the existing ``cluster_study.json``. ``--checkpoint=cluster`` evaluates a shipped checkpoint instead of
``--workdir`` (grid, shift and timing only: the shipped ``cluster`` is ``runs/cluster_fg`` at step 6000).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
from absl import app, flags, logging

from experiments import methods as methods_lib
from experiments import study
from experiments.configs import cluster
from tgmm_jax import scoring
from tgmm_jax.tasks import sample_tasks
from tgmm_jax.train.restore import load_run
from tgmm_jax.trained import with_slot_init

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command: importing this module defines none."""
    flags.DEFINE_string("workdir", "runs/cluster", "The trained clustering TGMM (configs/cluster.py).")
    flags.DEFINE_string(
        "checkpoint", "", "A shipped checkpoint to evaluate instead of --workdir (grid/shift/timing)."
    )
    flags.DEFINE_list("dims", ["2", "8", "32", "128"], "Data dimensions of the grid.")
    flags.DEFINE_integer("tasks_per_cell", 256, "Evaluation tasks per (d, K).")
    flags.DEFINE_integer("refine_steps", 5, "EM steps after the network for tgmm+em.")
    flags.DEFINE_float("shift", 10.0, "sigma_p of the distribution-shift section.")
    flags.DEFINE_integer("eval_seed", 20261202, "Seed of the evaluation tasks.")
    flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")
    flags.DEFINE_string("ablation_root", "runs/cluster_ablation", "Parent of the ablation workdirs.")
    flags.DEFINE_integer("ablation_steps", 1000, "Training steps of each ablation run.")
    flags.DEFINE_integer("ablation_tasks_per_cell", 128, "Evaluation tasks per K of the ablation.")
    flags.DEFINE_list("sections", ["grid", "shift", "timing", "ablation"], "Sections to run.")
    flags.DEFINE_string(
        "slot_init",
        "",
        "Evaluate the checkpoint with this slot_init instead of the trained one (the seedings have no parameters).",
    )


REFINED = "tgmm+em"
RESTARTS = "tgmm+kpp3"  # TGMM as the first restart: EM from it and from 3 k-means++ starts, best likelihood
BASELINES = ("em", "em_kmeanspp", "spectral")
SKELETON, SKELETON_REFINED, SKELETON_RESTARTS = "em_seeded", "em_seeded+em", "em_seeded+kpp3"
# learned method -> its parameter-free skeleton (the learned gain is the paired l2 difference)
REFERENCES = {scoring.MODEL_METHOD: SKELETON, REFINED: SKELETON_REFINED, RESTARTS: SKELETON_RESTARTS}

FOUR_SEEDINGS = "farthest+greedy+smooth3+smooth12"
# name -> config arguments of configs/cluster.py and model overrides; each adds one part to the previous.
_LEARNED = dict(init="learned", heads=4)  # the stages before the farthest-first seeds
ABLATION = (
    ("paper read-out", dict(dims="", resp=0.0, **_LEARNED), dict(readin="raw", readout="attentive")),
    ("+a normalised read-in", dict(dims="", resp=0.0, **_LEARNED), dict(readout="attentive")),
    ("+b clustering read-out", dict(dims="", resp=0.0, **_LEARNED), {}),
    ("+c responsibility loss", dict(dims="", **_LEARNED), {}),
    ("+e mixed-d training", dict(_LEARNED), {}),
    ("+f farthest-first slot seeds", dict(init="farthest", heads=4), {}),
    ("+f, 2 heads", dict(init="farthest", heads=2), {}),
    # a 4th element: evaluation only, the weights of the stage with the same arguments, read out from these
    # seedings (best likelihood per task)
    (
        "+g best of farthest and greedy seeds (same weights)",
        dict(init="farthest", heads=2),
        {},
        "farthest+greedy",
    ),
    ("+g trained with both seedings", dict(init="farthest+greedy", heads=2), {}),
    (
        f"+h best of 4 seedings ({FOUR_SEEDINGS}), +f weights",
        dict(init="farthest", heads=2),
        {},
        FOUR_SEEDINGS,
    ),
)


def _methods(run, refine_steps: int):
    methods = {
        scoring.MODEL_METHOD: scoring.model_method(run.model),
        REFINED: scoring.model_method(run.model, refine_steps),
        RESTARTS: methods_lib.model_with_restarts(run.model, 3),
        **methods_lib.baseline_methods(BASELINES, run.spec.variant),
    }
    reference, skeleton = methods_lib.reference_for(run.model_config, run.spec.variant)
    if reference == SKELETON:  # a seeded clustering read-out: its skeleton, with and without the same EM
        methods[SKELETON] = skeleton
        methods[SKELETON_REFINED] = methods_lib.method_then_em(skeleton, refine_steps)
        methods[SKELETON_RESTARTS] = methods_lib.method_with_restarts(skeleton, 3)
    params = {scoring.MODEL_METHOD: run.params, REFINED: run.params, RESTARTS: run.params}
    return methods, params


def _cached(path: str, settings: dict, compute):
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("settings") == settings:
            return saved
    result = dict(settings=settings, **compute())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def _evaluate(run, dim: int, tasks_per_cell: int, seed: int, shift: float = 0.0, names=None) -> dict:
    methods, params = _methods(run, FLAGS.refine_steps)
    if names is not None:
        methods = {n: m for n, m in methods.items() if n in names}
    spec = dataclasses.replace(run.spec, dim=dim)
    references = {m: r for m, r in REFERENCES.items() if m in methods and r in methods}
    return scoring.evaluate_methods(
        methods,
        spec,
        tasks_per_cell=tasks_per_cell,
        ns=(128,),
        seed=seed,
        params=params,
        mean_shift=shift,
        references=references,
    )


def _cell_results(out_dir: str, name: str, model_settings: dict, run, dim: int, shift: float = 0.0) -> dict:
    """The model's cells (cached per checkpoint and seeding) and the baselines' (cached per task set, so a new
    checkpoint reuses them) on the same tasks; the task fingerprints must agree."""
    task_settings = dict(seed=FLAGS.eval_seed, dim=dim, tasks_per_cell=FLAGS.tasks_per_cell, shift=shift)
    model_names = (scoring.MODEL_METHOD, REFINED, RESTARTS, SKELETON, SKELETON_REFINED, SKELETON_RESTARTS)

    def evaluate(names):
        return lambda: _evaluate(run, dim, FLAGS.tasks_per_cell, FLAGS.eval_seed, shift, names)

    model_settings = dict(model_settings, **task_settings)
    ours = _cached(os.path.join(out_dir, f"{name}_model.json"), model_settings, evaluate(model_names))
    base = _cached(os.path.join(out_dir, f"{name}_baselines.json"), task_settings, evaluate(BASELINES))
    if ours["task_fingerprints"] != base["task_fingerprints"]:
        raise RuntimeError(
            f"{name}: the model's and the baselines' cached cells were scored on different tasks"
        )
    return dict(ours, settings=model_settings, cells=ours["cells"] + base["cells"])


def _timing(run, dim: int) -> dict:
    """Warm seconds (best of 3 after a compiling call) of tgmm+em and em_kmeanspp on one batch of tasks."""
    methods, params = _methods(run, FLAGS.refine_steps)
    spec = dataclasses.replace(run.spec, dim=dim, n_max=128, n_min=128, variable_n=False)
    task = sample_tasks(jax.random.key(FLAGS.eval_seed + dim), spec, FLAGS.tasks_per_cell)
    out = {"tasks": int(task.points.shape[0]), "load_average_before": list(os.getloadavg())}
    for name in (scoring.MODEL_METHOD, REFINED, RESTARTS, "em_kmeanspp"):
        fit = scoring._compiled_fit(methods[name])
        key = jax.random.key(0)
        jax.block_until_ready(fit(params.get(name), key, task))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(fit(params.get(name), key, task))
            best = min(best, time.perf_counter() - start)
        out[name] = best
    out["load_average_after"] = list(os.getloadavg())
    return out


def _curve(workdir: str) -> dict:
    """Cumulative wall-clock minutes and the periodic evaluations' TGMM l2 per K (d = task.dim)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    minutes, last_step, points = 0.0, 0, []
    with open(path) as f:
        for row in map(json.loads, f):
            if "steps_per_sec" in row:
                minutes += (row["step"] - last_step) / row["steps_per_sec"] / 60
                last_step = row["step"]
            if "eval" in row:
                ks = sorted({int(k.split("/")[1][2:]) for k in row["eval"] if k.startswith("tgmm/")})
                points.append(
                    dict(step=row["step"], minutes=minutes, l2={k: row["eval"][f"tgmm/K={k}/l2"] for k in ks})
                )
    return dict(points=points)


def _ablation_config(args: dict, model: dict):
    spec = ",".join(f"{k}={v}" for k, v in dict(steps=FLAGS.ablation_steps, **args).items())
    config = cluster.get_config(spec)
    for name, value in model.items():
        config.model[name] = value
    config.eval_every = max(FLAGS.ablation_steps // 4, 1)
    config.eval.baselines = ()  # the curves need TGMM only; the baselines are in the grid
    config.eval.slot_init = None  # the curves evaluate each stage as trained (the +g/+h stages reseed after)
    return config


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    out_dir = os.path.join(FLAGS.results, "cluster")
    previous = {}
    if os.path.exists(os.path.join(FLAGS.results, "cluster_study.json")):
        with open(os.path.join(FLAGS.results, "cluster_study.json")) as f:
            previous = json.load(f)
    payload = dict(previous, refine_steps=FLAGS.refine_steps, tasks_per_cell=FLAGS.tasks_per_cell)
    if {"grid", "shift", "timing"} & set(FLAGS.sections):
        if FLAGS.checkpoint:
            from tgmm_jax.pretrained import load_pretrained

            run = with_slot_init(load_pretrained(FLAGS.checkpoint), FLAGS.slot_init)
            source = dict(checkpoint=FLAGS.checkpoint)
            payload.update(checkpoint=study.shipped_checkpoint_text(FLAGS.checkpoint))
        else:
            run = load_run(FLAGS.workdir)
            trained_slot_init = run.config.model.slot_init
            run = with_slot_init(run, FLAGS.slot_init)
            source = dict(workdir=FLAGS.workdir)
            payload.update(
                workdir=FLAGS.workdir,
                config=json.loads(run.config.to_json()),
                trained_slot_init=trained_slot_init,
            )
        base = dict(
            source,
            step=run.step,
            seed=FLAGS.eval_seed,
            refine_steps=FLAGS.refine_steps,
            slot_init=run.model_config.slot_init,
        )
        payload.update(step=run.step, slot_init=run.model_config.slot_init)
    if "grid" in FLAGS.sections:
        payload["grid"] = dict(payload.get("grid", {}))
        for d in map(int, FLAGS.dims):
            payload["grid"][str(d)] = _cell_results(out_dir, f"grid_d={d}", base, run, d)
            print(f"grid d={d} done", flush=True)
    if "shift" in FLAGS.sections:
        payload["shift"] = _cell_results(out_dir, "shift_d=8", base, run, 8, FLAGS.shift)
        print("shift done", flush=True)
    if "timing" in FLAGS.sections:
        payload["timing"] = {str(d): _timing(run, d) for d in map(int, FLAGS.dims)}
        print("timing", payload["timing"], flush=True)
    if not FLAGS.checkpoint or "curves" not in payload:
        payload["curves"] = dict(payload.get("curves", {}), main=_curve(FLAGS.workdir))
    if "ablation" in FLAGS.sections:
        payload["ablation"] = []
        trained = {}  # config arguments -> workdir: an evaluation-only stage reuses the stage it names
        for i, (name, args, model, *evaluate_with) in enumerate(ABLATION):
            key = json.dumps([args, model], sort_keys=True)
            workdir = trained.setdefault(key, os.path.join(FLAGS.ablation_root, f"{i}"))
            study.train_model(_ablation_config(args, model), workdir)
            ab_run = with_slot_init(load_run(workdir), evaluate_with[0] if evaluate_with else "")
            dims = (8, 32) if ab_run.model_config.dimension_free else (8,)
            cells = {}
            for d in dims:
                settings = dict(
                    workdir=workdir,
                    slot_init=ab_run.model_config.slot_init,
                    step=ab_run.step,
                    seed=FLAGS.eval_seed,
                    dim=d,
                    tasks_per_cell=FLAGS.ablation_tasks_per_cell,
                )
                cells[str(d)] = _cached(
                    os.path.join(out_dir, f"ablation_{i}_d={d}.json"),
                    settings,
                    lambda ab_run=ab_run, d=d: _evaluate(
                        ab_run,
                        d,
                        FLAGS.ablation_tasks_per_cell,
                        FLAGS.eval_seed,
                        names=(scoring.MODEL_METHOD,),
                    ),
                )
            payload["ablation"].append(
                dict(
                    name=name,
                    workdir=workdir,
                    step=ab_run.step,
                    slot_init=ab_run.model_config.slot_init,
                    by_dim=cells,
                )
            )
            if not evaluate_with:
                payload["curves"][name] = _curve(workdir)
            print(f"ablation {name} done", flush=True)
    study.write_json(FLAGS.results, "cluster_study.json", payload)
    plot(payload, os.path.join(FLAGS.results, "cluster_study.png"))


def plot(payload: dict, path: str) -> None:
    panels = []
    for d, res in sorted(payload.get("grid", {}).items(), key=lambda kv: int(kv[0])):
        cells = res["cells"]
        series = []
        for method in (scoring.MODEL_METHOD, REFINED, RESTARTS, SKELETON, *BASELINES):
            ks = sorted({c["K"] for c in cells if c["method"] == method and c["not_applicable"] < 1.0})
            if ks:
                series.append((method, ks, [study.mean_sem(cells, method, K=k) for k in ks], "-"))
        panels.append((f"d = {d}", series))
    curves = []
    for name, curve in payload.get("curves", {}).items():
        pts = curve.get("points", [])
        if pts:
            k5 = [p["l2"].get("5", p["l2"].get(5)) for p in pts]
            curves.append((f"{name} (K=5)", [p["minutes"] for p in pts], [(v, 0.0) for v in k5], "-"))
    if curves:
        panels.append(("learning curves, d = 8", curves))
    if panels:
        study.panel_figure(panels, path, xlabel="K (grid) / minutes (curves)", title=lambda key: key)


if __name__ == "__main__":
    define_flags()
    app.run(main)
