"""A persistent cache of traced programs: ``jax.export`` serializations in a directory, so that a new process
calls a jitted program without tracing and lowering it again (JAX's persistent compilation cache skips only
the XLA compile; tracing the network's fit program still takes seconds in every process).

Off unless ``enable(directory)`` is called: importing the library never turns it on (``experiments.fit``
does, and ``--nocompilation_cache`` / ``TGMM_JAX_NO_CACHE=1`` keep it off). When on:

  call(fn, static, args)   ``fn(*static, *args)`` for a ``jax.jit`` function ``fn`` whose first
                           ``len(static)`` positional arguments are static. The entry's key hashes the
                           function's name, ``repr`` of the static arguments, the pytree structure, shapes and
                           dtypes of ``args``, the versions of Python, jax, jaxlib, flax and NumPy, the backend
                           and device kind, the jax options that change tracing (x64, matmul precision, PRNG),
                           and the source of every ``tgmm_jax`` module, so an edit of the library or an
                           upgrade misses the cache instead of running a stale program. A hit deserializes the
                           program and calls it (``Exported.call``; its XLA compile still goes through JAX's
                           compilation cache); a miss exports (traces once), writes the entry, and calls the
                           same way, so cold and warm runs run the same program (also identical, bit for bit,
                           to ``fn``'s own, tested). An unreadable, corrupt or mismatched entry is a miss:
                           ``call`` falls back silently, and a deserialized program that fails when called is
                           replaced by ``fn`` itself.
  memo_json(name, key, compute)  a JSON-able value computed once per key (same key parts as above), e.g. a
                           checkpoint's parameter shapes (``tgmm_jax.pretrained``), read back in later processes.

Entries are written atomically (a temporary file renamed into place); a directory that cannot be written only
costs the time. ``jax.export`` serialization needs the ``flatbuffers`` package: without it ``call`` falls back
to ``fn``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax

_STATE: dict[str, Any] = {"dir": None, "source": None}
_RUNNERS: dict[str, Callable] = {}  # key -> jitted Exported.call, for this process
STATS = {"hits": 0, "misses": 0, "errors": 0}  # entries read / written / found unusable (this process)
_SUFFIX = ".jaxexport"
_OPTIONS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
)


def enable(directory: str) -> bool:
    """Keeps traced programs in ``directory`` (created); False, and the cache left off, when it cannot be made."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return False
    _STATE["dir"] = directory
    return True


def disable() -> None:
    _STATE["dir"] = None
    _RUNNERS.clear()


def directory() -> str | None:
    """The cache's directory, or None when it is off."""
    return _STATE["dir"]


def _source_digest() -> str:
    """sha256 of every ``tgmm_jax`` module's path and source (computed once per process, ~50 files)."""
    if _STATE["source"] is None:
        root = os.path.dirname(os.path.abspath(__file__))
        digest = hashlib.sha256()
        for base, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(base, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
        _STATE["source"] = digest.hexdigest()
    return _STATE["source"]


def _environment() -> list[str]:
    import flax
    import jaxlib
    import numpy as np

    device = jax.devices()[0]
    options = [f"{name}={getattr(jax.config, name, None)!r}" for name in _OPTIONS]
    return [
        sys.version,
        jax.__version__,
        jaxlib.__version__,
        flax.__version__,
        np.__version__,
        device.platform,
        getattr(device, "device_kind", ""),
        *options,
        _source_digest(),
    ]


def _digest(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def _path(name: str, key: str, suffix: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return os.path.join(_STATE["dir"], f"{safe}-{key[:40]}{suffix}")


def _write(path: str, content: bytes) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:
        pass  # a read-only or full cache directory only costs the time


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _register_pytrees() -> None:
    """Output pytrees of the cached programs need a name in ``jax.export``'s serialization (once)."""
    if _STATE.get("registered"):
        return
    from tgmm_jax.gmm import MixtureParams

    try:
        jax.export.register_pytree_node_serialization(
            MixtureParams,
            serialized_name="tgmm_jax.gmm.MixtureParams",
            serialize_auxdata=lambda aux: json.dumps(list(aux)).encode(),
            deserialize_auxdata=lambda data: tuple(json.loads(data)),
        )
    except ValueError:  # registered already (e.g. by a reloaded module)
        pass
    _STATE["registered"] = True


def _signature(args) -> list[str]:
    leaves, tree = jax.tree.flatten(args)
    return [str(tree), *(str(jax.typeof(x)) for x in leaves)]


def _matches(exported, args) -> bool:
    leaves = jax.tree.leaves(args)
    if exported.in_tree != jax.tree.structure((tuple(args), {})) or len(exported.in_avals) != len(leaves):
        return False
    return all(
        tuple(a.shape) == tuple(jax.typeof(x).shape) and a.dtype == jax.typeof(x).dtype
        for a, x in zip(exported.in_avals, leaves)
    )


def call(fn: Callable, static: tuple, args: tuple):
    """``fn(*static, *args)``, through the cache when it is on (see the module docstring)."""
    if _STATE["dir"] is None:
        return fn(*static, *args)
    try:
        import flatbuffers  # noqa: F401 -- jax.export's serialization needs it; without it, no caching

        name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
        key = _digest([name, *(repr(s) for s in static), *_signature(args), *_environment()])
        _register_pytrees()
    except Exception:  # noqa: BLE001 -- e.g. no flatbuffers, an unhashable static: no caching
        return fn(*static, *args)
    runner = _RUNNERS.get(key)
    if runner is not None:
        return runner(*args)
    path = _path(name.rsplit(".", 1)[-1], key, _SUFFIX)
    content = _read(path)
    if content is not None:
        try:
            exported = jax.export.deserialize(bytearray(content))
            if not _matches(exported, args):
                raise ValueError("the entry's signature differs from the call's")
            runner = jax.jit(exported.call)
            out = runner(*args)
        except Exception:  # noqa: BLE001 -- truncated, corrupt or foreign entry: trace instead
            STATS["errors"] += 1
        else:
            STATS["hits"] += 1
            _RUNNERS[key] = runner
            return out
    try:
        exported = jax.export.export(fn)(*static, *args)
        serialized = exported.serialize()
    except Exception:  # noqa: BLE001 -- a program export cannot serialize: run it as it is
        return fn(*static, *args)
    STATS["misses"] += 1
    _write(path, bytes(serialized))
    runner = jax.jit(exported.call)
    _RUNNERS[key] = runner
    return runner(*args)


def memo_json(name: str, key: list[str], compute: Callable[[], Any]) -> Any:
    """``compute()`` (a JSON-able value), stored under ``key`` (plus the environment's parts, as ``call``'s)
    when the cache is on and read back by later calls; an unreadable entry is computed again."""
    if _STATE["dir"] is None:
        return compute()
    try:
        path = _path(name, _digest([name, *key, *_environment()]), ".json")
    except Exception:  # noqa: BLE001
        return compute()
    content = _read(path)
    if content is not None:
        try:
            value = json.loads(content)["value"]
        except (ValueError, KeyError, TypeError):
            STATS["errors"] += 1
        else:
            STATS["hits"] += 1
            return value
    value = compute()
    STATS["misses"] += 1
    _write(path, json.dumps({"name": name, "value": value}).encode())
    return value
