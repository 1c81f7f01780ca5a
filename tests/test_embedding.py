"""embedding: lookup, the scatter-add backward, no gradient for ids, and range checks."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from tests.gradcases import registered, run_layer_case

# check_layer draws ids in [0, 4): every table has at least 4 rows; the extra rows are never
# looked up and must get an exactly zero gradient
GRADCHECK_CASES = registered("embedding")


@pytest.mark.parametrize("case", GRADCHECK_CASES["embedding"], ids=repr)
def test_embedding_backward_matches_autodiff_and_finite_differences(case):
    report = run_layer_case(case)
    # integer ids take no gradient: only the table is compared
    assert {c.parameter for c in report.comparisons} == {"embedding"}


@pytest.mark.parametrize(("in_shape", "features"), list(itertools.product(
    [(-1,), (3,), (-1, 5), (2, 3, 4)], [1, 6])))
def test_init_shape_equals_forward_shape(in_shape, features):
    layer = jaxnn.embedding(10, features)
    out_shape, params, state = layer.init(jax.random.key(0), in_shape)
    ids = jnp.arange(np.prod([2 if d == -1 else d for d in in_shape])).reshape(
        tuple(2 if d == -1 else d for d in in_shape)) % 10
    y, _ = jaxnn.apply(layer, params, state, ids)
    assert out_shape[1:] == y.shape[1:]
    assert out_shape[0] in (-1, y.shape[0])
    assert y.shape == (*ids.shape, features)
    chex.assert_shape(params["embedding"], (10, features))


def test_forward_looks_up_rows(key):
    layer = jaxnn.embedding(6, 3)
    _, params, _ = layer.init(key, (-1, 4))
    ids = jnp.array([[0, 5, 2, 2], [1, 1, 3, 4]])
    y, _ = jaxnn.apply(layer, params, (), ids)
    np.testing.assert_array_equal(y, np.asarray(params["embedding"])[np.asarray(ids)])


def test_backward_is_a_scatter_add_of_dy_into_the_table(key):
    layer = jaxnn.embedding(5, 2, dtype=jnp.float64)
    _, params, _ = layer.init(key, (-1,))
    ids = jnp.array([1, 3, 1, 1])
    dy = jnp.array([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0], [100.0, 200.0]])
    _, _, residuals = layer.forward(params, (), ids)
    grads, dx = layer.backward(params, residuals, dy)
    assert dx is None
    np.testing.assert_array_equal(grads["embedding"], [[0, 0], [111, 222], [0, 0], [3, 4],
                                                       [0, 0]])
    # the same through jax.grad of apply, which reaches the hand-derived backward
    g = jax.grad(lambda p: jnp.sum(dy * jaxnn.apply(layer, p, (), ids)[0]))(params)
    chex.assert_trees_all_equal(g, grads)


def test_ids_get_no_gradient(key):
    layer = jaxnn.embedding(5, 2)
    _, params, _ = layer.init(key, (-1,))
    ids = jnp.array([0, 4])
    _, vjp = jax.vjp(lambda p, i: jaxnn.apply(layer, p, (), i)[0], params, ids)
    _, d_ids = vjp(jnp.ones((2, 2), jnp.float32))
    assert d_ids.dtype == jax.dtypes.float0  # JAX's "no gradient" for integer inputs


@pytest.mark.parametrize("bad", [[0, 5], [-1, 2]])
def test_out_of_range_ids_are_an_error_when_concrete(bad, key):
    layer = jaxnn.embedding(5, 2)
    _, params, _ = layer.init(key, (-1,))
    with pytest.raises(ValueError, match=r"embedding: ids must be in \[0, 5\), got ids from"):
        jaxnn.apply(layer, params, (), jnp.array(bad))


def test_out_of_range_ids_under_jit_give_nan_rows_and_no_gradient(key):
    layer = jaxnn.embedding(5, 2, dtype=jnp.float64)
    _, params, _ = layer.init(key, (-1,))
    ids = jnp.array([1, 5, -1, 3])

    def objective(p, ids):
        y, _ = jaxnn.apply(layer, p, (), ids)
        return jnp.sum(jnp.where(jnp.isnan(y), 0.0, y)), y

    grads, y = jax.jit(jax.grad(objective, has_aux=True))(params, ids)
    y = np.asarray(y)
    assert np.all(np.isnan(y[1]))
    assert np.all(np.isnan(y[2]))
    np.testing.assert_array_equal(y[[0, 3]], np.asarray(params["embedding"])[[1, 3]])
    expected = np.zeros((5, 2))
    expected[[1, 3]] = 1.0
    np.testing.assert_array_equal(grads["embedding"], expected)


def test_float_ids_are_rejected(key):
    layer = jaxnn.embedding(5, 2)
    _, params, _ = layer.init(key, (-1,))
    with pytest.raises(TypeError, match="embedding: expected integer ids, got dtype float"):
        jaxnn.apply(layer, params, (), jnp.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="embedding: expected integer ids, got dtype bool"):
        jaxnn.apply(layer, params, (), jnp.array([True, False]))


@pytest.mark.parametrize(("num", "features"), [(0, 3), (3, 0), (2.0, 3), (3, True)])
def test_sizes_must_be_positive_ints(num, features):
    with pytest.raises(ValueError, match=r"embedding: .* must be a positive int"):
        jaxnn.embedding(num, features)


def test_the_table_is_not_decayed_by_l2(key):
    net = jaxnn.serial(jaxnn.embedding(8, 4), jaxnn.dense(2))
    _, params, _ = net.init(key, (-1,))
    mask = jaxnn.weight_mask(net, params)
    assert mask[0] == {"embedding": False}
    assert mask[1]["W"]
    penalty = jaxnn.l2_penalty(net, params, 1.0)
    np.testing.assert_allclose(penalty, 0.5 * np.sum(np.square(params[1]["W"])), rtol=1e-6)


def test_default_initialization_has_unit_variance():
    _, params, _ = jaxnn.embedding(1000, 200).init(jax.random.key(0), (-1,))
    table = np.asarray(params["embedding"])
    assert abs(table.std() - 1.0) < 0.01
    assert abs(table.mean()) < 0.01


def test_an_embedding_network_learns_per_id_targets(key):
    k_init, k_y = jax.random.split(key)
    ids = jnp.arange(32) % 8
    targets = jax.random.normal(k_y, (8, 1))[ids]  # a target per id
    net = jaxnn.serial(jaxnn.embedding(8, 4), jaxnn.dense(1))
    _, params, _ = net.init(k_init, (-1,))
    optimizer = optax.adam(0.05)
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    params, _, _, losses = jaxnn.run_steps(step, params, (), optimizer.init(params), ids,
                                           targets, 200)
    assert float(losses[-1]) < 0.01 * float(losses[0])
