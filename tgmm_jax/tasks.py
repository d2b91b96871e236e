"""GMM task sampler: the paper's Algorithm 1 and its variants, as pure jit-able functions.

Follows the official code's ``TaskSampler`` (docs/official_differences.md §1): every batch holds ``tasks_per_k`` tasks of
each K in ``spec.ks`` (stratified), weights are sorted ascending, means are U[-5, 5]^D with a pairwise
cosine-similarity rejection, and per-task sample sizes live in ``point_mask``. Unlike the official code,
a batch is never shrunk: each task is rejection-sampled inside a ``lax.while_loop`` until it is filled,
and a spec whose acceptance rate is (numerically) zero is refused with an error naming (D, K).

A wider prior than the paper's, as ``TaskSpec`` options (all off by default; a default spec's tasks are
bit-for-bit those of the paper's sampler, and ``GMMTask.noise_scale`` is then None):

* small N: N is drawn per task uniformly from {n_min..n_max} (``variable_n``); ``n_min`` defaults to
  n_max // 2 (the official length mask) and may be set as low as 1, e.g. ``TaskSpec(n_max=128, n_min=8)``;
  ``n_distribution="log_uniform"`` draws log N uniformly instead (each octave of N equally often).
* unknown noise scale: ``noise_scale_range=(lo, hi)`` draws sigma per task, log sigma ~ U[log lo, log hi]
  (lo == hi gives a fixed sigma). **The means' box scales with sigma**: the task is sigma times a
  unit-noise Algorithm-1 task (means sigma U[a, b]^D, plus sigma * mean_shift N(0, I); the cosine filter
  is scale-invariant). So multiplying a whole task by c is the same as sigma -> c sigma, and the
  parameters in units of sigma (means / sigma, weights, labels) have the same distribution for every
  sigma: a scale-equivariant estimator faces one problem, not one per sigma. With a fixed box the ratio
  separation / noise would change with sigma (sigma = 0.01 in a +-5 box: trivially separated; sigma = 10:
  no structure), and x -> c x would leave the prior's support.
  The draws of the unit-noise task (weights, means, labels, noise) are those a spec without the option
  makes with the same key; sigma comes from a separate stream.
* a cosine filter for some K only: ``cos_filter_max_k=k0`` filters tasks of K <= k0 at ``cos_threshold`` and
  leaves larger K unfiltered (as ``cos_threshold=1.0``), e.g. a prior over K = 2..8 at D = 2 that keeps the
  paper's filter where it can place the means (K <= 5).
* per-component variances: ``component_scale_range=(lo, hi)``: component k's standard deviation is
  sigma u_k, u_k iid log-uniform on [lo, hi], independent of everything else (with the anisotropic
  variant it multiplies that variant's per-coordinate scales).
With either option the task carries its ground truth: ``noise_scale`` [B] = sigma and ``scales`` [B, K, D]
= each component's standard deviations (sigma u_k; 1 on padded components), so the per-component variances
are ``scales ** 2``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tgmm_jax.validation import check_bool, check_choice, check_int, check_number, is_int, is_number

VARIANTS = ("isotropic", "anisotropic")
N_DISTRIBUTIONS = ("uniform", "log_uniform")

# Below this acceptance rate of the cosine filter the sampler refuses the spec instead of looping for ages.
_MIN_ACCEPTANCE_RATE = 1e-4
_ACCEPTANCE_PROBE_DRAWS = 1 << 16
# fold_in tag of the random stream of the noise and component scales (kept apart from the six keys of the
# paper's draws, so a spec with these options sees the same unit-noise task as one without).
_SCALE_STREAM = 0x5CA1E


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a batch of GMM tasks looks like. Frozen and hashable: pass it as a static argument."""

    dim: int
    ks: tuple[int, ...] = (2, 3, 4, 5)
    n_max: int = 128
    n_min: int | None = None  # defaults to n_max // 2, as the official length mask
    variant: str = "isotropic"
    mean_shift: float = 0.0  # sigma_p of the distribution-shift study: means += sigma_p * N(0, I)
    cos_threshold: float = 0.8
    # Tasks with more components than this skip the cosine filter (threshold 1.0, as ``cos_threshold=1.0``);
    # None: every K is filtered. E.g. 5 with K = 2..8 at D = 2, where the filter (0.8) accepts 0.8% of the
    # draws at K = 6, 0.05% at K = 7 and too few to sample at K = 8.
    cos_filter_max_k: int | None = None
    weight_range: tuple[float, float] = (0.2, 0.8)
    mean_range: tuple[float, float] = (-5.0, 5.0)
    variable_n: bool = True  # True for training (N ~ U{n_min..n_max}), False for evaluation (N = n_max)
    # How a variable N is drawn: "uniform" on {n_min..n_max}, or "log_uniform" (floor of exp(U[log n_min,
    # log(n_max + 1)]): each octave of N equally often, so small N keeps its share of a wide range).
    n_distribution: str = "uniform"
    # Per-task noise scale sigma, log-uniform on [lo, hi]; None: sigma = 1. The means' box scales with sigma.
    noise_scale_range: tuple[float, float] | None = None
    # Per-component standard deviations sigma u_k, u_k log-uniform on [lo, hi]; None: u_k = 1.
    component_scale_range: tuple[float, float] | None = None

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        if isinstance(self.ks, int) or not hasattr(self.ks, "__iter__"):
            raise ValueError(f"TaskSpec.ks must be a sequence of component counts, got {self.ks!r}")
        set_("ks", tuple(self.ks))
        set_("weight_range", tuple(self.weight_range))
        set_("mean_range", tuple(self.mean_range))
        for name in ("noise_scale_range", "component_scale_range"):
            value = getattr(self, name)
            if value is not None and hasattr(value, "__iter__"):
                set_(name, tuple(value))
        if self.n_min is None and isinstance(self.n_max, int):
            set_("n_min", max(self.n_max // 2, 1))
        _validate(self)

    @property
    def k_max(self) -> int:
        return max(self.ks)

    def batch_size(self, tasks_per_k: int) -> int:
        return tasks_per_k * len(self.ks)

    @property
    def scaled(self) -> bool:
        """True when the tasks draw a noise scale or per-component scales (and carry ``noise_scale``)."""
        return self.noise_scale_range is not None or self.component_scale_range is not None


def _validate(spec: TaskSpec) -> None:
    check_int(spec.dim, "TaskSpec.dim", 1)
    if len(spec.ks) == 0:
        raise ValueError("TaskSpec.ks is empty: give at least one component count K")
    for k in spec.ks:
        if not is_int(k) or k < 1:
            raise ValueError(f"TaskSpec.ks must hold integers K >= 1, got {spec.ks!r}")
    if len(set(spec.ks)) != len(spec.ks):
        raise ValueError(f"TaskSpec.ks has repeated values: {spec.ks!r}")
    check_int(spec.n_max, "TaskSpec.n_max", 1)
    if spec.n_max < max(spec.ks):
        raise ValueError(f"TaskSpec.n_max={spec.n_max} is smaller than the largest K={max(spec.ks)}")
    check_int(spec.n_min, "TaskSpec.n_min", 1)
    if spec.n_min > spec.n_max:
        raise ValueError(f"TaskSpec.n_min={spec.n_min} is larger than n_max={spec.n_max}")
    check_choice(spec.variant, "TaskSpec.variant", VARIANTS)
    check_number(spec.mean_shift, "TaskSpec.mean_shift", 0)
    if not (isinstance(spec.cos_threshold, (int, float)) and -1.0 < spec.cos_threshold <= 1.0):
        raise ValueError(f"TaskSpec.cos_threshold must lie in (-1, 1], got {spec.cos_threshold!r}")
    if spec.cos_filter_max_k is not None:
        check_int(spec.cos_filter_max_k, "TaskSpec.cos_filter_max_k", 1)
    wr = spec.weight_range
    if len(wr) != 2 or not (0.0 < wr[0] <= wr[1] < math.inf):
        raise ValueError(
            f"TaskSpec.weight_range must be (lo, hi) with 0 < lo <= hi, got {spec.weight_range!r}"
        )
    if len(spec.mean_range) != 2 or not (-math.inf < spec.mean_range[0] < spec.mean_range[1] < math.inf):
        raise ValueError(f"TaskSpec.mean_range must be (lo, hi) with lo < hi, got {spec.mean_range!r}")
    check_bool(spec.variable_n, "TaskSpec.variable_n")
    check_choice(spec.n_distribution, "TaskSpec.n_distribution", N_DISTRIBUTIONS)
    for name in ("noise_scale_range", "component_scale_range"):
        value = getattr(spec, name)
        if value is None:
            continue
        ok = (
            isinstance(value, tuple)
            and len(value) == 2
            and all(is_number(v) for v in value)
            and 0.0 < value[0] <= value[1] < math.inf
        )
        if not ok:
            raise ValueError(
                f"TaskSpec.{name} must be None or (lo, hi) with 0 < lo <= hi < inf, got {value!r}"
            )


@struct.dataclass
class GMMTask:
    """A batch of GMM tasks padded to N_max points and K_max components."""

    points: jax.Array  # [B, N, D]
    point_mask: jax.Array  # [B, N] bool, True = real point
    labels: jax.Array  # [B, N] int32, true component of each point
    weights: jax.Array  # [B, K] ascending over real components, 0 on padding
    means: jax.Array  # [B, K, D], 0 on padding
    scales: jax.Array  # [B, K, D] standard deviations, 1 for isotropic and on padding
    component_mask: jax.Array  # [B, K] bool
    num_components: jax.Array  # [B] int32
    # [B] the task's noise scale sigma (TaskSpec.noise_scale_range / component_scale_range); None for the
    # paper's tasks (sigma = 1), so their pytree is unchanged.
    noise_scale: jax.Array | None = None

    def params(self):
        """The true mixture as ``MixtureParams`` (scales always given)."""
        from tgmm_jax.gmm import MixtureParams

        return MixtureParams(self.weights, self.means, self.scales, self.component_mask)


# ----------------------------------------------------------------------------------------------------
# Vectors with the cosine filter.


@functools.cache
def acceptance_rate(dim: int, k: int, threshold: float, mean_range: tuple, mean_shift: float) -> float:
    """Monte Carlo estimate (NumPy, fixed seed) of the cosine filter's acceptance rate for (D, K)."""
    if k == 1:
        return 1.0
    rng = np.random.default_rng(0)
    accepted, drawn = 0, 0
    chunk = max(1, min(_ACCEPTANCE_PROBE_DRAWS, (1 << 22) // (k * dim)))
    while drawn < _ACCEPTANCE_PROBE_DRAWS:
        m = rng.uniform(mean_range[0], mean_range[1], size=(chunk, k, dim))
        m = m + mean_shift * rng.standard_normal(m.shape)
        u = m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)
        cos = np.einsum("mkd,mjd->mkj", u, u)
        cos[:, np.arange(k), np.arange(k)] = -np.inf
        accepted += int(np.sum(cos.max(axis=(1, 2)) < threshold))
        drawn += chunk
    return accepted / drawn


def cos_threshold_for(spec: TaskSpec, k: int) -> float:
    """The cosine filter's threshold for tasks of K = k components (1.0 above ``cos_filter_max_k``)."""
    if spec.cos_filter_max_k is not None and k > spec.cos_filter_max_k:
        return 1.0
    return float(spec.cos_threshold)


def candidates_per_round(spec: TaskSpec, shift: float) -> int:
    """Candidate sets drawn per rejection round: about 3 expected acceptances for the hardest K.

    Raises ValueError naming (D, K) when the filter (numerically) never accepts.
    """
    rates = {}
    for k in spec.ks:
        threshold = cos_threshold_for(spec, k)
        rates[k] = acceptance_rate(spec.dim, k, threshold, spec.mean_range, float(shift))
        if rates[k] < _MIN_ACCEPTANCE_RATE:
            raise ValueError(
                f"cannot sample means for (D={spec.dim}, K={k}): the pairwise-cosine filter (threshold "
                f"{threshold}) accepts {rates[k]:.2e} of draws (below {_MIN_ACCEPTANCE_RATE:.0e}); "
                "lower K, raise TaskSpec.cos_threshold, set TaskSpec.cos_filter_max_k below K, or raise the "
                "dimension"
            )
    return int(min(math.ceil(3.0 / min(rates.values())), 1024))


def _cosine_ok(vectors_RxKxD: jax.Array, component_mask_K: jax.Array, threshold) -> jax.Array:
    """True where all pairwise cosines between the real vectors of a candidate set are < threshold: [R]."""
    norm = jnp.linalg.norm(vectors_RxKxD, axis=-1, keepdims=True)
    unit = vectors_RxKxD / jnp.maximum(norm, 1e-12)
    cos_RxKxK = jnp.einsum("rkd,rjd->rkj", unit, unit, precision=jax.lax.Precision.HIGHEST)
    k = component_mask_K.shape[0]
    checked_KxK = component_mask_K[:, None] & component_mask_K[None, :] & ~jnp.eye(k, dtype=bool)
    return jnp.all((cos_RxKxK < threshold) | ~checked_KxK[None], axis=(-2, -1))


def sample_filtered_vectors(
    key: jax.Array,
    component_mask_K: jax.Array,
    *,
    dim: int,
    candidates: int,
    threshold: float | jax.Array,
    value_range: tuple[float, float],
    shift: float = 0.0,
) -> jax.Array:
    """K vectors U[lo, hi]^D (+ shift * N(0, I)) whose pairwise cosines (real rows) are < threshold.

    Rejection sampling with fixed shapes: each round draws ``candidates`` sets and keeps the first valid
    one; a ``lax.while_loop`` repeats until one is found (under vmap, until every task has one).
    Padded rows are 0. Returns [K, D].
    """
    k_max = component_mask_K.shape[0]
    lo, hi = value_range

    def body(state):
        round_idx, _, _ = state
        u_key, n_key = jax.random.split(jax.random.fold_in(key, round_idx))
        cand_RxKxD = jax.random.uniform(u_key, (candidates, k_max, dim), minval=lo, maxval=hi)
        if shift:
            cand_RxKxD = cand_RxKxD + shift * jax.random.normal(n_key, cand_RxKxD.shape)
        ok_R = _cosine_ok(cand_RxKxD, component_mask_K, threshold)
        return round_idx + 1, jnp.any(ok_R), cand_RxKxD[jnp.argmax(ok_R)]

    init = (jnp.int32(0), jnp.bool_(False), jnp.zeros((k_max, dim), jnp.float32))
    _, _, out_KxD = jax.lax.while_loop(lambda s: ~s[1], body, init)
    return jnp.where(component_mask_K[:, None], out_KxD, 0.0)


# ----------------------------------------------------------------------------------------------------
# Tasks.


def sample_task(key: jax.Array, spec: TaskSpec, num_components: jax.Array) -> GMMTask:
    """One task with ``num_components`` (a traced int is fine) real components, padded to spec.k_max.

    Returns a ``GMMTask`` without the batch axis; ``sample_tasks`` vmaps this over tasks.
    """
    w_key, m_key, s_key, z_key, e_key, n_key = jax.random.split(key, 6)
    d, k_max, n = spec.dim, spec.k_max, spec.n_max
    k = jnp.asarray(num_components, jnp.int32)
    mask_K = jnp.arange(k_max) < k

    # Algorithm 1: weights = sort(U[0.2, 0.8]^K) / sum, ascending over the real components.
    raw_K = jax.random.uniform(w_key, (k_max,), minval=spec.weight_range[0], maxval=spec.weight_range[1])
    raw_K = jnp.sort(jnp.where(mask_K, raw_K, jnp.inf))
    weights_K = jnp.where(mask_K, raw_K, 0.0)
    weights_K = weights_K / jnp.sum(weights_K)

    threshold = spec.cos_threshold
    if spec.cos_filter_max_k is not None:  # K is traced: look its threshold up inside the program
        threshold = jnp.asarray([cos_threshold_for(spec, j) for j in range(k_max + 1)], jnp.float32)[k]
    filt = functools.partial(sample_filtered_vectors, component_mask_K=mask_K, dim=d, threshold=threshold)
    means_KxD = filt(
        m_key,
        candidates=candidates_per_round(spec, spec.mean_shift),
        value_range=spec.mean_range,
        shift=spec.mean_shift,
    )
    if spec.variant == "anisotropic":
        # Official AnisotropicGaussianMixtureTask: scale = 2 softplus(m / 5), m another filtered draw.
        m_KxD = filt(s_key, candidates=candidates_per_round(spec, 0.0), value_range=spec.mean_range)
        scales_KxD = jnp.where(mask_K[:, None], 2.0 * jax.nn.softplus(m_KxD / 5.0), 1.0)
    else:
        scales_KxD = jnp.ones((k_max, d), jnp.float32)

    noise_scale = None
    if spec.scaled:
        # sigma times the unit-noise task (the box scales with sigma; module docstring).
        sigma_key, comp_key = jax.random.split(jax.random.fold_in(key, _SCALE_STREAM))
        noise_scale = _log_uniform(sigma_key, (), spec.noise_scale_range)
        u_K = _log_uniform(comp_key, (k_max,), spec.component_scale_range)
        means_KxD = noise_scale * means_KxD
        scales_KxD = jnp.where(mask_K[:, None], (noise_scale * u_K)[:, None] * scales_KxD, 1.0)

    labels_N = jax.random.categorical(z_key, jnp.log(weights_K), shape=(n,)).astype(jnp.int32)
    points_NxD = means_KxD[labels_N] + scales_KxD[labels_N] * jax.random.normal(e_key, (n, d))
    if spec.variable_n:
        point_mask_N = jnp.arange(n) < _draw_num_points(n_key, spec)
    else:
        point_mask_N = jnp.ones((n,), bool)
    return GMMTask(
        points_NxD, point_mask_N, labels_N, weights_K, means_KxD, scales_KxD, mask_K, k, noise_scale
    )


def _draw_num_points(key: jax.Array, spec: TaskSpec) -> jax.Array:
    """A task's N under ``spec.n_distribution`` (int32 scalar in [n_min, n_max])."""
    if spec.n_distribution == "uniform":
        return jax.random.randint(key, (), spec.n_min, spec.n_max + 1)
    log_n = jax.random.uniform(key, (), minval=math.log(spec.n_min), maxval=math.log(spec.n_max + 1))
    return jnp.clip(jnp.floor(jnp.exp(log_n)).astype(jnp.int32), spec.n_min, spec.n_max)


def _log_uniform(key: jax.Array, shape: tuple, value_range: tuple[float, float] | None) -> jax.Array:
    """exp(U[log lo, log hi]) of the given shape; ones when value_range is None."""
    if value_range is None:
        return jnp.ones(shape, jnp.float32)
    log_lo, log_hi = math.log(value_range[0]), math.log(value_range[1])
    return jnp.exp(jax.random.uniform(key, shape, minval=log_lo, maxval=log_hi))


def noise_variances(task: GMMTask) -> jax.Array:
    """Each task's noise variance [B]: the mean of its real components' squared scales (sigma^2 for an
    isotropic task)."""
    mask_BxK = task.component_mask
    total_B = jnp.sum(jnp.where(mask_BxK[..., None], jnp.square(task.scales), 0.0), axis=(1, 2))
    return total_B / (jnp.maximum(jnp.sum(mask_BxK, axis=-1), 1) * task.scales.shape[-1])


@functools.partial(jax.jit, static_argnames=("spec", "tasks_per_k"))
def sample_tasks(key: jax.Array, spec: TaskSpec, tasks_per_k: int) -> GMMTask:
    """Samples ``tasks_per_k`` tasks of each K in ``spec.ks``; B = tasks_per_k * len(ks), grouped in ks order."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"spec must be a TaskSpec, got {type(spec).__name__}")
    check_int(tasks_per_k, "tasks_per_k", 1)
    ks_B = jnp.repeat(jnp.asarray(spec.ks, jnp.int32), tasks_per_k)
    keys = jax.random.split(key, ks_B.shape[0])
    return jax.vmap(sample_task, in_axes=(0, None, 0))(keys, spec, ks_B)


@functools.partial(jax.jit, static_argnames=("n", "a", "b", "batch"))
def sample_phase_transition_tasks(key: jax.Array, n: int, a: float, b: float, batch: int) -> GMMTask:
    """Two equal-weight spherical components at the Ndaoud (2018) threshold (docs/official_differences.md §1).

    Separation Delta = sqrt((1 + sqrt(a)) log n), dimension D = int(b n log n); means are
    +-(Delta / 2) u with u uniform on the sphere, plus a shared offset Delta * N(0, I). N = n points.
    """
    check_int(n, "n", 2)
    if not (a > 0 and b > 0):
        raise ValueError(f"a and b must be positive, got a={a!r}, b={b!r}")
    delta = math.sqrt((1.0 + math.sqrt(a)) * math.log(n))
    dim = int(b * n * math.log(n))
    if dim < 1:
        raise ValueError(f"b={b} gives dimension int(b n log n) = {dim} < 1")
    u_key, o_key, z_key, e_key = jax.random.split(key, 4)
    u_BxD = jax.random.normal(u_key, (batch, dim))
    u_BxD = u_BxD / jnp.linalg.norm(u_BxD, axis=-1, keepdims=True)
    offset_BxD = delta * jax.random.normal(o_key, (batch, dim))
    means_BxKxD = offset_BxD[:, None, :] + (delta / 2.0) * jnp.stack([u_BxD, -u_BxD], axis=1)
    labels_BxN = jax.random.bernoulli(z_key, 0.5, (batch, n)).astype(jnp.int32)
    points_BxNxD = jax.vmap(lambda m, z: m[z])(means_BxKxD, labels_BxN) + jax.random.normal(
        e_key, (batch, n, dim)
    )
    return GMMTask(
        points=points_BxNxD,
        point_mask=jnp.ones((batch, n), bool),
        labels=labels_BxN,
        weights=jnp.full((batch, 2), 0.5),
        means=means_BxKxD,
        scales=jnp.ones((batch, 2, dim)),
        component_mask=jnp.ones((batch, 2), bool),
        num_components=jnp.full((batch,), 2, jnp.int32),
    )
