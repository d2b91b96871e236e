"""Data parallelism over every device of every host: one ('data',) mesh, params replicated, tasks sharded."""

from __future__ import annotations

import os

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed(mode: str = "auto") -> bool:
    """Calls ``jax.distributed.initialize()`` for multi-host runs. Returns whether it did.

    mode 'on' always initialises (JAX auto-detects TPU pods, SLURM and Open MPI); 'off' never; 'auto'
    initialises when a coordinator is named in the environment or a TPU VM lists several workers.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off":
        return False
    if mode == "auto":
        tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
        if not (any(os.environ.get(v) for v in _MULTIHOST_ENV) or "," in tpu_hosts):
            return False
    jax.distributed.initialize()
    return True


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh named 'data' over all devices of all processes (GSPMD-style automatic axes)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh) -> NamedSharding:
    """Leading (task) axis split over 'data'."""
    return NamedSharding(mesh, PartitionSpec("data"))


def check_divisible(global_batch: int, mesh) -> None:
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(
            f"the global batch of {global_batch} tasks does not divide by the {devices} devices of the mesh; "
            f"choose tasks_per_k so that tasks_per_k * len(task.ks) is a multiple of {devices}"
        )
