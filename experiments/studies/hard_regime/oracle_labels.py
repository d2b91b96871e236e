"""Where is the small-N gap: in the labels or in the parameters given the labels?

    python -m experiments.studies.hard_regime.oracle_labels [--dims=2,8] [--ns=16,32]

For the hard-regime study's gap-regime tasks (the same seed and cells as ``hard_regime.run``: 256 per cell,
``bayes`` on the first 64), the complete-data maximum-likelihood estimate, which is told every point's true
label: each component's sample mean and its share of the points. Its l2 on bayes' tasks, against bayes' and
em_kmeanspp's mean l2 from the study's JSON (``--study``), says how much of em_kmeanspp's excess over bayes
remains once the clustering is perfect: that part is parameter estimation given the labels (the prior's
shrinkage of means and weights), which no loss on the responsibilities can teach. Writes ``--out``.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags

from experiments.studies.hard_regime.run import GAP_RATIO, KS, grid_tasks
from tgmm_jax import scoring
from tgmm_jax.gmm import MixtureParams
from tgmm_jax.metrics import evaluate_estimates
from tgmm_jax.tasks import GMMTask

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("dims", ["2", "8"], "Data dimensions.")
    flags.DEFINE_list("ns", ["16", "32"], "Points per task.")
    flags.DEFINE_integer("tasks_per_cell", 256, "Tasks per cell (as the study).")
    flags.DEFINE_integer("bayes_tasks", 64, "bayes' tasks per cell (the first), where the ratios are taken.")
    flags.DEFINE_integer("eval_seed", 20261206, "The study's task seed.")
    flags.DEFINE_string(
        "study", "results/hard_regime.json", "The hard-regime study's JSON (bayes, em_kmeanspp)."
    )
    flags.DEFINE_string("out", "results/small_n_ablation/oracle_labels.json", "Output JSON.")


def complete_data_mle(task: GMMTask) -> MixtureParams:
    """Each real component's sample mean of its true points and their share of the real points (a component
    with no point keeps mean 0)."""
    k_max = task.weights.shape[1]
    onehot_BxNxK = jax.nn.one_hot(task.labels, k_max) * task.point_mask[..., None]
    counts_BxK = onehot_BxNxK.sum(axis=1)
    sums_BxKxD = np.einsum("bnk,bnd->bkd", onehot_BxNxK, task.points)
    means = np.where(counts_BxK[..., None] > 0, sums_BxKxD / np.maximum(counts_BxK, 1)[..., None], 0.0)
    weights = counts_BxK / np.asarray(task.point_mask).sum(axis=1, keepdims=True)
    return MixtureParams(weights, means, None, task.component_mask)


def main(argv):
    del argv
    with open(FLAGS.study) as f:
        study = {
            (c["dim"], c["N"], c["K"], c["method"]): c for c in json.load(f)["cells"] if c["kind"] == "grid"
        }
    rows = []
    for dim in map(int, FLAGS.dims):
        for n in map(int, FLAGS.ns):
            _, task = grid_tasks(
                FLAGS.eval_seed, dim, n, FLAGS.tasks_per_cell
            )  # the study's grid_block tasks
            fingerprint = study[(dim, n, KS[0], "bayes")]["fingerprint"]
            if scoring.task_fingerprint(task) != fingerprint:
                raise ValueError(
                    f"d={dim} N={n}: these are not the tasks of {FLAGS.study} (fingerprint differs)"
                )
            l2_B = np.asarray(evaluate_estimates(complete_data_mle(task), task)["l2"])
            for i, k in enumerate(KS):
                first = l2_B[i * FLAGS.tasks_per_cell :][: FLAGS.bayes_tasks]
                bayes = study[(dim, n, k, "bayes")]["l2"]["mean"]
                em = study[(dim, n, k, "em_kmeanspp")]["l2_on_bayes_tasks"]["mean"]
                oracle = float(first.mean())
                rows.append(
                    dict(
                        dim=dim,
                        N=n,
                        K=k,
                        bayes=bayes,
                        em_kmeanspp=em,
                        oracle_labels=oracle,
                        oracle_sem=float(first.std(ddof=1) / np.sqrt(first.size)),
                        oracle_over_bayes=oracle / bayes,
                        em_over_bayes=em / bayes,
                        gap=em >= GAP_RATIO * bayes,
                        # share of em_kmeanspp's excess over bayes left with perfect labels
                        excess_left=(oracle - bayes) / (em - bayes) if em > bayes else float("nan"),
                    )
                )
                print(
                    f"d={dim} N={n} K={k}: bayes {bayes:.3f} em {em:.3f} ({em / bayes:.2f}x) "
                    f"true labels {oracle:.3f} ({oracle / bayes:.2f}x)",
                    flush=True,
                )
    with open(FLAGS.out, "w") as f:
        json.dump(dict(settings=dict(study=FLAGS.study, eval_seed=FLAGS.eval_seed), cells=rows), f, indent=1)
    print("wrote", FLAGS.out)


if __name__ == "__main__":
    define_flags()
    app.run(main)
