"""jaxnn.layers.weight_gradient: dW = xᵀ dZ, with the CPU-only operand order chosen at lowering."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn.layers import weight_gradient


def _lowered_text(x, dz, platform):
    return jax.jit(weight_gradient).trace(x, dz).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize(("m", "n_in", "n_out"), [(5, 64, 4), (3, 8, 8), (6, 2, 9), (1, 12, 3)])
def test_weight_gradient_is_x_transposed_times_dz(m, n_in, n_out, key):
    kx, kz = jax.random.split(key)
    x = jax.random.normal(kx, (m, n_in), jnp.float64)
    dz = jax.random.normal(kz, (m, n_out), jnp.float64)
    dw = jax.jit(weight_gradient)(x, dz)
    chex.assert_shape(dw, (n_in, n_out))
    np.testing.assert_allclose(dw, np.asarray(x).T @ np.asarray(dz), rtol=1e-12, atol=1e-12)


def test_the_transposed_product_behind_a_barrier_is_lowered_for_cpu_only():
    x, dz = jnp.ones((8, 64)), jnp.ones((8, 4))  # narrows 16-fold: the CPU rule applies
    assert "optimization_barrier" in _lowered_text(x, dz, "cpu")
    for platform in ("cuda", "rocm", "tpu"):
        text = _lowered_text(x, dz, platform)
        assert "optimization_barrier" not in text, platform
        assert text.count("dot_general") == 1, platform


def test_a_layer_that_does_not_narrow_gets_the_plain_product_everywhere():
    x, dz = jnp.ones((8, 16)), jnp.ones((8, 8))
    for platform in ("cpu", "cuda", "tpu"):
        assert "optimization_barrier" not in _lowered_text(x, dz, platform), platform
