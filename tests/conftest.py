"""Test-wide JAX settings: catch silent broadcasting; share compiled programs between the tests' subprocesses."""

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
# Only the subprocesses the tests start use it (they read these variables at import). The test process itself
# keeps every program in memory: in three full-suite runs in fresh clones (jaxlib 0.10.2, CPU) the long-lived
# test process segfaulted inside the persistent cache's write/read/compile path late in the run, each time in
# a different test that passes alone.
