"""What a benchmark ran on, and the machine's load around each measurement (other jobs share the cores)."""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('unknown' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> list[float]:
    """1, 5 and 15-minute load averages (runnable processes; above the core count means contention)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def report_header() -> dict:
    """The "machine" record a benchmark's JSON starts with: ``machine_info`` and the load before the run."""
    return {**machine_info(), "load_average_before": load()}


def write_report(report: dict, path: str) -> None:
    """Adds the load after the run to ``report["machine"]`` and writes the report as JSON to ``path``."""
    report["machine"]["load_average_after"] = load()
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def timed(fn, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` (which must block until its work is done)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def jax_matmul_peak(size: int = 2048, repeats: int = 5) -> dict:
    """Best float32 GFLOP/s of a size x size matmul in XLA on the default device: the peak we compare with."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    before = load()
    seconds = timed(lambda: jax.block_until_ready(matmul(a, b)), repeats)
    return {**matmul_rates(size, seconds), "load_before": before, "load_after": load()}


def matmul_rates(size: int, seconds: list[float]) -> dict:
    """Best and median float32 GFLOP/s of a size x size matmul from its timed calls (both peaks' record)."""
    flops = 2.0 * size**3
    return {
        "size": size,
        "dtype": "float32",
        "best_gflops_per_s": flops / min(seconds) / 1e9,
        "median_gflops_per_s": flops / float(np.median(seconds)) / 1e9,
    }
