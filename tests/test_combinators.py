"""Combinators: serial's backward is the reverse chain of its layers' backward."""

import chex
import jax
import jax.numpy as jnp
import pytest

import jaxnn
from tests.gradcases import registered, run_layer_case

GRADCHECK_CASES = registered("serial")


@pytest.mark.parametrize("case", GRADCHECK_CASES["serial"], ids=repr)
def test_serial_backward_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


def test_serial_backward_is_each_layers_backward_in_reverse(key):
    layers = [jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(2)]
    net = jaxnn.serial(*layers)
    _, params, _ = net.init(key, (-1, 3))
    x = jax.random.normal(key, (5, 3))
    dy = jnp.ones((5, 2))
    _, _, residuals = net.forward(params, (), x)
    grads, dx = net.backward(params, residuals, dy)
    # by hand, the classic loop from L down to 1
    d = dy
    expected = [None] * 3
    for i in (2, 1, 0):
        expected[i], d = layers[i].backward(params[i], residuals[i], d)
    chex.assert_trees_all_close(grads, tuple(expected))
    chex.assert_trees_all_close(dx, d)


def test_serial_params_and_state_are_tuples_per_layer():
    net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1))
    out_shape, params, state = net.init(jax.random.key(0), (-1, 2))
    assert out_shape == (-1, 1)
    assert isinstance(params, tuple) and len(params) == 3 and params[1] == ()
    assert state == ((), (), ())
    assert repr(net) == "serial(dense, relu, dense)"


def test_serial_rejects_non_layers_with_a_hint():
    with pytest.raises(TypeError, match=r"argument 1 .* forget the parentheses"):
        jaxnn.serial(jaxnn.dense(2), jaxnn.relu)
    with pytest.raises(ValueError, match="at least one layer"):
        jaxnn.serial()


def test_serial_rejects_params_of_another_network():
    net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1))
    with pytest.raises(ValueError, match="params must be a tuple of 3 entries"):
        jaxnn.apply(net, ({},), (), jnp.ones((2, 2)))


def test_map_leaves_visits_every_leaf_with_its_path():
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.serial(jaxnn.relu(), jaxnn.dense(1)))
    seen = []
    rebuilt = jaxnn.map_leaves(lambda leaf, path: seen.append(path) or leaf, net)
    assert seen == ["serial/0:dense", "serial/1:serial/0:relu", "serial/1:serial/1:dense"]
    assert repr(rebuilt) == repr(net)
