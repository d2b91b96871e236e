"""TGMMEstimator against sklearn's GaussianMixture on the same held-out tasks: l2 error, accuracy, wall time,
and how often ``n_components="bic"`` and ``"auto"`` (the learned P(K | X)) pick the true K (against sklearn's BIC
loop over the same Ks).

    python -m benchmarks.estimator --json results/benchmark_estimator_cpu.json
    python -m benchmarks.estimator --checkpoint=runs/cluster --dims=2,8 --tasks_per_k=16   # quick look

Tasks: ``sample_tasks`` of the checkpoint's task family (its Ks, U[-5, 5] means, unit noise) at each d and N,
from ``--seed``; ``--ks`` and ``--cos_threshold`` set the Ks and the means' cosine filter instead (the same seed,
Ks and filter give the same tasks, so two checkpoints can be compared on them), e.g.

    python -m benchmarks.estimator --checkpoint=cluster_k8 --ks=6,7,8 --cos_threshold=1.0 --dims=2,8

The BIC loops try the checkpoint's trained Ks (the estimator's K = 1 as well), whatever the tasks' Ks.

TGMM fits every task of a d in one ``fit_batch`` call (timed warm: a first call on the same shapes
compiles); sklearn fits task by task (``covariance_type="spherical"``, its default k-means init,
``n_init=1``). Errors are ``tgmm_jax.metrics.evaluate_estimates`` for every method. A clustering checkpoint
with seeded slots also runs beside its parameter-free skeleton (``em_seeded`` with its seedings, and + the same
EM steps for ``refine="em"``) on the same tasks: ``learned_gain`` is the skeleton's l2 minus TGMM's (mean over
the tasks of the paired difference, with its sem and z; ``tgmm_jax.scoring.paired_gain`` pooled over K).

``--bayes_tasks=M`` (default 0: off) also runs the ``bayes`` reference (``baselines.bayes``: the posterior mean
under the tasks' own prior, unit known noise, the tasks' weight and mean ranges and, per K, their cosine
threshold; ``--bayes_sweeps`` and ``--bayes_chains`` change its chains) on the first M tasks of each K, and
reports under ``"bayes"`` its l2 there and every method's l2 on the same tasks, with each method's ratio to it
(mean l2 / bayes' mean l2), per K and pooled (``"all"``).
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from sklearn.mixture import GaussianMixture

from baselines import get_baseline
from baselines.seeded_em import skeleton_settings
from experiments.reporting import format_gain
from tgmm_jax import scoring
from tgmm_jax.estimator import TGMMEstimator, load_checkpoint
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.refine import em_refine
from tgmm_jax.tasks import TaskSpec, cos_threshold_for, sample_tasks

# bayes' own key stream, apart from the tasks' (fold_in(key(seed), d))
_BAYES_STREAM = 1


def define_flags() -> None:
    """The command line's flags (defined by ``__main__`` only: importing the module defines none)."""
    flags.DEFINE_string("checkpoint", "pretrained", "'pretrained', a shipped name, or a path.")
    flags.DEFINE_list("dims", ["2", "8", "32"], "Data dimensions.")
    flags.DEFINE_integer("n", 128, "Points per task.")
    flags.DEFINE_integer("tasks_per_k", 64, "Tasks per K per d.")
    flags.DEFINE_integer("seed", 20261202, "Seed of the tasks and of sklearn.")
    flags.DEFINE_string("json", None, "Output path (JSON); a Markdown table is printed.")
    flags.DEFINE_list("ks", None, "The tasks' Ks (default: the checkpoint's trained Ks).")
    flags.DEFINE_float(
        "cos_threshold",
        None,
        "The means' pairwise-cosine filter (default: the checkpoint's training prior's).",
    )
    flags.DEFINE_integer(
        "bayes_tasks", 0, "Tasks per K (the first of each K) on which the bayes reference also runs; 0: off."
    )
    flags.DEFINE_integer(
        "bayes_sweeps",
        None,
        "Gibbs sweeps per chain of bayes, a third of them burn-in (default: BayesConfig's).",
    )
    flags.DEFINE_integer("bayes_chains", None, "Chains per task of bayes (default: BayesConfig's).")


FLAGS = flags.FLAGS


