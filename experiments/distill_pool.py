"""Builds a target pool for distillation training (``config.target_pool``, ``tgmm_jax.train.target_pool``).

    python -m experiments.distill_pool --config=experiments/configs/cluster.py:n=32,n_min=16,dims=2/8,d=2 \
        --out=runs/distill_pool --per_k=4096

For every training dimension of the config (``train_specs``), ``per_k`` tasks of each K drawn from the training
prior with their own key (``--seed``, independent of the training stream and of every study's tasks), and the
posterior mean of each under exactly that prior (``baselines.bayes``, known unit noise, its default chains and
sweeps): the Bayes estimate the aligned l2 loss is minimised by, with the task's sampling noise averaged out.
``--targets=truth`` writes the same tasks with their own parameters as targets (no bayes): the same-tasks
ablation, so a comparison isolates the targets from the finite pool.
``--responsibilities`` (with bayes targets) also writes each point's posterior membership probabilities
P(z_n = k | x) from the same samples (``baselines.bayes.posterior_responsibilities``), aligned like the means:
the soft labels of the responsibility loss (``target_pool``). The posterior means are those of the same chains
(the same keys as ``fit_bayes``), so the pool's means equal a build without the flag.
Chunks are cached in ``--out/chunks`` so an interrupted build resumes; a task whose estimate is not finite stops
the build with its index (none has been seen; it is not dropped silently).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from baselines.bayes import (
    BayesConfig,
    aligned_posterior_mean,
    fit_bayes,
    posterior_responsibilities,
    sample_posterior,
)
from tgmm_jax.tasks import sample_tasks
from tgmm_jax.train import target_pool
from tgmm_jax.train.config import TrainConfig

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags (defined only when run as a script, so that importing this module, as the
    tests do, does not clash with another entry point's flags of the same name)."""
    config_flags.DEFINE_config_file("config", None, "The training config the pool serves.", lock_config=True)
    flags.DEFINE_string("out", None, "Pool directory (one d{dim}.npz per training dimension).")
    flags.DEFINE_integer("per_k", 4096, "Tasks per K and dimension.")
    flags.DEFINE_integer("chunk", 256, "Tasks per bayes call (a cached unit).")
    flags.DEFINE_integer("seed", 20261207, "Seed of the pool's tasks and chains.")
    flags.DEFINE_enum(
        "targets",
        "bayes",
        ["bayes", "truth"],
        "bayes: the posterior means; truth: the tasks' own parameters (the same-tasks ablation of distillation).",
    )
    flags.DEFINE_bool(
        "responsibilities",
        False,
        "Also store bayes' posterior membership probabilities of every point (soft labels; --targets=bayes "
        "only).",
    )
    flags.mark_flags_as_required(["config", "out"])


def bayes_config_for(spec) -> BayesConfig:
    """The Bayes reference under the training spec's prior (isotropic, known unit noise)."""
    if (
        spec.variant != "isotropic"
        or spec.mean_shift
        or spec.noise_scale_range
        or spec.component_scale_range
        or spec.cos_filter_max_k is not None
    ):
        raise ValueError(
            "distill_pool supports the isotropic Algorithm-1 prior with unit noise (mean_shift 0, no noise or "
            f"component scale range, one cosine threshold for every K); the config's task is {spec}"
        )
    return BayesConfig(
        weight_range=tuple(spec.weight_range),
        mean_range=tuple(spec.mean_range),
        cos_threshold=spec.cos_threshold,
    )


@functools.partial(jax.jit, static_argnames="chain_gap")
def _moments(samples: dict, task, chain_gap):
    """Per task, from raw samples: the posterior mean's (weights, means) and P(z_n = k | x), one order."""

    def one(s, x, point_mask, component_mask):
        weights, means = aligned_posterior_mean(s, component_mask, chain_gap=chain_gap)[:2]
        resp = posterior_responsibilities(s, x, point_mask, component_mask, chain_gap=chain_gap)
        return weights, means, resp

    return jax.vmap(one)(samples, task.points, task.point_mask, task.component_mask)


