"""Seeds: the headline cells trained with several seeds, reported as mean and spread.

    python -m experiments.studies.training.seeds --paper_steps=300 --cluster_steps=300

Two parts, each trained once per ``--seeds`` entry (resumable, under ``--root``) and evaluated once on the
same fresh tasks (``--tasks_per_cell`` per K at d = 8, N = 128; the baselines once, with the first seed):
``paper``, the paper's architecture at CPU size (``tiny.py:d=8,n=128`` with ``--paper_steps``), and
``cluster``, the README's main job (``cluster.py:steps=<--cluster_steps>``). A different seed changes the
initialisation and the training tasks, as a different machine's float rounding changes the trajectory.
Writes ``seeds_study.json`` (per-seed cells, mean / std / min / max across seeds, the within-seed sem) and
``seeds_study.png``.
"""

import os

from absl import app, flags, logging

from experiments import study
from experiments.studies.training import common as ts
from tgmm_jax.scoring import MODEL_METHOD

PARTS = ("paper", "cluster")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when it runs as a command: importing this module defines none."""
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
    flags.DEFINE_list("parts", list(PARTS), "Which headline models: paper (tiny.py at d=8) and/or cluster.")
    flags.DEFINE_list("cluster_seeds", [], "Seeds of the cluster part, if not --seeds.")
    flags.DEFINE_integer("paper_steps", 150, "Training steps of the paper-architecture model.")
    flags.DEFINE_integer(
        "cluster_steps", 300, "Training steps of the README's main job (the README says 1000)."
    )
    flags.DEFINE_integer("dim", 8, "Data dimension of the paper-architecture model.")
    flags.DEFINE_integer("n", 128, "N_max of the paper-architecture model; the evaluation is at N = n.")
    flags.DEFINE_list("baselines", ["em", "em_kmeanspp", "spectral"], "Baselines scored once, beside seed 0.")
    flags.DEFINE_integer("tasks_per_cell", 256, "Evaluation tasks per K.")
    flags.DEFINE_integer("eval_seed", 20260415, "Seed of the evaluation tasks (the same for every model).")
    flags.DEFINE_string("root", "runs/training_studies", "Parent of the training workdirs.")
    flags.DEFINE_string("results", "results", "Where the JSON and the figure go.")


def _part(name: str, seeds: list[int]) -> dict:
    runs = []
    for i, seed in enumerate(seeds):
        if name == "paper":
            config = ts.paper_cpu_config(seed=seed, steps=FLAGS.paper_steps, d=FLAGS.dim, n=FLAGS.n)
            workdir = ts.paper_cpu_workdir(
                FLAGS.root,
                objective="est_matched",
                steps=FLAGS.paper_steps,
                seed=seed,
                d=FLAGS.dim,
                n=FLAGS.n,
            )
        else:
            config = ts.cluster_seed_config(seed=seed, steps=FLAGS.cluster_steps)
            workdir = os.path.join(FLAGS.root, f"cluster_steps={FLAGS.cluster_steps}_seed={seed}")
        study.train_model(config, workdir)
        n = config.task.n_max
        methods = [MODEL_METHOD] + (list(FLAGS.baselines) if i == 0 else [])
        result = study.evaluate_cached(
            workdir,
            os.path.join(FLAGS.results, "training_studies", f"seeds_{os.path.basename(workdir)}.json"),
            tasks_per_cell=FLAGS.tasks_per_cell,
            ns=(n,),
            seed=FLAGS.eval_seed,
            methods=methods,
        )
        curve = ts.learning_curve(workdir)
        runs.append(dict(seed=seed, workdir=workdir, step=result["step"], cells=result["cells"], curve=curve))
    cells = runs[0]["cells"]
    ks = sorted({c["K"] for c in cells})
    n = cells[0]["N"]
    spread = {}
    for k in ks:
        per_seed = [ts.cell(r["cells"], MODEL_METHOD, K=k, N=n) for r in runs]
        spread[str(k)] = dict(
            l2=ts.across_seeds([c["l2"]["mean"] for c in per_seed]),
            cluster_acc=ts.across_seeds([c["cluster_acc"]["mean"] for c in per_seed]),
            l2_sem_within_seed=float(sum(c["l2"]["sem"] for c in per_seed) / len(per_seed)),
            training_job_l2=[r["curve"][-1]["l2"][k] if r["curve"] else None for r in runs],
        )
    baselines = [c for c in cells if c["method"] != MODEL_METHOD]
    return dict(runs=runs, ks=ks, N=n, spread=spread, baselines=baselines)


def plot(payload: dict, path: str) -> None:
    panels = []
    for name, part in payload["parts"].items():
        series = []
        ks = part["ks"]
        for r in part["runs"]:
            stats = [study.mean_sem(r["cells"], MODEL_METHOD, K=k) for k in ks]
            series.append((f"TGMM seed {r['seed']}", ks, stats, "-"))
        for method in dict.fromkeys(c["method"] for c in part["baselines"]):
            series.append((method, ks, [study.mean_sem(part["baselines"], method, K=k) for k in ks], "--"))
        panels.append((name, series))
    study.panel_figure(panels, path, xlabel="K", title=lambda name: payload["titles"][name])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        ts.check_names("--parts", FLAGS.parts, PARTS)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    seeds = [int(s) for s in FLAGS.seeds]
    seeds_of = dict(paper=seeds, cluster=[int(s) for s in FLAGS.cluster_seeds] or seeds)
    payload = dict(
        seeds=seeds_of,
        paper_steps=FLAGS.paper_steps,
        cluster_steps=FLAGS.cluster_steps,
        tasks_per_cell=FLAGS.tasks_per_cell,
        eval_seed=FLAGS.eval_seed,
        titles={
            "paper": f"paper arch. (tiny.py d={FLAGS.dim}), {FLAGS.paper_steps} steps",
            "cluster": f"cluster.py (README job), {FLAGS.cluster_steps} steps",
        },
        parts={},
    )
    for name in FLAGS.parts:
        payload["parts"][name] = _part(name, seeds_of[name])
        payload["parts"][name]["d"] = FLAGS.dim if name == "paper" else 8
        study.write_json(FLAGS.results, "seeds_study.json", payload)  # after each part: a partial result
    plot(payload, os.path.join(FLAGS.results, "seeds_study.png"))


if __name__ == "__main__":
    define_flags()
    app.run(main)
