"""TGMMEstimator on large N and on many N, against sklearn: peak memory, wall time, accuracy, compilations.

    python -m benchmarks.estimator_large_n --json=results/estimator_large_n.json            # N = 1,000,000
    python -m benchmarks.estimator_large_n --n=200000 --json=/tmp/large_n.json              # quicker

Three measurements, each method in its own subprocess (a fresh interpreter; peak RSS is that process's
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which tracemalloc cannot see for JAX's buffers):
  large_n   ``--n`` points in d = ``--d`` from K = ``--k`` separated unit-variance clusters (centres
            U[-5, 5]^d, seeded); ``TGMMEstimator(K)`` (default checkpoint: the network on a 2048-point
            subsample, then 5 EM steps on all points in blocks) against ``sklearn.mixture.GaussianMixture(K,
            covariance_type="spherical")``: wall time of the fit (TGMM: first fit, compilation included,
            and a second warm fit in the same process), peak RSS of the process and the RSS before the fit
            (after the data was generated), and the mean distance from each true mean to its matched
            estimate (Hungarian matching). ``tgmm_warm_cache``: TGMM in a process whose programs come from a
            persistent compilation cache filled by an earlier process (as ``experiments.fit`` runs).
  bucket    one warm fit at N = 129, then fits at ``--bucket_fits`` other N of the same bucket (130..256):
            seconds each and the number of traces of the fit's programs (``estimator.TRACE_COUNTS``: 0 means
            nothing compiled again).
  cli       ``python -m experiments.fit`` on 150 points (d = 8, K = 3) with a fresh persistent cache
            ($XDG_CACHE_HOME in a temporary directory): the first (cold) run, a second (warm) run, and one
            with TGMM_JAX_NO_CACHE=1; seconds of the whole command (interpreter start included).
The JSON (``--json``) holds every number and the machine; a summary is printed. A benchmark, not a test.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

_N = flags.DEFINE_integer("n", 1_000_000, "Points of the large-N fit.")
_D = flags.DEFINE_integer("d", 8, "Dimension.")
_K = flags.DEFINE_integer("k", 3, "Components (true and fitted).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data, of TGMM's subsample and of sklearn.")
_BUCKET_FITS = flags.DEFINE_integer("bucket_fits", 20, "Fits at other N of one bucket after a warm fit.")
_PARTS = flags.DEFINE_list("parts", ["large_n", "bucket", "cli"], "Which measurements to run.")
_JSON = flags.DEFINE_string("json", None, "Output path (JSON).")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement in this process and print JSON.")
_TIMEOUT = flags.DEFINE_integer("timeout", 3600, "Seconds allowed to each subprocess.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _data(n: int, d: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-5.0, 5.0, (k, d))
    labels = rng.integers(0, k, n)
    X = centres[labels] + rng.standard_normal((n, d))
    return X, centres


def _matched_distance(means_KxD: np.ndarray, true_KxD: np.ndarray) -> float:
    from scipy.optimize import linear_sum_assignment

    cost = np.linalg.norm(means_KxD[:, None] - true_KxD[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


# ----------------------------------------------------------------------------------------------------
# Children: one measurement each, in a fresh process.


def _child_large_n(method: str, n: int, d: int, k: int, seed: int) -> dict:
    X, centres = _data(n, d, k, seed)
    out = {"method": method, "n": n, "d": d, "k": k, "rss_before_fit_mb": _rss_mb()}
    if method == "tgmm":
        from tgmm_jax.estimator import TGMMEstimator

        start = time.perf_counter()
        est = TGMMEstimator(k, random_state=seed).fit(X)
        out["seconds_first_fit"] = time.perf_counter() - start
        start = time.perf_counter()
        est = TGMMEstimator(k, random_state=seed).fit(X)
        out["seconds"] = time.perf_counter() - start
        out.update(n_iter=est.n_iter_, converged=est.converged_)
    else:
        from sklearn.mixture import GaussianMixture

        start = time.perf_counter()
        est = GaussianMixture(k, covariance_type="spherical", random_state=seed).fit(X)
        out["seconds"] = time.perf_counter() - start
        out.update(n_iter=int(est.n_iter_), converged=bool(est.converged_))
    out["peak_rss_mb"] = _rss_mb()
    out["mean_distance_to_true_means"] = _matched_distance(est.means_, centres)
    out["mean_log_likelihood"] = float(est.score(X))
    return out


def _child_bucket(d: int, k: int, seed: int, fits: int) -> dict:
    from tgmm_jax.estimator import TRACE_COUNTS, TGMMEstimator, bucket_size

    first_n = 129
    ns = np.unique(np.linspace(first_n + 1, bucket_size(first_n), fits).astype(int)).tolist()
    X, _ = _data(bucket_size(first_n), d, k, seed)
    start = time.perf_counter()
    TGMMEstimator(k, random_state=seed).fit(X[:first_n])
    first = time.perf_counter() - start
    start = time.perf_counter()
    TGMMEstimator(k, random_state=seed).fit(X[:first_n])
    warm = time.perf_counter() - start
    traces = dict(TRACE_COUNTS)
    seconds = []
    for n in ns:
        start = time.perf_counter()
        TGMMEstimator(k, random_state=seed).fit(X[:n])
        seconds.append(time.perf_counter() - start)
    return {
        "bucket": bucket_size(first_n),
        "first_n": first_n,
        "seconds_first_fit": first,
        "seconds_warm_fit": warm,
        "ns": ns,
        "seconds": seconds,
        "new_traces": sum(TRACE_COUNTS.values()) - sum(traces.values()),
    }


def _child(kind: str) -> dict:
    n, d, k, seed = _N.value, _D.value, _K.value, _SEED.value
    if kind in ("tgmm", "sklearn"):
        return _child_large_n(kind, n, d, k, seed)
    if kind == "bucket":
        return _child_bucket(d, k, seed, _BUCKET_FITS.value)
    raise ValueError(f"unknown --child={kind!r}")


def _clean_env(**extra) -> dict:
    env = {
        key: v for key, v in os.environ.items() if not key.startswith("JAX_") and key != "TGMM_JAX_NO_CACHE"
    }
    return {**env, **extra}


def _run_child(kind: str, **env) -> dict:
    args = [
        sys.executable, "-m", "benchmarks.estimator_large_n", f"--child={kind}", f"--n={_N.value}",
        f"--d={_D.value}", f"--k={_K.value}", f"--seed={_SEED.value}", f"--bucket_fits={_BUCKET_FITS.value}",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(
        args,
        cwd=ROOT,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT.value,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["seconds_process"] = time.perf_counter() - start
    return result


def _cli(d: int, k: int, seed: int) -> dict:
    X, _ = _data(150, d, k, seed)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "points.npy")
        np.save(data, X)
        cache_home = os.path.join(tmp, "cache")
        for name, extra in (("cold_cache", {}), ("warm_cache", {}), ("no_cache", {"TGMM_JAX_NO_CACHE": "1"})):
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "experiments.fit", f"--data={data}", f"--n_components={k}"],
                cwd=ROOT,
                env=_clean_env(XDG_CACHE_HOME=cache_home, **extra),
                capture_output=True,
                text=True,
                timeout=_TIMEOUT.value,
                check=False,
            )
            out[f"seconds_{name}"] = time.perf_counter() - start
            if proc.returncode != 0:
                out[f"error_{name}"] = proc.stderr.strip()[-500:]
    return out


def _machine() -> dict:
    import jax

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
    }


def main(argv) -> None:
    del argv
    if _CHILD.value:
        print(json.dumps(_child(_CHILD.value)))
        return
    result = {"n": _N.value, "d": _D.value, "k": _K.value, "seed": _SEED.value, "machine": _machine()}
    if "large_n" in _PARTS.value:
        result["large_n"] = {method: _run_child(method) for method in ("tgmm", "sklearn")}
        with tempfile.TemporaryDirectory() as cache:  # TGMM again, its programs from a persistent cache
            env = dict(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
            _run_child("tgmm", **env)
            result["large_n"]["tgmm_warm_cache"] = _run_child("tgmm", **env)
        for method, r in result["large_n"].items():
            if "error" in r:
                print(f"{method}: failed: {r['error']}")
                continue
            print(
                f"N={_N.value:,} d={_D.value} K={_K.value} {method}: fit {r['seconds']:.2f} s"
                + (f" (first, compiling: {r['seconds_first_fit']:.2f} s)" if "seconds_first_fit" in r else "")
                + f", peak RSS {r['peak_rss_mb']:.0f} MB (before the fit {r['rss_before_fit_mb']:.0f} MB),"
                f" mean distance to the true means {r['mean_distance_to_true_means']:.4f}"
            )
    if "bucket" in _PARTS.value:
        r = result["bucket"] = _run_child("bucket")
        if "error" not in r:
            print(
                f"bucket {r['bucket']}: first fit {r['seconds_first_fit']:.2f} s, "
                f"then {len(r['ns'])} other N: "
                f"median {np.median(r['seconds']):.3f} s, max {np.max(r['seconds']):.3f} s, "
                f"new traces {r['new_traces']}"
            )
    if "cli" in _PARTS.value:
        r = result["cli"] = _cli(_D.value, _K.value, _SEED.value)
        print(
            "experiments.fit on 150 points: "
            + ", ".join(f"{key[8:]} {v:.2f} s" for key, v in r.items() if key.startswith("seconds_"))
        )
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
