"""Training-step time with the hand-written attention backward (``gpt2.attention``) against the plain
formulation differentiated by autodiff (``gpt2.plain_attention``, the code before), in one run.

    python -m benchmarks.attention --json results/benchmark_attention_cpu.json [--steps 10] [--rounds 5]

For each config (experiments/configs/cluster.py at d=8 only, and tiny.py at its default and at d=8, n=128): the jitted
train step of ``tgmm_jax.train.state.make_train_step`` (the trainer's; with ``train_dims`` the step
cycles through the dimensions as the trainer does), compiled once with each attention, then ``--rounds``
alternating rounds of ``--steps`` steps each (old, new, old, new, ...); ms/step is the median over rounds,
and the ratio old / new is the median of the per-round ratios (alternation cancels most of the drift of a
shared machine). One attention layer's forward and forward+backward are timed the same way.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp

from benchmarks import machine
from tgmm_jax.models import gpt2
from tgmm_jax.train import config as config_lib
from tgmm_jax.train import sharding
from tgmm_jax.train import state as state_lib

CONFIGS = (
    # cluster.py trains at d = 2, 8, 32 in turn; one dimension keeps the benchmark to two compilations
    ("cluster_d8", "experiments.configs.cluster", "dims=8"),
    ("tiny", "experiments.configs.tiny", None),
    ("tiny_d8_n128", "experiments.configs.tiny", "d=8,n=128"),
)
CORES = {"old": gpt2.plain_attention, "new": gpt2.attention}


def _train_steps(config, core):
    """(initial state, the step functions compiled with ``core``, data key)."""
    training = state_lib.build_training(config, sharding.make_mesh())
    state, fns, data_key = training.state, training.step_fns, training.data_key
    with mock.patch.object(gpt2, "attention_core", core):  # jit traces on the first call
        for fn in fns:
            state = jax.block_until_ready(fn(state, data_key))
    return state, fns, data_key


def _time_steps(state, fns, data_key, steps):
    start = time.perf_counter()
    for i in range(steps):
        state = fns[i % len(fns)](state, data_key)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / steps, state


def _alternate(timers: dict, rounds: int) -> dict:
    """Runs each timer (name -> callable returning seconds) once per round, alternating."""
    seconds = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            seconds[name].append(timer())
    ratios = [o / n for o, n in zip(seconds["old"], seconds["new"])]
    return {
        "old_ms": 1000 * statistics.median(seconds["old"]),
        "new_ms": 1000 * statistics.median(seconds["new"]),
        "ratio_old_over_new": statistics.median(ratios),
        "per_round_ratios": ratios,
    }


def bench_config(module: str, arg: str | None, steps: int, rounds: int) -> dict:
    config = importlib.import_module(module).get_config(arg)
    runs = {name: list(_train_steps(config, core)) for name, core in CORES.items()}

    def timer(name):
        def run():
            seconds, runs[name][0] = _time_steps(runs[name][0], runs[name][1], runs[name][2], steps)
            return seconds

        return run

    row = _alternate({name: timer(name) for name in CORES}, rounds)
    m = config.model
    row.update(
        config=f"{module}:{arg}" if arg else module,
        layers=m.num_layers,
        width=m.width,
        heads=m.num_heads,
        backbone=m.backbone,
        tasks=config.tasks_per_k * len(config.task.ks),
        n=config.task.n_max,
        train_dims=list(_train_dims(config)),
    )
    return row


def _train_dims(config):
    return [s.dim for s in config_lib.train_specs(config_lib.validate_config(config)[0], config)]


def bench_layer(batch: int, n: int, width: int, heads: int, rounds: int, calls: int = 5) -> dict:
    """One attention core alone (q, k, v [B, H, N, F], padded keys): forward and forward+backward."""
    f = width // heads
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, g = (jax.random.normal(key, (batch, heads, n, f)) for key in keys)
    lengths_Bx1 = jax.random.randint(keys[0], (batch, 1), n // 2, n + 1)
    point_mask_BxN = jnp.arange(n)[None, :] < lengths_Bx1
    row = {"B": batch, "N": n, "width": width, "heads": heads}
    for what in ("forward", "forward_backward"):
        fns = {}
        for name, core in CORES.items():
            if what == "forward":
                fns[name] = jax.jit(lambda q, k, v, core=core: core(q, k, v, point_mask_BxN, False))
            else:
                fns[name] = jax.jit(
                    lambda q, k, v, core=core: jax.vjp(lambda *a: core(*a, point_mask_BxN, False), q, k, v)[
                        1
                    ](g)
                )
            jax.block_until_ready(fns[name](q, k, v))

        def timer(fn):
            def run():
                start = time.perf_counter()
                for _ in range(calls):
                    jax.block_until_ready(fn(q, k, v))
                return (time.perf_counter() - start) / calls

            return run

        row[what] = _alternate({name: timer(fn) for name, fn in fns.items()}, rounds)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default=",".join(name for name, _, _ in CONFIGS))
    args = parser.parse_args(argv)
    report = {
        "machine": machine.report_header(),
        "settings": {"steps": args.steps, "rounds": args.rounds},
        "old": "gpt2.plain_attention: softmax(q k^T / sqrt(F) + bias) v differentiated by autodiff",
        "new": "gpt2.attention: the same forward and a hand-written backward that recomputes the probabilities, "
        "both in a loop over chunks of tasks on CPU (gpt2.attention_chunks)",
        "layer": bench_layer(64, 128, 64, 4, args.rounds),
        "train_step": {},
    }
    lay = report["layer"]
    for what in ("forward", "forward_backward"):
        r = lay[what]
        print(
            f"one layer {what:16s} old {r['old_ms']:7.1f} ms  new {r['new_ms']:7.1f} ms  "
            f"ratio {r['ratio_old_over_new']:.2f}x",
            flush=True,
        )
    wanted = args.configs.split(",")
    for name, module, arg in CONFIGS:
        if name not in wanted:
            continue
        row = bench_config(module, arg, args.steps, args.rounds)
        report["train_step"][name] = row
        print(
            f"train step {name:14s} old {row['old_ms']:7.1f} ms  new {row['new_ms']:7.1f} ms  "
            f"ratio {row['ratio_old_over_new']:.2f}x",
            flush=True,
        )
    machine.write_report(report, args.json)


if __name__ == "__main__":
    main()
