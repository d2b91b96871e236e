"""Test-wide JAX settings: catch silent broadcasting; share compiled programs between test modules, pytest-xdist
workers and the tests' subprocesses (a persistent cache); free each test module's compiled programs when it ends."""

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
# The subprocesses the tests start read these variables at import; the test process (each pytest-xdist worker)
# imported jax above, so it is pointed at the same cache here. The module fixture below drops the compiled
# programs when a module ends; a later module compiling the same program then reads it back from disk.
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes", int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"])
)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops every compiled program when a test module ends. XLA:CPU maps about three memory regions per
    executable and never unmaps them while the program is cached; over the whole suite one process reached
    Linux's default limit of 65,530 maps (``vm.max_map_count``), and the next compile segfaulted. That was the
    crash of three full-suite runs, each in a different test that passes alone."""
    yield
    jax.clear_caches()
    gc.collect()
