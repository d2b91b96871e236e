"""Test-wide JAX settings: catch silent broadcasting; share compiled programs between the tests' subprocesses;
free each test module's compiled programs when it ends."""

import gc
import os
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# Many tests (and the trainer's subprocess tests) compile the same small programs: a persistent
# compilation cache for the session saves most of that time on a 2-core machine.
_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tgmm_jax_test_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Only the subprocesses the tests start use it (they read these variables at import); the test process itself
# compiles in memory.


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops every compiled program when a test module ends. XLA:CPU maps about three memory regions per
    executable and never unmaps them while the program is cached; over the whole suite one process reached
    Linux's default limit of 65,530 maps (``vm.max_map_count``), and the next compile segfaulted. That was the
    crash of three full-suite runs, each in a different test that passes alone."""
    yield
    jax.clear_caches()
    gc.collect()
