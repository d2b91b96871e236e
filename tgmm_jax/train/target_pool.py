"""A fixed pool of training tasks with distillation targets (``config.target_pool``).

Training on the aligned l2 against a task's true parameters has the posterior mean as its minimiser, but each
task's target is one noisy draw from the posterior: where the posterior is wide (N = 16-32, overlapping
components) the gradient is mostly that noise. A pool holds tasks of the training prior together with a
reference estimate of each, typically the Bayes posterior mean (``experiments.distill_pool`` computes it with
``baselines.bayes``), and the step then regresses on that estimate instead: the same minimiser, lower variance.

Layout, one ``d{dim}.npz`` per training dimension in the pool directory: the ``GMMTask`` fields
(``points``, ``point_mask``, ``labels``, ``weights``, ``means``, ``scales``, ``component_mask``,
``num_components``, and ``noise_scale`` where the tasks have one: the true task, K-major blocks of ``per_k`` tasks in ``ks`` order, as ``sample_tasks``
lays out a batch), ``target_weights`` [P, K] and ``target_means`` [P, K, D] (the reference estimate, zero on
padded components, its components aligned to the task's: ``aligned_targets``), and ``ks`` and ``n_max`` (to
check the pool against the training spec). Optionally ``target_responsibilities`` [P, N, K]: the reference's
membership probabilities of every point (bayes' P(z_n = k | x)), in the same aligned component order, zero on
padded points and components; with them the responsibility loss of the tasks that use the targets is the
cross-entropy against these soft labels instead of the true labels (``losses.responsibility_loss``).

The alignment matters: the responsibility loss sends the points of true component j (``labels``) to the slot
matched to target j, so target j must estimate component j. An estimate in its own order (bayes sorts its
components by weight) would send some tasks' points to the wrong slot.

A step draws ``tasks_per_k`` tasks of every K uniformly from its K's block with fold_in(data_key, step), so
the stream still depends on (seed, step) only and a resumed run equals an uninterrupted one. Labels stay the
true ones (the responsibility loss is unchanged); which tasks use the target is the step's choice
(``distilled``).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tgmm_jax.metrics import align_components, gather_components
from tgmm_jax.tasks import GMMTask, TaskSpec

TASK_FIELDS = (
    "points",
    "point_mask",
    "labels",
    "weights",
    "means",
    "scales",
    "component_mask",
    "num_components",
)
TARGET_FIELDS = ("target_weights", "target_means")
RESPONSIBILITIES = "target_responsibilities"  # optional


@struct.dataclass
class PoolBatch:
    """A step's tasks (true parameters) and the reference estimate of each."""

    task: GMMTask
    target_weights: jax.Array  # [B, K]
    target_means: jax.Array  # [B, K, D]
    target_responsibilities: jax.Array | None = None  # [B, N, K], or None: the true labels


@dataclasses.dataclass(frozen=True)
class TargetPool:
    """One dimension's pool, as device arrays: ``batch`` holds len(ks) * per_k tasks in K-major blocks."""

    batch: PoolBatch
    ks: tuple[int, ...]
    per_k: int

    @property
    def dim(self) -> int:
        return int(self.batch.task.points.shape[-1])


def pool_path(directory: str, dim: int) -> str:
    return os.path.join(directory, f"d{dim}.npz")


def aligned_targets(task: GMMTask, weights_BxK, means_BxKxD, responsibilities_BxNxK=None) -> tuple:
    """An estimate's (weights, means) reordered so that component j is the one matched to the task's true
    component j (the aligned l2's matching: smallest total squared distance between means); with
    ``responsibilities_BxNxK`` (the estimate's membership probabilities, columns in its component order) also
    those, their columns permuted the same way, as a third output."""
    index_BxK = align_components(jnp.asarray(means_BxKxD), task.means, task.component_mask)
    aligned = gather_components((jnp.asarray(weights_BxK), jnp.asarray(means_BxKxD)), index_BxK)
    if responsibilities_BxNxK is None:
        return aligned
    resp_BxNxK = jnp.take_along_axis(jnp.asarray(responsibilities_BxNxK), index_BxK[:, None, :], axis=2)
    return (*aligned, resp_BxNxK)


def save_pool(
    directory: str,
    task: GMMTask,
    target_weights,
    target_means,
    ks,
    extra: dict | None = None,
    target_responsibilities=None,
) -> str:
    """Writes one dimension's pool (``task`` laid out as ``sample_tasks`` lays out a batch); returns its path."""
    arrays = {name: np.asarray(getattr(task, name)) for name in TASK_FIELDS}
    if task.noise_scale is not None:  # tasks of a spec with a noise scale range keep their sigma
        arrays["noise_scale"] = np.asarray(task.noise_scale)
    arrays.update(target_weights=np.asarray(target_weights), target_means=np.asarray(target_means))
    if target_responsibilities is not None:
        _check_responsibilities(np.asarray(target_responsibilities, np.float64), arrays)
        arrays[RESPONSIBILITIES] = np.asarray(target_responsibilities, np.float32)
    batch = arrays["points"].shape[0]
    if batch % len(ks):
        raise ValueError(f"a pool of {batch} tasks cannot hold equal blocks of ks={tuple(ks)}")
    for name in TARGET_FIELDS:
        if arrays[name].shape != arrays[name.removeprefix("target_")].shape:
            raise ValueError(
                f"{name} has shape {arrays[name].shape}, the task's {arrays[name.removeprefix('target_')].shape}"
            )
        if not np.all(np.isfinite(arrays[name])):
            raise ValueError(f"{name} holds non-finite values: drop or recompute those tasks before saving")
    os.makedirs(directory, exist_ok=True)
    path = pool_path(directory, arrays["points"].shape[-1])
    tmp = path + ".tmp.npz"
    np.savez(tmp, ks=np.asarray(ks, np.int32), n_max=arrays["points"].shape[1], **arrays, **(extra or {}))
    os.replace(tmp, path)
    return path


