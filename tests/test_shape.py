"""flatten and reshape: the batch axis kept, backward the reshape back, clear size errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from tests.gradcases import registered, run_layer_case

GRADCHECK_CASES = registered("flatten", "reshape")


@pytest.mark.parametrize("case", GRADCHECK_CASES["flatten"] + GRADCHECK_CASES["reshape"],
                         ids=repr)
def test_shape_backward_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


@pytest.mark.parametrize(
    ("layer", "in_shape", "expected"),
    [
        (jaxnn.flatten(), (-1, 4, 4, 3), (-1, 48)),
        (jaxnn.flatten(), (5, 7), (5, 7)),
        (jaxnn.flatten(), (-1, 2, 3, 4, 5), (-1, 120)),
        (jaxnn.reshape((4, 3)), (-1, 12), (-1, 4, 3)),
        (jaxnn.reshape((-1,)), (2, 3, 4), (2, 12)),
        (jaxnn.reshape((2, -1, 2)), (-1, 3, 4), (-1, 2, 3, 2)),
    ],
)
def test_init_shape_equals_forward_shape(layer, in_shape, expected):
    out_shape, params, state = layer.init(jax.random.key(0), in_shape)
    assert out_shape == expected
    assert params == ()
    assert state == ()
    x = jnp.arange(float(np.prod([3 if d == -1 else d for d in in_shape]))).reshape(
        [3 if d == -1 else d for d in in_shape])
    y, _ = jaxnn.apply(layer, (), (), x)
    assert y.shape == tuple(3 if d == -1 else d for d in expected)


def test_flatten_is_row_major_per_example():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(jaxnn.flatten()(x), np.arange(24.0).reshape(2, 12))


def test_backward_is_the_reshape_back():
    x = jnp.zeros((2, 3, 4))
    dy = jnp.arange(24.0).reshape(2, 4, 3)
    layer = jaxnn.reshape((4, 3))
    _, _, residuals = layer.forward((), (), x)
    _, dx = layer.backward((), residuals, dy)
    np.testing.assert_array_equal(dx, np.arange(24.0).reshape(2, 3, 4))


def test_reshape_size_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"reshape: cannot reshape non-batch shape \(3, 4\) "
                                         r"\(12 entries per example\) to \(5, 2\) \(10 entries\)"):
        jaxnn.reshape((5, 2))(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape non-batch shape \(7,\)"):
        jaxnn.reshape((-1, 2)).init(jax.random.key(0), (-1, 7))


@pytest.mark.parametrize("bad", [(0, 3), (-1, -1), (2, -2), (2.0, 3), 6])
def test_reshape_rejects_bad_shapes(bad):
    with pytest.raises((ValueError, TypeError), match="reshape: shape must"):
        jaxnn.reshape(bad)


def test_only_the_batch_may_be_unknown():
    with pytest.raises(ValueError, match=r"flatten: in_shape must be concrete beyond the batch"):
        jaxnn.flatten().init(jax.random.key(0), (-1, -1, 3))


def test_flatten_follows_the_batch_under_vmap_and_jit():
    x = jnp.arange(48.0).reshape(4, 2, 3, 2)
    y = jax.jit(jax.vmap(jaxnn.flatten()))(x)
    np.testing.assert_array_equal(y, np.arange(48.0).reshape(4, 2, 6))
