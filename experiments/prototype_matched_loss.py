"""Measures the permutation-matched loss against the paper's ascending-weight loss (a prototype).

Setting of the throwaway prototype: D = 2, K in {2, 3, 4, 5}, `set` backbone, 2 layers, width 64,
N = 32 (training N ~ U{16..32}), 16 tasks per K per step, Adam 2e-3, 4000 steps. Both objectives train
from the same init and see the same data stream; all methods are scored with the aligned l2
(metrics.evaluate_estimates) on the same fixed evaluation tasks (N = 32), and EM runs with the official
initialisation (baselines.em, init='official', 1 restart, 100 iterations).

Usage: python -m experiments.prototype_matched_loss [--steps 4000] [--eval_tasks_per_k 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import numpy as np
import optax

from tgmm_jax import metrics
from tgmm_jax.losses import compute_loss
from tgmm_jax.models import make_model, model_config
from tgmm_jax.tasks import TaskSpec, sample_tasks


def _per_k(values_B: jax.Array, num_components_B: jax.Array, ks) -> dict[int, float]:
    values, k_of = np.asarray(values_B), np.asarray(num_components_B)
    return {int(k): float(np.mean(values[k_of == k])) for k in ks}


def train_and_evaluate(
    objective: str,
    *,
    steps: int,
    seed: int,
    eval_task,
    spec: TaskSpec,
    tasks_per_k: int,
    lr: float,
    log_every: int,
) -> dict:
    """Trains one tiny set-backbone model with ``objective``; returns per-K aligned l2 on ``eval_task``."""
    model = make_model(model_config("small", backbone="set", num_layers=2), spec)
    init_key, data_key = jax.random.split(jax.random.key(seed))
    probe = sample_tasks(data_key, spec, 1)
    params = model.init(init_key, probe.points, probe.point_mask, probe.num_components)
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, index):
        task = sample_tasks(jax.random.fold_in(data_key, index), spec, tasks_per_k)

        def loss_fn(p):
            out = model.apply(p, task.points, task.point_mask, task.num_components)
            return compute_loss(objective, out, task)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def evaluate(params, task):  # the task is an argument, not a closed-over constant XLA would fold
        out = model.apply(params, task.points, task.point_mask, task.num_components)
        return metrics.evaluate_estimates(out.to_params(), task)

    start, history = time.time(), []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, i)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            l2 = _per_k(evaluate(params, eval_task)["l2"], eval_task.num_components, spec.ks)
            history.append({"step": i + 1, "loss": float(loss), "l2": l2, "seconds": time.time() - start})
            print(
                f"[{objective}] step {i + 1} loss {float(loss):.3f} l2 {l2} ({time.time() - start:.0f}s)",
                flush=True,
            )
    return {"final_l2": history[-1]["l2"], "history": history, "train_seconds": time.time() - start}


def evaluate_em(eval_task, spec: TaskSpec, seed: int) -> dict[int, float]:
    from baselines.em import EMConfig, fit_em  # the project's EM baseline, official init (mu ~ N(0, I))

    estimate, _ = fit_em(jax.random.key(seed), eval_task, EMConfig(init="official"))
    return _per_k(metrics.evaluate_estimates(estimate, eval_task)["l2"], eval_task.num_components, spec.ks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval_tasks_per_k", type=int, default=256)
    parser.add_argument("--objectives", default="est_matched,est")
    parser.add_argument("--log_every", type=int, default=1000)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    train_spec = TaskSpec(dim=2, ks=(2, 3, 4, 5), n_max=32)
    eval_spec = TaskSpec(dim=2, ks=(2, 3, 4, 5), n_max=32, variable_n=False)
    eval_task = sample_tasks(jax.random.key(10_000 + args.seed), eval_spec, args.eval_tasks_per_k)
    run = functools.partial(
        train_and_evaluate,
        steps=args.steps,
        seed=args.seed,
        eval_task=eval_task,
        spec=train_spec,
        tasks_per_k=16,
        lr=2e-3,
        log_every=args.log_every,
    )
    results = {"args": vars(args)}
    for objective in args.objectives.split(","):
        results[objective] = run(objective)
    results["em_official_init"] = evaluate_em(eval_task, eval_spec, args.seed)
    print("aligned l2 (means + weights), mean over", args.eval_tasks_per_k, "tasks per K, N = 32, D = 2")
    print("K      " + "  ".join(f"{k:>6d}" for k in eval_spec.ks))
    for name in [*args.objectives.split(","), "em_official_init"]:
        l2 = results[name] if name == "em_official_init" else results[name]["final_l2"]
        print(f"{name:<17s}" + "  ".join(f"{l2[k]:6.2f}" for k in eval_spec.ks))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
