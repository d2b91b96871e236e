"""Every study: its name, the command that reruns it, what builds its part of REPORT.md and the results it
writes. ``experiments.make_report`` walks ``STUDIES`` in order: the report's opening takes each part's ``lead``
in this order, then the list of runs, the claims and the ``sections``, each in this order too."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from experiments.studies.architecture import report as architecture_report
from experiments.studies.base import Part
from experiments.studies.baseline_speed import report as baseline_speed_report
from experiments.studies.cluster import report as cluster_report
from experiments.studies.hard_regime import report as hard_regime_report
from experiments.studies.k_posterior import report as k_posterior_report
from experiments.studies.missing_values import report as missing_values_report
from experiments.studies.phase_transition import report as phase_transition_report
from experiments.studies.prototype import report as prototype_report
from experiments.studies.real_data import report as real_data_report
from experiments.studies.rq import report as rq_report
from experiments.studies.theory_em import report as theory_report
from experiments.studies.training import report as training_studies_report


@dataclasses.dataclass(frozen=True)
class Study:
    """``commands``: how its committed results were made, run from the repository root (the documented
    commands; every flag has a default); ``report``: ``(results_dir, scale) -> Part | None`` (None: nothing
    saved at that scale), or None for a study REPORT.md does not include; ``results``: what it writes, under
    the results folder."""

    name: str
    commands: tuple[str, ...]
    results: tuple[str, ...]
    report: Callable[[str, str], Part | None] | None = None


STUDIES = (
    Study(
        "hard_regime",
        (
            "python -m experiments.studies.hard_regime.run --tasks_per_cell=256 --bayes_tasks=64",
            "python -m experiments.studies.hard_regime.run --name=small_n_ablation/<arm> ... (one per trained arm)",
        ),
        ("hard_regime.json", "hard_regime.png", "small_n_ablation/"),
        hard_regime_report.build,
    ),
    Study(
        "k_posterior",
        (
            "python -m experiments.train_k_posterior (eight stages: results/k_posterior/TRAINING.md)",
            "python -m experiments.studies.k_posterior.run --workdir=runs/k_posterior_ev4 --ablation_workdir=runs/k_posterior_noev4",
            "python -m experiments.studies.k_posterior.missing_fill --json=results/k_posterior/missing_fill.json",
            "python -m experiments.studies.k_posterior.validate --candidates=shipped,runs/k_posterior_big,shipped@16x30,runs/k_posterior_big@16x30 --json=results/k_posterior/validation.json",
        ),
        ("k_posterior/",),
        k_posterior_report.build,
    ),
    Study(
        "rq",
        (
            "python -m experiments.studies.rq.run --part=effectiveness --scale=cpu --steps=3000 --tasks_per_cell=256",
            "python -m experiments.studies.rq.run --part=sample_size --scale=cpu --steps=1000 --tasks_per_cell=128",
            "python -m experiments.studies.rq.run --part=shift --scale=cpu --steps=3000 --tasks_per_cell=256",
        ),
        (
            "rq1_<scale>.json",
            "rq2_sample_size_<scale>.json",
            "rq2_distribution_shift_<scale>.json",
            "rq1/",
            "rq2/",
        ),
        rq_report.build,
    ),
    Study(
        "prototype_matched_loss",
        (  # a retired prototype: its command runs at the script's last commit
            (
                "git checkout 91173fa && python -m experiments.prototype_matched_loss --steps 4000"
                " --log_every 1000 --eval_tasks_per_k 256"
            ),
        ),
        ("prototype_matched_loss.json",),
        prototype_report.build,
    ),
    Study(
        "cluster",
        (
            "python -m experiments.train --config=experiments/configs/cluster.py:steps=8000 --workdir=runs/cluster",
            "python -m experiments.studies.cluster.run --workdir=runs/cluster --tasks_per_cell=256 --ablation_steps=600",
        ),
        ("cluster_study.json", "cluster_study.png", "cluster/"),
        cluster_report.build,
    ),
    Study(
        "theory_em",
        ("python -m experiments.studies.theory_em.run",),
        ("theory_em.json", "theory_em.png"),
        theory_report.build,
    ),
    Study(
        "training",
        (
            "python -m experiments.studies.training.depth --layers=1,3,6 --steps=300",
            "python -m experiments.studies.training.seeds --parts=paper --paper_steps=150",
            "python -m experiments.studies.training.objectives --objectives=est,est_matched,lik --steps=150 --partial",
        ),
        ("depth_sample_size.json", "objectives_study.json", "seeds_study.json", "training_studies/"),
        training_studies_report.build,
    ),
    Study(
        "architecture",
        (
            "python -m experiments.studies.architecture.run",
            "python -m experiments.studies.architecture.curves",
        ),
        ("architecture_study.json", "architecture_curves.json"),
        architecture_report.build,
    ),
    Study(
        "phase_transition",
        ("python -m experiments.studies.phase_transition.run",),
        ("phase_transition.json", "phase_transition.png"),
        phase_transition_report.build,
    ),
    Study(
        "real_data",
        ("python -m experiments.studies.real_data.run",),
        ("real_data.json", "real_data.png"),
        real_data_report.build,
    ),
    Study(
        "missing_values",
        ("python -m experiments.studies.missing_values.run",),
        ("missing_values/",),
        missing_values_report.build,
    ),
    Study(
        "baseline_speed",
        ("python -m benchmarks.baselines --json results/benchmark_baselines_cpu.json",),
        ("benchmark_baselines_<scale>.json",),
        baseline_speed_report.build,
    ),
)


def get(name: str) -> Study:
    for study in STUDIES:
        if study.name == name:
            return study
    raise KeyError(f"no study {name!r}; the studies are {[s.name for s in STUDIES]}")
