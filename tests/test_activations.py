"""Activations: values against jax.nn, hand-derived derivatives in float64, both faces."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from jaxnn import activations
from tests.gradcases import registered, run_layer_case

GRADCHECK_CASES = registered(
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "softmax",
    "gelu",
    "elu",
    "softplus",
    "silu",
    "identity",
)


@pytest.mark.parametrize(
    "case", [c for cases in GRADCHECK_CASES.values() for c in cases], ids=repr
)
def test_hand_derived_derivative_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


REFERENCE = {
    "sigmoid": (activations.sigmoid, jax.nn.sigmoid),
    "tanh": (activations.tanh, jnp.tanh),
    "relu": (activations.relu, jax.nn.relu),
    "leaky_relu": (activations.leaky_relu, lambda x: jax.nn.leaky_relu(x, 0.01)),
    "softmax": (activations.softmax, jax.nn.softmax),
    "gelu": (activations.gelu, lambda x: jax.nn.gelu(x, approximate=False)),
    "gelu_tanh": (lambda x: activations.gelu(x, approximate=True),
                  lambda x: jax.nn.gelu(x, approximate=True)),
    "elu": (activations.elu, jax.nn.elu),
    "softplus": (activations.softplus, jax.nn.softplus),
    "silu": (activations.silu, jax.nn.silu),
    "identity": (activations.identity, lambda x: x),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_function_face_matches_jax_nn_in_value_and_gradient(name, key):
    ours, theirs = REFERENCE[name]
    x = jax.random.normal(key, (5, 6), jnp.float64) * 3
    chex.assert_trees_all_close(ours(x), theirs(x), rtol=1e-12, atol=1e-14)
    g_ours = jax.grad(lambda x: jnp.sum(jnp.sin(ours(x))))(x)
    g_theirs = jax.grad(lambda x: jnp.sum(jnp.sin(theirs(x))))(x)
    chex.assert_trees_all_close(g_ours, g_theirs, rtol=1e-10, atol=1e-14)


def test_layer_face_and_function_face_agree(key):
    x = jax.random.normal(key, (4, 3))
    y, state = jaxnn.apply(jaxnn.tanh(), (), (), x)
    chex.assert_trees_all_close(y, activations.tanh(x))
    assert state == ()


def test_derivative_at_zero_is_documented_subgradient():
    x = jnp.zeros((1, 1))
    assert float(jax.grad(lambda x: activations.relu(x).sum())(x)[0, 0]) == 0.0
    assert float(jax.grad(lambda x: activations.leaky_relu(x, 0.3).sum())(x)[0, 0]) == 0.3


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_finite_values_and_gradients_at_extreme_inputs(name, dtype):
    ours, _ = REFERENCE[name]
    big = 1e4 if dtype != jnp.float16 else 6e4
    x = jnp.array([[-big, -30.0, 0.0, 30.0, big]], dtype)
    y = ours(x)
    g = jax.grad(lambda x: jnp.sum(ours(x).astype(jnp.float32)))(x)
    assert np.all(np.isfinite(np.asarray(y, np.float32))), y
    assert np.all(np.isfinite(np.asarray(g, np.float32))), g


def test_output_shape_from_init_equals_forward():
    for name, make in [("relu", jaxnn.relu), ("softmax", jaxnn.softmax), ("gelu", jaxnn.gelu)]:
        out_shape, params, state = make().init(jax.random.key(0), (2, 3, 4))
        y, _ = jaxnn.apply(make(), params, state, jnp.ones((2, 3, 4)))
        assert y.shape == out_shape, name


def test_integer_input_is_a_clear_error():
    with pytest.raises(TypeError, match="relu: expected a floating-point input"):
        activations.relu(jnp.arange(3))


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_leaky_relu_slope_must_be_positive(bad):
    with pytest.raises(ValueError, match="negative_slope"):
        jaxnn.leaky_relu(bad)


@pytest.mark.parametrize("name", ["relu", "tanh", "leaky_relu", "gelu", "softmax"])
def test_a_constructor_called_on_an_array_says_what_to_write(name):
    # jaxnn.relu is the layer constructor; jaxnn.relu()(x) or jaxnn.activations.relu(x) apply it
    with pytest.raises(TypeError, match=rf"jaxnn.{name} is a layer constructor, not the "
                                        rf"function: write jaxnn.{name}\(\)\(x\) .* or "
                                        rf"jaxnn.activations.{name}\(x\)"):
        getattr(jaxnn, name)(jnp.ones((2, 3)))
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    chex.assert_trees_all_close(getattr(jaxnn, name)()(x), getattr(activations, name)(x))
