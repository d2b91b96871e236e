"""Test-wide JAX settings: catch silent broadcasting; share compiled programs between tests and subprocesses."""

import os
import tempfile

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

# Many tests (and the trainer's subprocess tests) compile the same small programs: a persistent
# compilation cache for the session saves most of that time on a 2-core machine.
_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tgmm_jax_test_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
