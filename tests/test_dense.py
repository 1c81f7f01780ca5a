"""dense: shapes, the classic formulas, and the hand-derived backward in float64."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from tests.gradcases import registered, run_layer_case

GRADCHECK_CASES = registered("dense")


@pytest.mark.parametrize("case", GRADCHECK_CASES["dense"], ids=repr)
def test_dense_backward_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


@pytest.mark.parametrize("in_shape", [(-1, 3), (8, 3), (2, 5, 3)])
@pytest.mark.parametrize("features", [1, 4])
@pytest.mark.parametrize("use_bias", [True, False])
def test_init_shape_equals_forward_shape(in_shape, features, use_bias):
    layer = jaxnn.dense(features, use_bias=use_bias)
    out_shape, params, state = layer.init(jax.random.key(0), in_shape)
    x = jnp.ones(tuple(2 if d == -1 else d for d in in_shape))
    y, _ = jaxnn.apply(layer, params, state, x)
    assert out_shape[1:] == y.shape[1:]
    assert out_shape[0] in (-1, y.shape[0])
    assert set(params) == ({"W", "b"} if use_bias else {"W"})
    chex.assert_shape(params["W"], (3, features))


def test_backward_is_the_seeds_formulas(key):
    k1, k2, k3 = jax.random.split(key, 3)
    layer = jaxnn.dense(3, dtype=jnp.float64)
    _, params, _ = layer.init(k1, (-1, 4))
    x = jax.random.normal(k2, (5, 4))
    dz = jax.random.normal(k3, (5, 3))
    _, _, residuals = layer.forward(params, (), x)
    grads, dx = layer.backward(params, residuals, dz)
    xn, dzn, wn = map(np.asarray, (x, dz, params["W"]))
    np.testing.assert_allclose(grads["W"], xn.T @ dzn, rtol=1e-12)  # dW = A_prevᵀ dZ
    np.testing.assert_allclose(grads["b"], dzn.sum(0), rtol=1e-12)  # db = Σ_rows dZ
    np.testing.assert_allclose(dx, dzn @ wn.T, rtol=1e-12)  # dA_prev = dZ Wᵀ


def test_classic_initialization_is_lecun_normal():
    layer = jaxnn.dense(2000)
    _, params, _ = layer.init(jax.random.key(3), (-1, 500))
    w = np.asarray(params["W"])
    assert abs(w.std() * np.sqrt(500) - 1) < 0.01  # randn(n, n_prev) / sqrt(n_prev)
    assert abs(w.mean()) < 1e-3
    np.testing.assert_array_equal(params["b"], 0)


def test_wrong_feature_size_names_the_layer_and_shapes():
    layer = jaxnn.dense(3)
    _, params, _ = layer.init(jax.random.key(0), (-1, 4))
    with pytest.raises(ValueError, match=r"dense: expected input with 4 features.*\(2, 5\)"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 5)))


def test_wrong_feature_size_is_caught_at_trace_time_under_jit():
    layer = jaxnn.dense(3)
    _, params, _ = layer.init(jax.random.key(0), (-1, 4))
    with pytest.raises(ValueError, match="dense: expected input with 4 features"):
        jax.jit(lambda p, x: jaxnn.apply(layer, p, (), x))(params, jnp.ones((2, 5)))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_features_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="dense: features must be a positive int"):
        jaxnn.dense(bad)


def test_input_without_a_batch_axis_is_a_clear_error():
    layer = jaxnn.dense(3)
    _, params, _ = layer.init(jax.random.key(0), (-1, 4))
    with pytest.raises(ValueError, match=r"dense: expected input of shape \(batch, ..., 4\), got "
                                         r"shape \(4,\) \(rank 1\)"):
        jaxnn.apply(layer, params, (), jnp.ones(4))


def test_integer_features_are_a_clear_error():
    layer = jaxnn.dense(3)
    _, params, _ = layer.init(jax.random.key(0), (-1, 4))
    with pytest.raises(TypeError, match="dense: expected a floating-point input, got dtype int"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 4), jnp.int32))
    with pytest.raises(TypeError, match="dense: expected a floating-point input, got dtype bool"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 4), bool))


def test_empty_batch_passes_through_with_zero_gradients():
    layer = jaxnn.dense(3)
    _, params, _ = layer.init(jax.random.key(0), (-1, 4))
    y, _ = jaxnn.apply(layer, params, (), jnp.ones((0, 4)))
    chex.assert_shape(y, (0, 3))
