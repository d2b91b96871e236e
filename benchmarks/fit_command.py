"""Where the time of a warm-cache ``python -m experiments.fit`` goes, on 150 points (d = 8, K = 3).

    python -m benchmarks.fit_command --json=/tmp/fit_command.json

Measured, each in a fresh interpreter with the command's caches in a temporary $XDG_CACHE_HOME:
  command   the whole command (``python -m experiments.fit --data=points.npy --n_components=3``): a first run
            that fills the caches (cold), then ``--repeats`` warm runs; seconds of each process.
  traced    the same warm fit with JAX's compilation cache only (the command before the cache of traced
            programs, ``tgmm_jax.export_cache``): it traces and lowers the fit's program in every process.
  floors    ``python -c pass`` (the interpreter) and ``python -c "import jax"`` (no JAX command can start
            faster), ``--repeats`` runs each, interleaved with the command's.
  phases    the command's steps in one warm process, timed one by one: importing jax and the rest of
            ``experiments.fit`` (the library, flax, absl; never scikit-learn: the command fits with
            ``TGMMEstimatorCore``, which is ``TGMMEstimator`` without its base classes), turning the
            caches on, reading the points, loading the checkpoint, the fit (the cached traced program, then
            the compilation cache's executable) and the result (predict, BIC, AIC, JSON); with JAX's own event
            durations (tracing, lowering, cache retrieval, backend compiles: 0 means every program came from
            the cache) and the export cache's hits and misses.
The JSON (``--json``) holds every number, the machine and its load average; a summary is printed. A benchmark,
not a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm runs of the whole command.")
_JSON = flags.DEFINE_string("json", None, "Output path (JSON).")
_CHILD = flags.DEFINE_string("child", None, "Internal: the points file of the in-process phase timing.")
_TRACED = flags.DEFINE_string("traced", None, "Internal: the command on this file, compilation cache only.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, D, K, SEED = 150, 8, 3, 0


def _phases(data: str) -> dict:
    """The command's steps in this process (the cache is warm: an earlier process filled it)."""
    from collections import defaultdict

    out, start = {}, time.perf_counter()
    import jax  # timed apart from the rest

    out["import_jax"] = time.perf_counter() - start
    start = time.perf_counter()
    from experiments import fit
    from tgmm_jax import export_cache
    from tgmm_jax.pretrained import load_checkpoint

    out["import_experiments_fit"] = time.perf_counter() - start
    out["imported_sklearn_or_scipy_stats"] = "sklearn" in sys.modules or "scipy.stats" in sys.modules
    durations, counts = defaultdict(float), defaultdict(int)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: durations.__setitem__(event, durations[event] + duration)
    )
    jax.monitoring.register_event_listener(lambda event, **kw: counts.__setitem__(event, counts[event] + 1))
    for name, step in (
        ("enable_caches", fit.enable_caches),
        ("load_points", lambda: fit.load_points(data)),
        ("load_checkpoint", lambda: load_checkpoint("pretrained")),
    ):
        start = time.perf_counter()
        value = step()
        out[name] = time.perf_counter() - start
        if name == "load_points":
            X = value
    start = time.perf_counter()
    from tgmm_jax.estimator import TGMMEstimatorCore  # the command's: TGMMEstimator would import sklearn

    est = TGMMEstimatorCore(K, random_state=0).fit(X)
    out["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    result, _ = fit.fit_points(X, str(K), random_state=0)  # the command's own call, now warm in-process
    out["second_fit_in_process"] = time.perf_counter() - start
    start = time.perf_counter()
    est.predict(X), est.bic(X), est.aic(X), fit.to_json(result)
    out["result"] = time.perf_counter() - start
    out["jax_event_seconds"] = {k: v for k, v in sorted(durations.items()) if v > 1e-3}
    out["jax_event_counts"] = {k: v for k, v in sorted(counts.items()) if "cache" in k}
    out["export_cache"] = dict(export_cache.STATS)
    return out


def _traced(data: str) -> int:
    """The command's fit with JAX's compilation cache only: every process traces the fit's program."""
    from experiments import fit

    fit.enable_compilation_cache(fit.compilation_cache_dir())
    return fit.run(data, str(K))


def _run(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
    return time.perf_counter() - start, proc


def main(argv) -> None:
    del argv
    if _CHILD.value:
        print(json.dumps(_phases(_CHILD.value)))
        return
    if _TRACED.value:
        sys.exit(_traced(_TRACED.value))
    import jax

    load_start = os.getloadavg()
    rng = np.random.default_rng(SEED)
    centres = rng.uniform(-5.0, 5.0, (K, D))
    X = centres[rng.integers(0, K, N)] + rng.standard_normal((N, D))
    result = {"n": N, "d": D, "k": K, "machine": {"cpus": os.cpu_count(), "jax": jax.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "points.npy")
        np.save(data, X)
        env = {
            key: v
            for key, v in os.environ.items()
            if not key.startswith("JAX_") and key != "TGMM_JAX_NO_CACHE"
        }
        env["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
        command = [sys.executable, "-m", "experiments.fit", f"--data={data}", f"--n_components={K}"]
        seconds, proc = _run(command, env)
        if proc.returncode != 0:
            raise SystemExit(f"experiments.fit failed: {proc.stderr.strip()[-500:]}")
        result["command_cold_seconds"] = seconds
        traced = [sys.executable, "-m", "benchmarks.fit_command", f"--traced={data}"]
        runs = {"command": command, "traced": traced, "python": [sys.executable, "-c", "pass"]}
        runs["import_jax"] = [sys.executable, "-c", "import jax"]
        times = {name: [] for name in runs}
        _run(traced, env)  # its own entries in the compilation cache (the exported program's differ)
        for _ in range(_REPEATS.value):  # interleaved: a change of load hits every kind alike
            for name, args in runs.items():
                seconds, proc = _run(args, env)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed: {proc.stderr.strip()[-500:]}")
                times[name].append(seconds)
        result["command_warm_seconds"] = times["command"]
        result["traced_warm_seconds"] = times["traced"]
        result["python_seconds"] = times["python"]
        result["import_jax_seconds"] = times["import_jax"]
        seconds, proc = _run([sys.executable, "-m", "benchmarks.fit_command", f"--child={data}"], env)
        if proc.returncode != 0:
            raise SystemExit(f"the phase timing failed: {proc.stderr.strip()[-500:]}")
        result["phases"] = json.loads(proc.stdout.strip().splitlines()[-1])
        result["phases"]["process_seconds"] = seconds
    result["load_average"] = os.getloadavg()
    result["load_average_start"] = load_start
    best = {name: min(result[f"{name}_seconds"]) for name in ("command_warm", "traced_warm", "import_jax")}
    result["best_warm_over_import_jax"] = best["command_warm"] / best["import_jax"]

    def series(name):
        return " / ".join(f"{s:.2f}" for s in result[f"{name}_seconds"])

    print(
        f"experiments.fit on {N} points (d={D}, K={K}): cold {result['command_cold_seconds']:.2f} s, warm "
        f"{series('command_warm')} s; traced each time (compilation cache only) {series('traced_warm')} s; "
        f"python -c pass {series('python')} s, import jax {series('import_jax')} s; best warm "
        f"{result['best_warm_over_import_jax']:.2f}x import jax (load average "
        f"{load_start[0]:.1f} -> {result['load_average'][0]:.1f}, {os.cpu_count()} CPUs)"
    )
    phases = result["phases"]
    print("  phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items() if isinstance(v, float)))
    print(
        "  jax: "
        + ", ".join(f"{k.rsplit('/', 1)[-1]} {v:.2f} s" for k, v in phases["jax_event_seconds"].items())
    )
    print(
        "  cache: "
        + json.dumps(phases["jax_event_counts"])
        + ", export "
        + json.dumps(phases["export_cache"])
    )
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
