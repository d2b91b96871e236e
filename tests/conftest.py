"""Test-wide JAX settings: catch silent broadcasting, keep CPU runs single-host."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