def _metrics(estimate: MixtureParams, task) -> dict[str, np.ndarray]:
    # a checkpoint with more Ks pads to its own K_max: the slots past the task's K_max are empty
    k_max = task.component_mask.shape[1]
    est = MixtureParams(
        jnp.asarray(estimate.weights[:, :k_max], jnp.float32),
        jnp.asarray(estimate.means[:, :k_max], jnp.float32),
        None,
        jnp.asarray(task.component_mask),
    )
    return {k: np.asarray(v) for k, v in jax.jit(evaluate_estimates)(est, task).items()}


def _sklearn_fit(points, k, seed):
    gm = GaussianMixture(k, covariance_type="spherical", random_state=seed).fit(points)
    return gm


def _pad(weights, means, k_max):
    k = means.shape[0]
    return np.pad(weights, (0, k_max - k)), np.pad(means, ((0, k_max - k), (0, 0)))


def _summary(per_task, k_B, seconds, ks) -> dict:
    out = {"seconds": seconds, "seconds_per_task": seconds / len(k_B)}
    for k in ks:
        cell = k_B == k
        out[f"K={k}"] = {
            name: {
                "mean": float(np.mean(per_task[name][cell])),
                "median": float(np.median(per_task[name][cell])),
            }
            for name in ("l2", "cluster_acc", "oracle_gap")
        }
    return out


def _l2_stat(l2: np.ndarray) -> dict:
    sem = float(np.std(l2, ddof=1) / np.sqrt(len(l2))) if len(l2) > 1 else float("nan")
    return {"mean": float(np.mean(l2)), "median": float(np.median(l2)), "sem": sem}


def _ratio(l2: np.ndarray, reference: np.ndarray) -> dict:
    """mean(l2) / mean(reference) over the same tasks, with its paired delta-method sem."""
    ratio = float(np.mean(l2)) / float(np.mean(reference))
    residual = l2 - ratio * reference
    sem = np.std(residual, ddof=1) / np.sqrt(len(l2)) / np.mean(reference) if len(l2) > 1 else np.nan
    return {"over_bayes": ratio, "over_bayes_sem": float(sem)}


