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


def noisy_counter_problem(key, examples: int):
    """``(net, params, state, x, y)``: dense → :func:`noisy_counter` → tanh → dense on 2
    features, float64 parameters, the regression target ``sin(x₀)``."""
    net = jaxnn.serial(jaxnn.dense(4), noisy_counter(), jaxnn.tanh(), jaxnn.dense(1))
    k1, k2 = jax.random.split(key)
    _, params, state = net.init(k1, (-1, 2))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(k2, (examples, 2))
    return net, params, state, x, jnp.sin(x[:, :1])
