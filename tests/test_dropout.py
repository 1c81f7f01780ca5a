"""dropout: the drop probability, inverted scaling, keys, modes, and the hand-derived backward."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnn
from tests.gradcases import registered, run_layer_case

GRADCHECK_CASES = registered("dropout")


@pytest.mark.parametrize("case", GRADCHECK_CASES["dropout"], ids=repr)
def test_dropout_backward_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


@pytest.mark.parametrize(("in_shape", "rate", "train"), list(itertools.product(
    [(-1, 3), (4, 3), (2, 5, 2, 3)], [0.0, 0.3], [True, False])))
def test_init_shape_equals_forward_shape(in_shape, rate, train):
    layer = jaxnn.dropout(rate)
    out_shape, params, state = layer.init(jax.random.key(0), in_shape)
    x = jnp.ones(tuple(2 if d == -1 else d for d in in_shape))
    y, _ = jaxnn.apply(layer, params, state, x, key=jax.random.key(1), train=train)
    assert out_shape[1:] == y.shape[1:]
    assert out_shape[0] in (-1, y.shape[0])
    assert params == ()
    assert state == ()


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_entries_are_zero_or_scaled_and_the_fraction_dropped_is_the_rate(rate, key):
    k_x, k_drop = jax.random.split(key)
    x = 1.0 + jnp.abs(jax.random.normal(k_x, (200, 500)))  # no zeros in x
    y, _ = jaxnn.apply(jaxnn.dropout(rate), (), (), x, key=k_drop, train=True)
    dropped = np.asarray(y) == 0
    kept_y, kept_x = np.asarray(y)[~dropped], np.asarray(x)[~dropped]
    np.testing.assert_array_equal(kept_y, kept_x * (1 / (1 - rate)))  # exactly
    np.testing.assert_allclose(kept_y, kept_x / (1 - rate), rtol=2.3e-16)  # within an ulp
    n = x.size
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(dropped.mean() - rate) < 5 * sigma
    # inverted scaling keeps the mean
    assert abs(float(y.mean()) / float(x.mean()) - 1) < 0.02


@settings(max_examples=5, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       rate=st.floats(0.0, 0.95), seed=st.integers(0, 1000))
def test_every_entry_is_zero_or_x_over_keep_probability(shape, rate, seed):
    k_x, k_drop = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k_x, tuple(shape))
    y, _ = jaxnn.apply(jaxnn.dropout(rate), (), (), x, key=k_drop, train=True)
    y, x = np.asarray(y), np.asarray(x)
    assert np.all((y == 0) | (y == x * (1 / (1 - rate))))


def test_evaluation_mode_is_the_identity_and_needs_no_key(key):
    x = jax.random.normal(key, (5, 4))
    y, state = jaxnn.apply(jaxnn.dropout(0.5), (), (), x)
    np.testing.assert_array_equal(y, x)
    assert state == ()
    dx = jax.grad(lambda x: jnp.sum(jaxnn.apply(jaxnn.dropout(0.5), (), (), x)[0] ** 2))(x)
    np.testing.assert_allclose(dx, 2 * x, rtol=1e-15)


def test_training_without_a_key_is_a_clear_error():
    with pytest.raises(ValueError, match="dropout: training mode needs a PRNG key, got key=None"):
        jaxnn.apply(jaxnn.dropout(0.5), (), (), jnp.ones((2, 3)), train=True)
    # a training step called without a key: the message says where the key goes
    net = jaxnn.serial(jaxnn.dense(2), jaxnn.dropout(0.5))
    _, params, _ = net.init(jax.random.key(0), (-1, 3))
    optimizer = optax.sgd(0.1)
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    with pytest.raises(ValueError, match=r"step\(params, state, opt_state, x, y, key\)"):
        step(params, (), optimizer.init(params), jnp.ones((4, 3)), jnp.ones((4, 2)))


def test_rate_zero_is_the_identity_even_in_training_without_a_key(key):
    x = jax.random.normal(key, (3, 4))
    y, _ = jaxnn.apply(jaxnn.dropout(0.0), (), (), x, train=True)
    np.testing.assert_array_equal(y, x)


def test_the_key_decides_the_mask(key):
    x = jnp.ones((50, 40))
    layer = jaxnn.dropout(0.5)
    k1, k2 = jax.random.split(key)
    y1, _ = jaxnn.apply(layer, (), (), x, key=k1, train=True)
    y1_again, _ = jaxnn.apply(layer, (), (), x, key=k1, train=True)
    y2, _ = jaxnn.apply(layer, (), (), x, key=k2, train=True)
    np.testing.assert_array_equal(y1, y1_again)
    assert np.mean(np.asarray(y1) != np.asarray(y2)) > 0.3
    # raw uint32 keys work as well as typed ones
    y_raw, _ = jaxnn.apply(layer, (), (), x, key=jax.random.PRNGKey(0), train=True)
    assert set(np.unique(y_raw).tolist()) == {0.0, 2.0}


def test_backward_uses_the_forward_mask(key):
    k_x, k_drop, k_v = jax.random.split(key, 3)
    rate = 0.4
    x = 1.0 + jnp.abs(jax.random.normal(k_x, (6, 7)))
    v = jax.random.normal(k_v, (6, 7))

    def objective(x):
        y, _ = jaxnn.apply(jaxnn.dropout(rate), (), (), x, key=k_drop, train=True)
        return jnp.sum(v * y), y

    dx, y = jax.grad(objective, has_aux=True)(x)
    kept = np.asarray(y) != 0
    np.testing.assert_array_equal(dx, np.where(kept, np.asarray(v) * (1 / (1 - rate)), 0.0))
    # and under jit, from the same key, the same entries
    dx_jit, _ = jax.jit(jax.grad(objective, has_aux=True))(x)
    np.testing.assert_allclose(dx_jit, dx, rtol=1e-15)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_rate_must_be_in_zero_one(bad):
    with pytest.raises(ValueError, match=r"dropout: rate \(the probability of dropping\) must"):
        jaxnn.dropout(bad)


@pytest.mark.parametrize("bad", ["0.5", True, None])
def test_rate_must_be_a_number(bad):
    with pytest.raises(TypeError, match="dropout: rate must be a float"):
        jaxnn.dropout(bad)


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match="dropout: expected a floating-point input"):
        jaxnn.apply(jaxnn.dropout(0.5), (), (), jnp.ones((2, 2), jnp.int32),
                    key=jax.random.key(0), train=True)
