"""The learned model's speed per task against the Bayes reference, EM and its own skeleton, on the same tasks.

    python -m benchmarks.speed_vs_bayes --checkpoint=runs/noise_cond2 --json=results/benchmark_speed_vs_bayes_cpu.json

For each N (``--ns``; d = ``--dim``; K = 2..5, ``--tasks_per_k`` tasks each, Algorithm-1 tasks at fixed N):
  tgmm         the checkpoint's forward pass (``scoring.model_method``; a noise-conditioned model is told
               the noise variance, 1), no EM after it
  em_seeded    its parameter-free skeleton (same seedings and iterations; ``baselines.seeded_em``)
  em_kmeanspp  EM from k-means++, 10 restarts (the classical reference)
  bayes        the posterior-mean sampler under the task prior (``baselines.bayes``, default BayesConfig:
               4 chains, 1000 sweeps)
Each method runs on the whole batch in one jitted call: a first call (compiling, reported) and then the best
of ``--repeats`` calls; seconds per task = best / tasks. The JSON holds every time and the ratios
tgmm / bayes (the learning issue asks for at most 1/100) and tgmm / em_kmeanspp, per N. A benchmark, not a
test: the numbers depend on the machine and its load (both recorded).
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from baselines import get_baseline
from baselines.seeded_em import skeleton_settings
from benchmarks import machine
from tgmm_jax import scoring
from tgmm_jax.pretrained import load_checkpoint
from tgmm_jax.tasks import TaskSpec, sample_tasks
from tgmm_jax.trained import with_slot_init

_CHECKPOINT = flags.DEFINE_string("checkpoint", "pretrained", "Shipped name, exported directory or workdir.")
_NS = flags.DEFINE_list("ns", ["16", "32", "128"], "Points per task.")
_DIM = flags.DEFINE_integer("dim", 2, "Dimension d.")
_TASKS_PER_K = flags.DEFINE_integer("tasks_per_k", 16, "Tasks of each K in 2..5.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the compiling one (the best is kept).")
_JSON = flags.DEFINE_string("json", None, "Output path (JSON).")
_SLOT_INIT = flags.DEFINE_string(
    "slot_init",
    "",
    "Seed the model's read-out (and its skeleton) with these seedings ('' = as the checkpoint).",
)

KS = (2, 3, 4, 5)


def _time(fn, params, key, task, repeats: int) -> dict:
    start = time.perf_counter()
    jax.block_until_ready(scoring.fit_in_chunks(fn, params, key, task))
    first = time.perf_counter() - start
    times = machine.timed(
        lambda: jax.block_until_ready(scoring.fit_in_chunks(fn, params, key, task)), repeats
    )
    tasks = int(task.points.shape[0])
    return {"first_call_s": first, "times_s": times, "seconds_per_task": min(times) / tasks, "tasks": tasks}


def main(argv):
    del argv
    ckpt = load_checkpoint(_CHECKPOINT.value)
    if _SLOT_INIT.value:
        ckpt = with_slot_init(ckpt, _SLOT_INIT.value)
    skeleton = get_baseline("em_seeded", **skeleton_settings(ckpt.model_config), noise="unit")
    methods = {
        "tgmm": (scoring.model_method(ckpt.model), ckpt.params),
        "em_seeded": (scoring.param_free(skeleton), None),
        "em_kmeanspp": (scoring.param_free(get_baseline("em_kmeanspp")), None),
        "bayes": (scoring.param_free(get_baseline("bayes")), None),
    }
    report = {
        "machine": machine.report_header(),
        "checkpoint": ckpt.name,
        "checkpoint_arg": _CHECKPOINT.value,
        "step": ckpt.step,
        "slot_init": ckpt.model_config.slot_init,
        "dim": _DIM.value,
    }
    rows = []
    for n in map(int, _NS.value):
        spec = TaskSpec(dim=_DIM.value, ks=KS, n_max=n, n_min=n, variable_n=False)
        key = jax.random.fold_in(jax.random.key(0), n)
        task = sample_tasks(key, spec, _TASKS_PER_K.value)
        row = {"N": n}
        for name, (fn, params) in methods.items():
            row[name] = _time(fn, params, jax.random.fold_in(key, 1), task, _REPEATS.value)
        per = {name: row[name]["seconds_per_task"] for name in methods}
        row["tgmm_over_bayes"] = per["tgmm"] / per["bayes"]
        row["tgmm_over_em_kmeanspp"] = per["tgmm"] / per["em_kmeanspp"]
        row["tgmm_over_em_seeded"] = per["tgmm"] / per["em_seeded"]
        rows.append(row)
        print(
            f"N={n:4d}  seconds per task: "
            + "  ".join(f"{name} {per[name]:.2e}" for name in methods)
            + f"  | tgmm/bayes 1/{1 / row['tgmm_over_bayes']:.0f}, tgmm/em_kmeanspp {row['tgmm_over_em_kmeanspp']:.2f}",
            flush=True,
        )
    report["rows"] = rows
    if _JSON.value:
        machine.write_report(report, _JSON.value)


if __name__ == "__main__":
    app.run(main)
