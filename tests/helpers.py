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


def pallas_tanh_dense(scale_dx=1.0):
    """``tanh(x @ w)`` as a Pallas kernel computing in float32 (interpret mode), with a
    custom_vjp rule whose dx is scaled by ``scale_dx``."""
    from jax.experimental import pallas as pl

    def kernel(x_ref, w_ref, o_ref):
        z = jnp.dot(x_ref[...].astype(jnp.float32), w_ref[...].astype(jnp.float32))
        o_ref[...] = jnp.tanh(z).astype(o_ref.dtype)

    def forward(x, w):
        shape = jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), x.dtype)
        return pl.pallas_call(kernel, out_shape=shape, interpret=True)(x, w)

    @jax.custom_vjp
    def tanh_dense(x, w):
        return forward(x, w)

    def backward(residuals, g):
        x, w = residuals
        dz = g * (1 - jnp.tanh(x @ w) ** 2)
        return scale_dx * dz @ w.T, x.T @ dz

    tanh_dense.defvjp(lambda x, w: (forward(x, w), (x, w)), backward)
    return tanh_dense
