"""Objectives (the rebuttal's Table 3 and ours): TGMM trained on est (the paper's),
est_matched (permutation-matched), lik (the mixture's negative log-likelihood alone) and est+lik.

    python -m experiments.studies.training.objectives --steps=150

One model per objective, the paper's architecture at CPU size (``tiny.py:d=8,n=128``; lik.py's switch on the
tiny recipe instead of the paper-size model), the same seed, data stream and budget; resumable under
``--root`` (est_matched's workdir is the seeds study's seed-0 run). Evaluated once on the same fresh tasks
(aligned l2, log-likelihood, cluster accuracy; EM and spectral beside them) and the learning curves from the
periodic evaluations in each run's metrics.jsonl. Writes ``objectives_study.json`` and ``objectives_study.png``.
"""

import os

import numpy as np
from absl import app, flags, logging
from matplotlib.figure import Figure

from experiments import study
from experiments.studies.training import common as ts
from tgmm_jax.losses import OBJECTIVES
from tgmm_jax.scoring import MODEL_METHOD

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command: importing this module defines none."""
    flags.DEFINE_list("objectives", ["est", "est_matched", "lik", "est+lik"], "Training objectives.")
    flags.DEFINE_integer("steps", 150, "Training steps per model.")
    flags.DEFINE_integer("dim", 8, "Data dimension.")
    flags.DEFINE_integer("n", 128, "N_max of training; the evaluation is at N = n.")
    flags.DEFINE_integer("seed", 0, "Training seed (the same for every objective).")
    flags.DEFINE_list(
        "baselines", ["em", "em_kmeanspp", "spectral"], "Baselines scored beside the first objective."
    )
    flags.DEFINE_integer("tasks_per_cell", 256, "Evaluation tasks per K.")
    flags.DEFINE_integer("eval_seed", 20260417, "Seed of the evaluation tasks (the same for every model).")
    flags.DEFINE_string("root", "runs/training_studies", "Parent of the training workdirs.")
    flags.DEFINE_bool(
        "partial", False, "Evaluate runs stopped early (SIGTERM) at their latest step; the report says so."
    )
    flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")


METRICS = ("l2", "loglik", "cluster_acc")


def first_step_below(curve: list[dict], level: float) -> int | None:
    """The first evaluated step whose l2 (mean over K) is <= ``level``, or None."""
    for point in curve:
        if np.mean(list(point["l2"].values())) <= level:
            return point["step"]
    return None


def plot(payload: dict, path: str) -> None:
    fig = Figure(figsize=(13, 3.4))
    axes = fig.subplots(1, len(METRICS) + 1)
    ks = payload["ks"]
    rows = [(f"TGMM({o})", res["cells"], "-") for o, res in payload["by_objective"].items()]
    rows += [
        (m, payload["baselines"], "--") for m in dict.fromkeys(c["method"] for c in payload["baselines"])
    ]
    for ax, metric in zip(axes, METRICS):
        for label, cells, style in rows:
            method = MODEL_METHOD if label.startswith("TGMM(") else label
            stats = [study.mean_sem(cells, method, metric, K=k) for k in ks]
            ax.errorbar(
                ks,
                [m for m, _ in stats],
                yerr=[s for _, s in stats],
                marker="o",
                capsize=2,
                linestyle=style,
                label=label,
            )
        if metric == "l2":
            ax.set_yscale("log")
        ax.set_xlabel("K")
        ax.set_title(metric)
    ax = axes[-1]
    for objective, res in payload["by_objective"].items():
        curve = res["curve"]
        ax.plot(
            [p["step"] for p in curve],
            [np.mean(list(p["l2"].values())) for p in curve],
            marker="o",
            label=f"TGMM({objective})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title("l2 during training (mean over K)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        ts.check_names("--objectives", FLAGS.objectives, OBJECTIVES)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    payload = dict(
        dim=FLAGS.dim,
        n=FLAGS.n,
        steps=FLAGS.steps,
        seed=FLAGS.seed,
        tasks_per_cell=FLAGS.tasks_per_cell,
        eval_seed=FLAGS.eval_seed,
        by_objective={},
    )
    # est_matched last: its workdir is shared with the seeds study, which may still be training it
    order = sorted(FLAGS.objectives, key=lambda o: o == "est_matched")
    for i, objective in enumerate(order):
        config = ts.paper_cpu_config(
            seed=FLAGS.seed, steps=FLAGS.steps, objective=objective, d=FLAGS.dim, n=FLAGS.n
        )
        workdir = ts.paper_cpu_workdir(
            FLAGS.root, objective=objective, steps=FLAGS.steps, seed=FLAGS.seed, d=FLAGS.dim, n=FLAGS.n
        )
        if not (FLAGS.partial and os.path.isdir(os.path.join(workdir, "checkpoints"))):
            study.train_model(config, workdir)
        methods = [MODEL_METHOD] + (list(FLAGS.baselines) if i == 0 else [])
        result = study.evaluate_cached(
            workdir,
            os.path.join(FLAGS.results, "training_studies", f"objectives_{os.path.basename(workdir)}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell,
            ns=(FLAGS.n,),
            seed=FLAGS.eval_seed,
            methods=methods,
        )
        if i == 0:
            payload["baselines"] = [c for c in result["cells"] if c["method"] != MODEL_METHOD]
        result = dict(result, cells=[c for c in result["cells"] if c["method"] == MODEL_METHOD])
        result["curve"] = ts.learning_curve(workdir)
        payload["by_objective"][objective] = result
    payload["by_objective"] = {o: payload["by_objective"][o] for o in FLAGS.objectives}  # the asked order
    payload["ks"] = sorted(
        {c["K"] for c in payload["baselines"] or next(iter(payload["by_objective"].values()))["cells"]}
    )
    reference = payload["by_objective"].get("est")
    if reference and reference["curve"]:  # how fast each objective reaches est's l2 at its last evaluation
        level = float(np.mean(list(reference["curve"][-1]["l2"].values())))
        payload["reach_est_final"] = dict(
            level=level,
            steps={o: first_step_below(r["curve"], level) for o, r in payload["by_objective"].items()},
        )
    study.write_json(FLAGS.results, "objectives_study.json", payload)
    plot(payload, os.path.join(FLAGS.results, "objectives_study.png"))


if __name__ == "__main__":
    define_flags()
    app.run(main)