def _posterior_with_responsibilities(key, task, config: BayesConfig):
    """(weights [B, K], means [B, K, D], responsibilities [B, N, K], valid [B]) from one set of bayes chains
    (``sample_posterior`` with ``fit_bayes``'s keys): the posterior mean and P(z_n = k | x), one component
    order."""
    samples = sample_posterior(key, task, config)
    raw = {name: samples[name] for name in ("weights", "means", "log_post")}
    weights, means, resp = (np.asarray(a) for a in _moments(raw, task, config.chain_gap))
    valid = np.all(np.isfinite(means), axis=(1, 2)) & np.all(np.isfinite(resp), axis=(1, 2))
    return weights, means, resp, valid


def build_dimension(
    spec,
    out: str,
    per_k: int,
    chunk: int,
    seed: int,
    targets: str = "bayes",
    responsibilities: bool = False,
) -> str:
    key = jax.random.fold_in(jax.random.key(seed), spec.dim)
    task = sample_tasks(jax.random.fold_in(key, 0), spec, per_k)
    if targets == "truth":
        if responsibilities:
            raise ValueError("--responsibilities needs --targets=bayes (the truth has only its labels)")
        return target_pool.save_pool(out, task, task.weights, task.means, spec.ks, extra=dict(seed=seed))
    config = bayes_config_for(spec)
    total = task.points.shape[0]
    chunk_dir = os.path.join(out, "chunks")
    os.makedirs(chunk_dir, exist_ok=True)
    weights, means, resps = [], [], []
    suffix = "_resp" if responsibilities else ""
    for start in range(0, total, chunk):
        path = os.path.join(chunk_dir, f"d{spec.dim}_{start:07d}_{chunk}{suffix}.npz")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            part = jax.tree.map(lambda x, s=start: x[s : s + chunk], task)
            part_key = jax.random.fold_in(key, 1 + start)
            if responsibilities:
                w, m, r, valid = _posterior_with_responsibilities(part_key, part, config)
                arrays = dict(weights=w, means=m, responsibilities=r)
            else:
                params, info = fit_bayes(part_key, part, config)
                w, m = np.asarray(params.weights), np.asarray(params.means)
                valid = np.asarray(info["valid"])
                arrays = dict(weights=w, means=m)
            bad = ~(valid & np.all(np.isfinite(m), axis=(1, 2)))
            if bad.any():
                raise FloatingPointError(
                    f"bayes gave a non-finite estimate for pool tasks {start + np.flatnonzero(bad)}"
                )
            np.savez(path + ".tmp.npz", **arrays)
            os.replace(path + ".tmp.npz", path)
            print(
                f"d={spec.dim} tasks {start}..{start + len(w) - 1}: {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
        with np.load(path) as f:
            weights.append(f["weights"])
            means.append(f["means"])
            if responsibilities:
                resps.append(f["responsibilities"])
    target_w, target_m = np.concatenate(weights), np.concatenate(means)
    # bayes returns its components in ascending weight order, zero-padded to K_max like the task; the pool
    # holds them in the task's component order (target j estimates true component j, whose points the labels name)
    target_m = np.where(np.asarray(task.component_mask)[..., None], target_m, 0.0)
    target_w = np.where(np.asarray(task.component_mask), target_w, 0.0)
    target_r = np.concatenate(resps) if responsibilities else None
    aligned = target_pool.aligned_targets(task, target_w, target_m, target_r)
    return target_pool.save_pool(
        out,
        task,
        aligned[0],
        aligned[1],
        spec.ks,
        extra=dict(seed=seed, bayes=repr(config)),
        target_responsibilities=aligned[2] if responsibilities else None,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = TrainConfig.from_config(FLAGS.config)
    for spec in config.train_specs():
        path = build_dimension(
            spec, FLAGS.out, FLAGS.per_k, FLAGS.chunk, FLAGS.seed, FLAGS.targets, FLAGS.responsibilities
        )
        print("wrote", path, flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