def bayes_overrides(sweeps: int | None = None, chains: int | None = None) -> dict:
    """BayesConfig fields from ``--bayes_sweeps`` (a third of them burn-in) and ``--bayes_chains``."""
    out = {} if sweeps is None else dict(sweeps=sweeps, burn_in=sweeps // 3)
    return out if chains is None else dict(out, chains=chains)


def _bayes_block(task, k_B, per_task, spec: TaskSpec, tasks: int, key, overrides: dict) -> dict:
    """bayes on the first ``tasks`` tasks of each K, under the tasks' prior, and every method's l2 there."""
    prior = dict(weight_range=spec.weight_range, mean_range=spec.mean_range, **overrides)
    out, subsets, bayes_l2 = {"tasks_per_k": tasks}, [], []
    start = time.perf_counter()
    for k in spec.ks:
        index = np.flatnonzero(k_B == k)[:tasks]
        fit = get_baseline("bayes", cos_threshold=cos_threshold_for(spec, k), **prior)
        sub = jax.tree.map(lambda a, index=index: a[index], task)
        estimate, info = fit(jax.random.fold_in(key, k), sub)
        l2 = _metrics(estimate, sub)["l2"]
        out[f"K={k}"] = {
            "tasks": len(index),
            "cos_threshold": fit.keywords["config"].cos_threshold,
            "bayes": {"l2": _l2_stat(l2)},
            "chain_spread_median": float(np.median(info["chain_spread"])),
            "chains_used_mean": float(np.mean(info["chains_used"])),
        }
        subsets.append(index)
        bayes_l2.append(l2)
    out["seconds"] = time.perf_counter() - start  # compilation included
    out["config"] = {  # the cosine threshold is per K (above)
        name: v for name, v in dataclasses.asdict(fit.keywords["config"]).items() if name != "cos_threshold"
    }
    cells = [(f"K={k}", index, l2) for k, index, l2 in zip(spec.ks, subsets, bayes_l2)]
    cells.append(("all", np.concatenate(subsets), np.concatenate(bayes_l2)))
    out["all"] = {"tasks": len(cells[-1][1]), "bayes": {"l2": _l2_stat(cells[-1][2])}}
    for name, index, l2 in cells:
        out[name]["methods"] = {
            method: dict(_l2_stat(m["l2"][index]), **_ratio(m["l2"][index], l2))
            for method, m in per_task.items()
        }
    return out


def _skeleton_fit(skeleton, task, steps: int) -> MixtureParams:
    estimate, _ = skeleton(jax.random.key(0), task)
    return em_refine(task.points, task.point_mask, estimate, steps) if steps else estimate


def run_dim(
    ckpt_arg,
    d: int,
    n: int,
    tasks_per_k: int,
    seed: int,
    task_ks=None,
    cos_threshold=None,
    bayes_tasks: int = 0,
    bayes_sweeps: int | None = None,
    bayes_chains: int | None = None,
) -> dict:
    if not 0 <= bayes_tasks <= tasks_per_k:
        raise ValueError(
            f"bayes_tasks must be between 0 (off) and tasks_per_k={tasks_per_k}, got {bayes_tasks}: bayes runs "
            "on the first bayes_tasks tasks of each K"
        )
    ckpt = load_checkpoint(ckpt_arg)
    trained = tuple(int(k) for k in ckpt.spec.ks)
    ks = tuple(int(k) for k in task_ks) if task_ks else trained
    cos = ckpt.spec.cos_threshold if cos_threshold is None else cos_threshold
    filter_max_k = ckpt.spec.cos_filter_max_k if cos_threshold is None else None  # the checkpoint's prior
    spec = TaskSpec(
        dim=d, ks=ks, n_max=n, n_min=n, variable_n=False, cos_threshold=cos, cos_filter_max_k=filter_max_k
    )
    task = sample_tasks(jax.random.fold_in(jax.random.key(seed), d), spec, tasks_per_k)
    points, k_B = np.asarray(task.points, np.float64), np.asarray(task.num_components)
    result = {
        "d": d,
        "n": n,
        "tasks": len(k_B),
        "ks": list(ks),
        "cos_threshold": cos,
        "cos_filter_max_k": filter_max_k,
        "methods": {},
        "auto": {},
    }

    try:
        skeleton = get_baseline("em_seeded", **skeleton_settings(ckpt.model_config))
    except ValueError:  # no seeded clustering read-out: no skeleton to measure a learned gain against
        skeleton = None
    per_task = {}
    for refine in ("none", "em"):
        est = TGMMEstimator(checkpoint=ckpt_arg, refine=refine)
        est.fit_batch(points, n_components=k_B)  # compile
        start = time.perf_counter()
        fitted = est.fit_batch(points, n_components=k_B)
        seconds = time.perf_counter() - start
        name = "tgmm" if refine == "none" else "tgmm+em5"
        per_task[name] = _metrics(fitted, task)
        result["methods"][name] = _summary(per_task[name], k_B, seconds, ks)
        if skeleton is not None:
            steps = 0 if refine == "none" else est.em_steps
            fit = jax.jit(lambda t, steps=steps: _skeleton_fit(skeleton, t, steps))
            jax.block_until_ready(fit(task))  # compile
            start = time.perf_counter()
            base = jax.block_until_ready(fit(task))
            seconds = time.perf_counter() - start
            base_name = "em_seeded" if refine == "none" else "em_seeded+em5"
            per_task[base_name] = _metrics(base, task)
            result["methods"][base_name] = _summary(per_task[base_name], k_B, seconds, ks)
            gain = scoring.paired_gain(per_task[name], per_task[base_name], np.zeros(len(k_B)))[0]
            result["methods"][name]["learned_gain"] = dict(gain, reference=base_name)

    weights, means = np.zeros((len(k_B), max(ks))), np.zeros((len(k_B), max(ks), d))
    start = time.perf_counter()
    for b, (x, k) in enumerate(zip(points, k_B)):
        gm = _sklearn_fit(x, int(k), seed)
        weights[b], means[b] = _pad(gm.weights_, gm.means_, max(ks))
    seconds = time.perf_counter() - start
    sk = MixtureParams(weights, means, None, np.asarray(task.component_mask))
    per_task["sklearn_gmm"] = _metrics(sk, task)
    result["methods"]["sklearn_gmm"] = _summary(per_task["sklearn_gmm"], k_B, seconds, ks)
    if bayes_tasks:
        key = jax.random.fold_in(jax.random.key(seed + _BAYES_STREAM), d)
        overrides = bayes_overrides(bayes_sweeps, bayes_chains)
        result["bayes"] = _bayes_block(task, k_B, per_task, spec, bayes_tasks, key, overrides)

    by_mode = {}
    for mode in ("bic", "auto"):
        auto = TGMMEstimator(mode, checkpoint=ckpt_arg)
        auto.fit_batch(points)  # compile
        start = time.perf_counter()
        by_mode[mode] = (auto.fit_batch(points).component_mask.sum(axis=1), time.perf_counter() - start)
    sk_picked, start = [], time.perf_counter()
    for x in points:
        bics = [_sklearn_fit(x, k, seed).bic(x) for k in trained]
        sk_picked.append(trained[int(np.argmin(bics))])
    sk_seconds = time.perf_counter() - start
    for name, picks, seconds in (
        ("tgmm_bic", *by_mode["bic"]),  # the BIC loop (what "auto" was before the learned K posterior)
        ("tgmm_posterior", *by_mode["auto"]),
        ("sklearn_bic", np.asarray(sk_picked), sk_seconds),
    ):
        result["auto"][name] = {
            "pick_rate": float(np.mean(picks == k_B)),
            **{f"K={k}": float(np.mean(picks[k_B == k] == k)) for k in ks},
            "seconds": seconds,
        }
    return result


def markdown(results: list[dict]) -> str:
    lines = [
        (
            "| d | method | l2 (mean over K) | cluster acc | seconds / task | true K picked (bic / auto) |"
            " learned gain (vs its skeleton) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        bic = r["auto"].get(
            "tgmm_bic", r["auto"].get("tgmm_auto")
        )  # older JSON: "tgmm_auto" was the BIC loop
        autos = {"tgmm": bic, "sklearn_gmm": r["auto"]["sklearn_bic"]}
        for name, m in r["methods"].items():
            cells = [v for key, v in m.items() if key.startswith("K=")]
            l2 = np.mean([c["l2"]["mean"] for c in cells])
            acc = np.mean([c["cluster_acc"]["mean"] for c in cells])
            pick = f"{autos[name]['pick_rate']:.0%}" if name in autos else ""
            if name == "tgmm" and "tgmm_posterior" in r["auto"]:
                pick = f"bic {pick}, auto {r['auto']['tgmm_posterior']['pick_rate']:.0%}"
            gain = m.get("learned_gain")
            gain_text = f"{format_gain(gain)} vs {gain['reference']}" if gain else ""
            lines.append(
                f"| {r['d']} | {name} | {l2:.3f} | {acc:.3f} | {m['seconds_per_task'] * 1e3:.2f} ms | {pick} |"
                f" {gain_text} |"
            )
    return "\n".join(lines)


def bayes_markdown(results: list[dict]) -> str:
    """Per d and K: bayes' mean l2 on its tasks and every method's mean l2 there over bayes'."""
    rows = [r for r in results if "bayes" in r]
    if not rows:
        return ""
    names = list(rows[0]["bayes"]["all"]["methods"])
    lines = [
        "| d | K | tasks | bayes l2 (mean / median) | " + " | ".join(f"{m} / bayes" for m in names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        for name in [f"K={k}" for k in r["ks"]] + ["all"]:
            cell = r["bayes"][name]
            b = cell["bayes"]["l2"]
            ratios = " | ".join(
                f"{cell['methods'][m]['over_bayes']:.2f} ± {cell['methods'][m]['over_bayes_sem']:.2f}"
                for m in names
            )
            lines.append(
                f"| {r['d']} | {name.removeprefix('K=')} | {cell['tasks']} | {b['mean']:.3f} / {b['median']:.3f} |"
                f" {ratios} |"
            )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = [
        run_dim(
            FLAGS.checkpoint,
            int(d),
            FLAGS.n,
            FLAGS.tasks_per_k,
            FLAGS.seed,
            FLAGS.ks,
            FLAGS.cos_threshold,
            FLAGS.bayes_tasks,
            FLAGS.bayes_sweeps,
            FLAGS.bayes_chains,
        )
        for d in FLAGS.dims
    ]
    out = {
        "checkpoint": FLAGS.checkpoint,
        "seed": FLAGS.seed,
        "backend": jax.default_backend(),
        "results": results,
    }
    print(markdown(results))
    if FLAGS.bayes_tasks:
        print(bayes_markdown(results))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
