"""Evaluates a trained workdir against every registered baseline on the same fresh tasks.

    python -m experiments.evaluate --workdir=runs/tiny --tasks_per_cell=1280 --n=128 --output=results.json
    python -m experiments.evaluate --checkpoint=cluster --tasks_per_cell=256 --output=results/pretrained/cluster_eval.json

Rebuilds the model from the config and the latest checkpoint saved in the workdir (or reads a shipped checkpoint,
``--checkpoint``). TGMM always runs beside its reference, the parameter-free method it is built on (em_seeded, its
skeleton, for a seeded clustering read-out; em_kmeanspp otherwise), and the tables end with its learned gain. The default protocol
is the final checkpoint on ``tasks_per_cell`` fresh tasks per (K, N) from a fixed evaluation seed;
``--protocol=training_tail`` instead reports the official protocol from the training logs (mean of the
last 10 evaluation rounds of metrics.jsonl), for TGMM and the baselines evaluated during training.
"""

import json

from absl import app, flags, logging

from experiments import reporting
from experiments.methods import methods_for_run
from tgmm_jax import scoring
from tgmm_jax.pretrained import load_pretrained
from tgmm_jax.train.restore import load_run
from tgmm_jax.trained import with_slot_init

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config + checkpoints).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A shipped checkpoint (tgmm_jax.pretrained.available()) instead of --workdir."
)
_TASKS = flags.DEFINE_integer("tasks_per_cell", 1280, "Fresh tasks per (K, N) cell.")
_N = flags.DEFINE_list(
    "n", None, "Points per task; comma-separated for several (default: the training n_max)."
)
_SHIFT = flags.DEFINE_float(
    "mean_shift", 0.0, "sigma_p: test means += sigma_p * N(0, I) (distribution shift)."
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "JSON output path (a Markdown table is written beside it, .md)."
)
_METHODS = flags.DEFINE_list(
    "methods",
    None,
    "Methods to run (default: tgmm and every baseline that applies). With tgmm, its reference (em_seeded with "
    "the model's seedings, or em_kmeanspp) always runs too: the learned-gain table needs it.",
)
_SLOT_INIT = flags.DEFINE_string(
    "slot_init", None, "Clustering read-out only: evaluate with these slot seedings (ModelConfig.slot_init)."
)
_SEED = flags.DEFINE_integer("eval_seed", 20260401, "Seed of the evaluation tasks (same for every method).")
_CHUNK = flags.DEFINE_integer("chunk", 512, "Tasks per compiled call (memory bound).")
_PROTOCOL = flags.DEFINE_enum("protocol", "final", ["final", "training_tail"], "See the module docstring.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if (_WORKDIR.value is None) == (_CHECKPOINT.value is None):
        raise app.UsageError("give exactly one of --workdir and --checkpoint")
    if _CHECKPOINT.value and _PROTOCOL.value == "training_tail":
        raise app.UsageError(
            "--protocol=training_tail reads a workdir's training log; a shipped checkpoint has none"
        )
    if _TASKS.value < 2:
        raise app.UsageError("--tasks_per_cell must be >= 2 (standard errors need two tasks)")
    if _PROTOCOL.value == "training_tail":
        results = reporting.training_tail_protocol(_WORKDIR.value)
    else:
        run = load_pretrained(_CHECKPOINT.value) if _CHECKPOINT.value else load_run(_WORKDIR.value)
        run = with_slot_init(run, _SLOT_INIT.value)
        ns = tuple(int(n) for n in _N.value) if _N.value else (run.spec.n_max,)
        if min(ns) < run.spec.k_max:
            raise app.UsageError(f"--n must be at least the largest K ({run.spec.k_max}), got {ns}")
        methods, params, references = methods_for_run(run, _METHODS.value)
        results = scoring.evaluate_methods(
            methods,
            run.spec,
            params=params,
            tasks_per_cell=_TASKS.value,
            ns=ns,
            seed=_SEED.value,
            mean_shift=_SHIFT.value,
            chunk=_CHUNK.value,
            references=references,
        )
        source = {"checkpoint": _CHECKPOINT.value} if _CHECKPOINT.value else {"workdir": _WORKDIR.value}
        results.update(source, step=run.step, slot_init=run.model_config.slot_init)
    tables = reporting.markdown_report(results)
    print(tables)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(results, f, indent=1)
        with open(_OUTPUT.value.removesuffix(".json") + ".md", "w") as f:
            f.write(tables + "\n")


if __name__ == "__main__":
    app.run(main)
