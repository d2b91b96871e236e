"""Where the time of a warm-cache ``python -m experiments.fit`` goes, on 150 points (d = 8, K = 3).

    python -m benchmarks.fit_command --json=/tmp/fit_command.json

Measured, each in a fresh interpreter with the persistent compilation cache of a temporary $XDG_CACHE_HOME:
  command   the whole command (``python -m experiments.fit --data=points.npy --n_components=3``): a first run
            that fills the cache (cold), then ``--repeats`` warm runs; seconds of each process.
  python    ``python -c pass``: the interpreter alone.
  phases    the command's steps in one warm process, timed one by one: importing ``experiments.fit`` (jax,
            scikit-learn, the library), turning the cache on, reading the points, loading the checkpoint,
            the fit (tracing and lowering the programs, then the cache's compiled code) and the result
            (predict, BIC, AIC, JSON); with JAX's own event durations (tracing, lowering, cache retrieval,
            backend compiles: 0 means every program came from the cache).
The JSON (``--json``) holds every number and the machine; a summary is printed. A benchmark, not a test.
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
    from tgmm_jax.pretrained import load_checkpoint

    out["import_experiments_fit"] = time.perf_counter() - start
    durations, counts = defaultdict(float), defaultdict(int)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: durations.__setitem__(event, durations[event] + duration)
    )
    jax.monitoring.register_event_listener(lambda event, **kw: counts.__setitem__(event, counts[event] + 1))
    for name, step in (
        ("enable_cache", lambda: fit.enable_compilation_cache(fit.compilation_cache_dir())),
        ("load_points", lambda: fit.load_points(data)),
        ("load_checkpoint", lambda: load_checkpoint("pretrained")),
    ):
        start = time.perf_counter()
        value = step()
        out[name] = time.perf_counter() - start
        if name == "load_points":
            X = value
    start = time.perf_counter()
    from tgmm_jax.estimator import TGMMEstimator

    est = TGMMEstimator(K, random_state=0).fit(X)
    out["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    result, _ = fit.fit_points(X, str(K), random_state=0)  # the command's own call, now warm in-process
    out["second_fit_in_process"] = time.perf_counter() - start
    start = time.perf_counter()
    est.predict(X), est.bic(X), est.aic(X), fit.to_json(result)
    out["result"] = time.perf_counter() - start
    out["jax_event_seconds"] = {k: v for k, v in sorted(durations.items()) if v > 1e-3}
    out["jax_event_counts"] = {k: v for k, v in sorted(counts.items()) if "cache" in k}
    return out


def _run(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
    return time.perf_counter() - start, proc


def main(argv) -> None:
    del argv
    if _CHILD.value:
        print(json.dumps(_phases(_CHILD.value)))
        return
    import jax

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
        result["command_warm_seconds"] = [_run(command, env)[0] for _ in range(_REPEATS.value)]
        result["python_seconds"] = _run([sys.executable, "-c", "pass"], env)[0]
        seconds, proc = _run([sys.executable, "-m", "benchmarks.fit_command", f"--child={data}"], env)
        if proc.returncode != 0:
            raise SystemExit(f"the phase timing failed: {proc.stderr.strip()[-500:]}")
        result["phases"] = json.loads(proc.stdout.strip().splitlines()[-1])
        result["phases"]["process_seconds"] = seconds
    result["load_average"] = os.getloadavg()
    warm = result["command_warm_seconds"]
    print(
        f"experiments.fit on {N} points (d={D}, K={K}): cold {result['command_cold_seconds']:.2f} s, warm "
        f"{' / '.join(f'{s:.2f}' for s in warm)} s (python alone {result['python_seconds']:.2f} s; "
        f"load average {result['load_average'][0]:.1f})"
    )
    phases = result["phases"]
    print("  phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items() if isinstance(v, float)))
    print(
        "  jax: "
        + ", ".join(f"{k.rsplit('/', 1)[-1]} {v:.2f} s" for k, v in phases["jax_event_seconds"].items())
    )
    print("  cache: " + json.dumps(phases["jax_event_counts"]))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