def _check_responsibilities(resp_BxNxK: np.ndarray, arrays: dict) -> None:
    """Soft labels must be [P, N, K] probabilities: rows of real points sum to 1 over the real components,
    zero elsewhere."""
    expected = arrays["points"].shape[:2] + arrays["weights"].shape[1:]
    if resp_BxNxK.shape != expected:
        raise ValueError(f"{RESPONSIBILITIES} has shape {resp_BxNxK.shape}, expected [P, N, K] = {expected}")
    if not np.all(np.isfinite(resp_BxNxK)) or np.any(resp_BxNxK < 0):
        raise ValueError(f"{RESPONSIBILITIES} holds non-finite or negative values")
    real_BxNxK = arrays["point_mask"][:, :, None] & arrays["component_mask"][:, None, :]
    if np.any(resp_BxNxK[~real_BxNxK] != 0):
        raise ValueError(f"{RESPONSIBILITIES} is not zero on padded points or components")
    row_sums = resp_BxNxK.sum(axis=-1)[arrays["point_mask"]]
    if not np.allclose(row_sums, 1.0, atol=1e-4):
        worst = float(np.max(np.abs(row_sums - 1.0)))
        raise ValueError(f"{RESPONSIBILITIES}: a real point's row does not sum to 1 (off by {worst:.3g})")


def load_pool(directory: str, spec: TaskSpec) -> TargetPool:
    """The pool of ``spec.dim`` in ``directory``, checked against ``spec`` (its ks, its N_max, its K_max)."""
    path = pool_path(directory, spec.dim)
    if not os.path.exists(path):
        raise ValueError(
            f"config.target_pool={directory!r} has no pool for d = {spec.dim} ({path} is missing)"
        )
    with np.load(path) as f:
        missing = [n for n in TASK_FIELDS + TARGET_FIELDS + ("ks", "n_max") if n not in f.files]
        if missing:
            raise ValueError(f"{path} is not a target pool: it lacks {missing}")
        arrays = {n: f[n] for n in TASK_FIELDS + TARGET_FIELDS}
        noise_scale = jnp.asarray(f["noise_scale"]) if "noise_scale" in f.files else None
        resp = jnp.asarray(f[RESPONSIBILITIES]) if RESPONSIBILITIES in f.files else None
        ks = tuple(int(k) for k in f["ks"])
        n_max = int(f["n_max"])
    if ks != tuple(spec.ks) or n_max != spec.n_max or arrays["weights"].shape[1] != max(spec.ks):
        raise ValueError(
            f"{path} holds tasks with ks={ks}, N_max={n_max}, K_max={arrays['weights'].shape[1]}; the training "
            f"spec has ks={tuple(spec.ks)}, N_max={spec.n_max}, K_max={max(spec.ks)}: build the pool for this spec"
        )
    batch = arrays["points"].shape[0]
    per_k = batch // len(ks)
    if batch % len(ks) or not np.all(
        np.asarray(arrays["num_components"]).reshape(len(ks), per_k) == np.asarray(ks)[:, None]
    ):
        raise ValueError(f"{path}: its tasks are not K-major blocks of equal size in ks={ks} order")
    if resp is not None and resp.shape != arrays["points"].shape[:2] + arrays["weights"].shape[1:]:
        raise ValueError(f"{path}: {RESPONSIBILITIES} has shape {resp.shape}, not the tasks' [P, N, K]")
    task = GMMTask(**{n: jnp.asarray(arrays[n]) for n in TASK_FIELDS}, noise_scale=noise_scale)
    pool = PoolBatch(task, jnp.asarray(arrays["target_weights"]), jnp.asarray(arrays["target_means"]), resp)
    return TargetPool(pool, ks, per_k)


def draw_batch(pool_batch: PoolBatch, key: jax.Array, num_ks: int, per_k: int, tasks_per_k: int) -> PoolBatch:
    """``tasks_per_k`` tasks of each K block, uniformly with replacement: [num_ks * tasks_per_k, ...]."""
    picks_KxT = jax.random.randint(key, (num_ks, tasks_per_k), 0, per_k)
    index_B = (picks_KxT + per_k * jnp.arange(num_ks)[:, None]).reshape(-1)
    return jax.tree.map(lambda x: x[index_B], pool_batch)


def soft_labels(batch: PoolBatch, use_target_B: jax.Array) -> jax.Array | None:
    """[B, N, K] label probabilities for the responsibility loss: the pool's responsibilities where
    ``use_target_B``, the true labels one-hot elsewhere; None when the pool has no responsibilities."""
    if batch.target_responsibilities is None:
        return None
    task = batch.task
    k_max = task.weights.shape[1]
    onehot_BxNxK = jax.nn.one_hot(task.labels, k_max, dtype=batch.target_responsibilities.dtype)
    onehot_BxNxK = onehot_BxNxK * task.point_mask[..., None]
    return jnp.where(use_target_B[:, None, None], batch.target_responsibilities, onehot_BxNxK)


def distilled(batch: PoolBatch, use_target_B: jax.Array) -> GMMTask:
    """The batch's tasks with their weights and means replaced by the targets where ``use_target_B``."""
    task = batch.task
    use_BxK = use_target_B[:, None]
    return task.replace(
        weights=jnp.where(use_BxK, batch.target_weights, task.weights),
        means=jnp.where(use_BxK[..., None], batch.target_means, task.means),
    )
