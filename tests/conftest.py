"""Test configuration: float64 for gradient checks, loud mistakes, fresh PRNG keys."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key(request):
    """A PRNG key that differs per test, derived from the test's name (reproducible)."""
    seed = sum(map(ord, request.node.name)) % (2**31)
    return jax.random.key(seed)
