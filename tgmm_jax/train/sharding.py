"""Data parallelism over every device of every host: one ('data',) mesh, params replicated, tasks sharded."""

from __future__ import annotations

import os

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed(mode: str = "auto") -> bool:
    """Calls ``jax.distributed.initialize()`` for multi-host runs. Returns whether JAX runs distributed.

    mode 'on' always initialises (JAX auto-detects TPU pods, SLURM and Open MPI); 'off' never; 'auto'
    initialises when a coordinator is named in the environment or a TPU VM lists several workers. Elsewhere
    (one's own cluster, the multi-process test) ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` name the run's processes. A second call in the same process
    (a resume, tests) keeps the existing setup.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be 'auto', 'on' or 'off', got {mode!r}")
    if jax.distributed.is_initialized():
        return True
    if mode == "off":
        return False
    if mode == "auto":
        tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
        if not (any(os.environ.get(v) for v in _MULTIHOST_ENV) or "," in tpu_hosts):
            return False
    coordinator = next((os.environ[v] for v in _MULTIHOST_ENV if os.environ.get(v)), None)
    jax.distributed.initialize(coordinator, **_process_env())
    return True


def _process_env() -> dict[str, int]:
    out = {}
    for arg, var in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        value = os.environ.get(var)
        if value:
            if not value.isdigit():
                raise ValueError(f"environment variable {var} must be a non-negative integer, got {value!r}")
            out[arg] = int(value)
    return out


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh named 'data' over all devices of all processes (GSPMD-style automatic axes)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh):
    """Host-identical values -> global arrays replicated over the mesh (``jax.device_put`` cannot target the
    devices of other processes)."""
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


def batch_sharded(mesh) -> NamedSharding:
    """Leading (task) axis split over 'data'."""
    return NamedSharding(mesh, PartitionSpec("data"))


def check_divisible(global_batch: int, mesh, grad_accum_steps: int = 1) -> None:
    """Each (micro-)batch must split evenly over the mesh's devices."""
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(
            f"the global batch of {global_batch} tasks does not divide by the {devices} devices of the mesh; "
            f"choose tasks_per_k so that tasks_per_k * len(task.ks) is a multiple of {devices}"
        )
    micro = global_batch // grad_accum_steps
    if grad_accum_steps > 1 and micro % devices:
        raise ValueError(
            f"the micro-batch of {micro} tasks (global batch {global_batch} / grad_accum_steps "
            f"{grad_accum_steps}) does not divide by the {devices} devices of the mesh; lower grad_accum_steps "
            f"or raise tasks_per_k"
        )
