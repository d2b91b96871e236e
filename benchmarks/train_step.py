"""Our jitted training step against the official code's model in PyTorch, on the same CPU, in one run.

    python -m benchmarks.train_step --json results/benchmark_train_step_cpu.json
    python -m benchmarks.train_step --json /tmp/t.json --sizes tiny --tasks-per-k 4 --n 16 --no-torch   # quick

Sizes: ``tiny``, ``small`` (MODEL_SIZES with the paper's recipe: `gpt2` backbone, attentive read-out, est loss,
AdamW), ``paper`` (experiments/configs/paper.py: the same at 12 x 128, layers unrolled) and ``cluster``
(experiments/configs/cluster.py at d only: `set` backbone, normalised read-in, clustering read-out, est_matched +
responsibility loss). The batch is the paper's: ``--tasks-per-k`` tasks per
K = 2..5, N = ``--n`` (variable length, N/2..N), D = ``--d``.

Ours: the step ``tgmm_jax.train.state.make_train_step`` builds, as the trainer does (tasks sampled inside the
step, AdamW, window sums, donated state); the time of sampling alone is reported beside it. Reference:
``benchmarks.torch_reference`` (Hugging Face GPT2Model, eager, ``torch.set_num_threads(--torch-threads)``) on a
fixed batch of the same shape drawn by our sampler. For ``cluster`` the reference is the same-size GPT-2
(causal, positions) with the attentive read-out: the backbone's work matches, the read-outs differ.

Timing: one compiling call (reported), one warm call, then up to ``--repeats`` calls, fewer when a step is slow
(at most ``--budget-s`` seconds per side and size, at least 2); the median is reported with every time.
Cost model: FLOPs per step from an analytic count of the matmuls and attention (3 x forward), the same for
both sides; XLA's compiled ``cost_analysis()`` is kept beside (it counts a loop body once, so scanned layers and
the CPU attention's chunk loop make it an undercount), and torch's FlopCounterMode for the reference; achieved
FLOP/s against a float32 matmul peak measured in the same run. The load average is noted around every measurement: other jobs share the cores.
Without torch (the ``[bench]`` extra) the PyTorch side is skipped with a message and ours still runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time

import jax
import numpy as np

from benchmarks import machine
from experiments.configs import cluster as cluster_config
from experiments.configs import paper as paper_config
from tgmm_jax.tasks import sample_tasks
from tgmm_jax.train import config as config_lib
from tgmm_jax.train import sharding
from tgmm_jax.train import state as state_lib

SIZES = ("tiny", "small", "paper", "cluster")


def size_config(name: str, d: int, n: int, tasks_per_k: int):
    """The training config of size ``name`` at data dimension ``d`` and N = ``n``."""
    if name == "cluster":
        config = cluster_config.get_config()
        config.train_dims = ()  # one dimension, d, like the reference
    elif name == "paper":
        config = paper_config.get_config()  # the paper's model as experiments/configs/paper.py trains it
    elif name in config_lib.MODEL_SIZES:
        config = config_lib.default_config()
        config.model = config_lib.model_group(name)
    else:
        raise ValueError(f"unknown size {name!r}; choose from {SIZES}")
    config.task.dim, config.task.n_max, config.tasks_per_k = d, n, tasks_per_k
    config.eval_every = 0
    return config


def _forward_flops(model_config, spec, tasks_per_k: int, readin_inputs: int) -> dict[str, float]:
    """Matmul + attention FLOPs of one forward (2 per multiply-add; dominant terms), by part."""
    b, n, e, k = spec.batch_size(tasks_per_k), spec.n_max, model_config.width, spec.k_max
    tokens = b * n
    per_layer = 2 * tokens * e * (3 * e + e + 2 * model_config.mlp_ratio * e) + 2 * 2 * b * n * n * e
    parts = {
        "read_in": 2.0 * tokens * readin_inputs * e,
        "backbone": float(model_config.num_layers * per_layer),
    }
    if model_config.readout == "cluster":
        t = model_config.cluster_iters
        # key/value projections, then per iteration the logits (and, before the last, the attended values)
        parts["read_out"] = 2.0 * 2 * tokens * e * e + 2.0 * tokens * k * e * (2 * t + 1)
    else:
        out = k + spec.dim
        parts["read_out"] = 2.0 * 2 * tokens * e * out + 2.0 * 2 * b * k * n * out
    return parts


def analytic_step_flops(model_config, spec, tasks_per_k: int, readin_inputs: int) -> dict:
    parts = _forward_flops(model_config, spec, tasks_per_k, readin_inputs)
    forward = sum(parts.values())
    return {"forward": forward, "step": 3.0 * forward, "forward_parts": parts}


# XLA's cost_analysis() counts a loop body once: scanned layers and, on CPU, the attention's chunk loop
# (gpt2.attention_chunks) make it an undercount, so it is kept beside the analytic count, not used.
_ANALYTIC_SOURCE = "analytic (matmuls + attention, 3 x forward)"


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def _build_ours(config):
    training = state_lib.build_training(config, sharding.make_mesh())
    (step,) = training.step_fns  # size_config trains one dimension
    return training.spec, training.model_config, training.model, training.state, step, training.data_key


def prepare_ours(config) -> tuple:
    """(run: one blocking training step, info: FLOPs, first-call time, sampling time, parameter count)."""
    spec, model_config, _, state, step, data_key = _build_ours(config)
    start = time.perf_counter()
    compiled = step.lower(state, data_key).compile()  # run below too: one compilation
    compile_s = time.perf_counter() - start
    readin_inputs = int(state.params["read_in"]["proj"]["kernel"].shape[0])
    analytic = analytic_step_flops(model_config, spec, config.tasks_per_k, readin_inputs)
    flops_xla = _xla_flops(compiled)
    params = int(sum(x.size for x in jax.tree.leaves(state.params)))

    def run():
        nonlocal state
        state = jax.block_until_ready(compiled(state, data_key))

    first = machine.timed(run, 1)[0]
    sample = jax.jit(lambda key: sample_tasks(key, spec, config.tasks_per_k))
    jax.block_until_ready(sample(data_key))
    sample_s = machine.timed(lambda: jax.block_until_ready(sample(data_key)), 3)
    return run, {
        "compile_s": compile_s,
        "first_call_s": first,
        "sampling_ms_median": 1e3 * float(np.median(sample_s)),
        "flops_per_step": analytic["step"],
        "flops_source": _ANALYTIC_SOURCE + "; XLA's count (loop bodies once) kept beside",
        "flops_per_step_xla": flops_xla,
        "flops_per_step_analytic": analytic["step"],
        "analytic_forward_parts": analytic["forward_parts"],
        "analytic_over_xla": analytic["step"] / flops_xla,
        "params": params,
    }


def _import_torch_reference():
    """The torch reference module, or (None, why) when torch or transformers is not installed."""
    try:
        from benchmarks import torch_reference
    except ImportError as e:
        return None, f"PyTorch side skipped: {e} (install the benchmark extra: pip install -e '.[bench]')"
    return torch_reference, None


def prepare_torch(ref, config, attn_implementation: str | None, threads: int) -> tuple:
    """(step(threads): one PyTorch step on a fixed batch of the same shape, info)."""
    spec, model_config = config_lib.validate_config(config)
    task = jax.device_get(sample_tasks(jax.random.key(config.seed), spec, config.tasks_per_k))
    step, module = ref.make_step(
        {f: getattr(model_config, f) for f in ("width", "num_layers", "num_heads", "task_embed_dim")},
        {"dim": spec.dim, "n": spec.n_max},
        task,
        spec.ks,
        config.optim.learning_rate,
        config.optim.weight_decay,
        attn_implementation,
    )
    first = machine.timed(functools.partial(step, threads), 1)[0]
    counted = ref.counted_flops(functools.partial(step, threads))
    reference_config = model_config.__class__.from_dict(
        {**model_config.to_dict(), "readin": "raw", "readout": "attentive", "backbone": "gpt2"}
    )
    analytic = analytic_step_flops(
        reference_config, spec, config.tasks_per_k, spec.dim + model_config.task_embed_dim
    )
    return step, {
        "first_call_s": first,
        "attn_implementation": module.attn_implementation,
        "flops_per_step": analytic["step"],
        "flops_source": _ANALYTIC_SOURCE,
        "flops_per_step_torch_counter": counted,
        "threads": threads,
        "params": int(sum(p.numel() for p in module.parameters())),
    }


def time_interleaved(runs: dict, repeats: int, budget_s: float) -> dict:
    """Each side's step times, the sides alternating step by step so that both see the same load.

    One warm call each, then ``n`` rounds: ``repeats`` at most, fewer when a round would pass ``budget_s``
    in total, 2 at least. Returns {side: {ms_per_step_median, ms_per_step_all, ...}}.
    """
    before = machine.load()
    warm = {side: machine.timed(run, 1)[0] for side, run in runs.items()}
    rounds = max(2, min(repeats, math.floor(budget_s / max(sum(warm.values()), 1e-6))))
    times = {side: [] for side in runs}
    for _ in range(rounds):
        for side, run in runs.items():
            times[side].extend(machine.timed(run, 1))
    after = machine.load()
    return {
        side: {
            "ms_per_step_median": 1e3 * float(np.median(times[side])),
            "ms_per_step_min": 1e3 * float(np.min(times[side])),
            "ms_per_step_all": [1e3 * t for t in times[side]],
            "ms_warm_call": 1e3 * warm[side],
            "timed_steps": rounds,
            "load_before": before,
            "load_after": after,
        }
        for side in runs
    }


def _model_summary(config) -> dict:
    m = config.model
    return {
        k: m[k]
        for k in ("backbone", "readin", "readout", "num_layers", "width", "num_heads", "task_embed_dim")
    } | {"objective": config.objective, "resp_weight": config.resp_weight}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {SIZES}")
    parser.add_argument("--tasks-per-k", type=int, default=64)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per side and size (at most)")
    parser.add_argument(
        "--budget-s", type=float, default=40.0, help="timed seconds per side and size (about)"
    )
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the float32 peak matmul")
    parser.add_argument("--torch-threads", type=int, default=None, help="default: the CPU count")
    parser.add_argument(
        "--torch-1thread", default="tiny,small,cluster", help="sizes also timed with 1 torch thread"
    )
    parser.add_argument(
        "--torch-attn", default=None, help="transformers attn_implementation (default: its own)"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="our compute dtype (ModelConfig.dtype; parameters stay float32); the reference is float32",
    )
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in SIZES:
            raise ValueError(f"unknown size {s!r}; choose from {SIZES}")

    ref, why = (None, "PyTorch side skipped: --no-torch") if args.no_torch else _import_torch_reference()
    report = {
        "machine": machine.machine_info(),
        "note": "wall times on a machine whose cores other jobs share; see the load averages "
        "(1/5/15 min) noted around each measurement",
        "settings": {
            "tasks_per_k": args.tasks_per_k,
            "ks": [2, 3, 4, 5],
            "n": args.n,
            "d": args.d,
            "batch_tasks": 4 * args.tasks_per_k,
            "repeats": args.repeats,
            "budget_s": args.budget_s,
            "ours_dtype": args.dtype,
            "torch_dtype": "float32",
        },
        "peak": {"jax": machine.jax_matmul_peak(args.peak_size)},
        "torch": None,
        "sizes": [],
    }
    if ref is None:
        print(why, flush=True)
        report["torch_skipped"] = why
    else:
        import torch

        threads = args.torch_threads or report["machine"]["cpus"]
        torch.set_num_threads(threads)
        report["torch"] = ref.versions()
        report["peak"]["torch"] = ref.matmul_peak(args.peak_size) | {"load": machine.load()}
    peak = max(p["best_gflops_per_s"] for p in report["peak"].values())
    report["peak"]["used_gflops_per_s"] = peak

    for name in sizes:
        config = size_config(name, args.d, args.n, args.tasks_per_k)
        row = {"size": name, "model": _model_summary(config)}
        runs, infos = {}, {}
        ours_config = config.copy_and_resolve_references()
        ours_config.model.dtype = args.dtype
        runs["ours"], infos["ours"] = prepare_ours(ours_config)
        if ref is not None:
            torch_step, infos["torch"] = prepare_torch(ref, config, args.torch_attn, threads)
            runs["torch"] = functools.partial(torch_step, threads)
            if name in args.torch_1thread.split(","):  # the same step without OpenMP barriers between threads
                runs["torch_1thread"] = functools.partial(torch_step, 1)
                infos["torch_1thread"] = dict(infos["torch"], threads=1)
        timings = time_interleaved(runs, args.repeats, args.budget_s)
        for side in runs:
            seconds = timings[side]["ms_per_step_median"] / 1e3
            gflops = infos[side]["flops_per_step"] / seconds / 1e9
            row[side] = infos[side] | timings[side]
            row[side] |= {"achieved_gflops_per_s": gflops, "fraction_of_peak": gflops / peak}
        for side in ("torch", "torch_1thread"):
            if side in runs:
                ratio = row["ours"]["ms_per_step_median"] / row[side]["ms_per_step_median"]
                row[f"time_ratio_ours_over_{side}"] = ratio
                row[f"speedup_vs_{side}"] = 1.0 / ratio
        report["sizes"].append(row)
        _print_row(row)
        with open(args.json, "w") as f:  # after every size: a long run leaves what it measured
            json.dump(report, f, indent=2)
    report["machine"]["load_at_end"] = machine.load()
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)


def _print_row(row) -> None:
    o = row["ours"]
    line = (
        f"{row['size']:8s} ours {o['ms_per_step_median']:9.1f} ms ({o['achieved_gflops_per_s']:6.1f} GFLOP/s, "
        f"{100 * o['fraction_of_peak']:4.1f}% of peak; XLA {o['flops_per_step_xla'] / 1e9:8.1f} GFLOP, "
        f"analytic/XLA {o['analytic_over_xla']:.2f})"
    )
    if "torch" in row:
        t = row["torch"]
        line += (
            f" | torch {t['ms_per_step_median']:9.1f} ms ({t['achieved_gflops_per_s']:6.1f} GFLOP/s)"
            f" | ours/torch {row['time_ratio_ours_over_torch']:.2f} (speed-up {row['speedup_vs_torch']:.2f}x)"
        )
    if "torch_1thread" in row:
        line += f" | torch 1 thread {row['torch_1thread']['ms_per_step_median']:9.1f} ms"
    print(line, flush=True)


if __name__ == "__main__":
    main()
