"""Test layers shared by several test files."""

import jax
import jax.numpy as jnp

import jaxnn


def noisy_counter():
    """A leaf with state (a step counter) and randomness (additive noise ``0.1·N(0, 1)`` in
    training, none in evaluation); no parameters, ``dx = dy``."""

    def init(key, in_shape):
        return tuple(in_shape), (), {"count": jnp.zeros((), jnp.int32)}

    def forward(params, state, x, *, key=None, train=False):
        noise = 0.1 * jax.random.normal(key, x.shape, x.dtype) if train else jnp.zeros_like(x)
        return x + noise, {"count": state["count"] + 1}, None

    def backward(params, residuals, dy):
        return (), dy

    return jaxnn.core.leaf_layer("noisy_counter", init, forward, backward)
