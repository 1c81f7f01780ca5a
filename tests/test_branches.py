"""parallel, concatenate, residual: tuple-valued layers and skip connections, forward and back."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from jaxnn import gradcheck
from tests.gradcases import registered, run_layer_case


def _two_branches():
    return jaxnn.serial(jaxnn.parallel(jaxnn.dense(2), jaxnn.serial(jaxnn.dense(3), jaxnn.tanh())),
                        jaxnn.concatenate())


GRADCHECK_CASES = registered("parallel", "concatenate", "residual")

CASES = [(name, case) for name, cases in GRADCHECK_CASES.items() for case in cases]


@pytest.mark.parametrize(("name", "case"), CASES, ids=lambda c: repr(c))
def test_branches_backward_matches_autodiff_and_finite_differences(name, case):
    run_layer_case(case)


# --- shapes ------------------------------------------------------------------------------------

NETWORKS = {
    "parallel+concatenate": _two_branches,
    "parallel": lambda: jaxnn.parallel(jaxnn.dense(2), jaxnn.tanh()),
    "residual": lambda: jaxnn.residual(jaxnn.serial(jaxnn.dense(5), jaxnn.tanh(),
                                                    jaxnn.dense(3))),
    "residual(batch_norm)": lambda: jaxnn.residual(jaxnn.batch_norm()),
}


@pytest.mark.parametrize(("network", "in_shape", "train"), list(itertools.product(
    NETWORKS, [(-1, 3), (4, 3), (-1, 2, 3)], [False, True])))
def test_init_shape_equals_forward_shape(network, in_shape, train):
    net = NETWORKS[network]()
    out_shape, params, state = net.init(jax.random.key(0), in_shape)
    x = jax.random.normal(jax.random.key(1), tuple(2 if d == -1 else d for d in in_shape))
    y, new_state = jaxnn.apply(net, params, state, x, train=train)
    out_shapes = out_shape if isinstance(y, tuple) else (out_shape,)
    for expected, leaf in zip(out_shapes, jax.tree.leaves(y), strict=True):
        assert expected[1:] == leaf.shape[1:]
        assert expected[0] in (-1, leaf.shape[0])
    chex.assert_trees_all_equal_shapes(new_state, state)


def test_concatenate_init_output_shape():
    out_shape, params, state = jaxnn.concatenate().init(None, ((-1, 3), (-1, 2)))
    assert (out_shape, params, state) == ((-1, 5), (), ())
    assert jaxnn.concatenate(axis=0).init(None, ((4, 3), (-1, 3)))[0] == (-1, 3)
    assert jaxnn.concatenate(axis=1).init(None, ((2, 3, 4), (2, 1, 4)))[0] == (2, 4, 4)


# --- parallel ----------------------------------------------------------------------------------


def test_parallel_forward_is_each_branch_and_backward_sums_the_input_gradients(key):
    branches = [jaxnn.dense(2, dtype=jnp.float64), jaxnn.tanh(), jaxnn.dense(4, dtype=jnp.float64)]
    net = jaxnn.parallel(*branches)
    out_shape, params, state = net.init(key, (-1, 3))
    assert out_shape == ((-1, 2), (-1, 3), (-1, 4))
    assert len(params) == 3
    x = jax.random.normal(key, (5, 3))
    ys, _, residuals = net.forward(params, state, x)
    dys = tuple(jax.random.normal(k, y.shape) for k, y in zip(jax.random.split(key, 3), ys))
    grads, dx = net.backward(params, residuals, dys)
    expected_dx = 0
    for i, branch in enumerate(branches):
        y_i, _, r_i = branch.forward(params[i], (), x)
        chex.assert_trees_all_close(ys[i], y_i)
        g_i, dx_i = branch.backward(params[i], r_i, dys[i])
        chex.assert_trees_all_close(grads[i], g_i)
        expected_dx = expected_dx + dx_i
    chex.assert_trees_all_close(dx, expected_dx, rtol=1e-12)


def test_parallel_gives_each_branch_its_own_key(key):
    net = jaxnn.parallel(jaxnn.dropout(0.5), jaxnn.dropout(0.5))
    (a, b), _ = jaxnn.apply(net, ((), ()), (), jnp.ones((20, 20)), key=key, train=True)
    assert np.mean(np.asarray(a) != np.asarray(b)) > 0.3


def test_parallel_carries_the_state_of_each_branch(key):
    net = jaxnn.parallel(jaxnn.batch_norm(momentum=0.5, dtype=jnp.float64), jaxnn.dense(2))
    _, params, state = net.init(key, (-1, 3))
    x = 2.0 + jax.random.normal(key, (8, 3))
    _, new_state = jaxnn.apply(net, params, state, x, train=True)
    np.testing.assert_allclose(new_state[0]["mean"], 0.5 * np.asarray(x).mean(0), rtol=1e-12)
    assert new_state[1] == ()


def test_parallel_and_residual_reject_non_layers_with_a_hint():
    with pytest.raises(TypeError, match=r"parallel: argument 1 .* forget the parentheses"):
        jaxnn.parallel(jaxnn.dense(2), jaxnn.relu)
    with pytest.raises(ValueError, match="parallel: needs at least one layer"):
        jaxnn.parallel()
    with pytest.raises(TypeError, match=r"residual: argument 0 .* not a jaxnn.Layer"):
        jaxnn.residual(jaxnn.dense)


def test_parallel_backward_wants_one_cotangent_per_branch(key):
    net = jaxnn.parallel(jaxnn.tanh(), jaxnn.tanh())
    _, _, residuals = net.forward(((), ()), (), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="parallel: dy must be a tuple of 2 entries"):
        net.backward(((), ()), residuals, jnp.ones((2, 2)))


# --- concatenate -------------------------------------------------------------------------------


def test_concatenate_forward_joins_and_backward_splits(key):
    k1, k2, k3 = jax.random.split(key, 3)
    a, b = jax.random.normal(k1, (3, 2, 1)), jax.random.normal(k2, (3, 2, 4))
    layer = jaxnn.concatenate()
    y, _, residuals = layer.forward((), (), (a, b))
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=-1))
    dy = jax.random.normal(k3, (3, 2, 5))
    _, (da, db) = layer.backward((), residuals, dy)
    np.testing.assert_array_equal(da, dy[..., :1])
    np.testing.assert_array_equal(db, dy[..., 1:])


def test_concatenate_backward_is_the_same_under_jit_vmap_and_scan(key):
    a, b = jax.random.normal(key, (4, 3)), jnp.ones((4, 2))
    v = jax.random.normal(jax.random.key(1), (4, 5))

    def objective(a, b):
        return jnp.sum(v * jaxnn.concatenate()((a, b)))

    eager = jax.grad(objective, argnums=(0, 1))(a, b)
    chex.assert_trees_all_equal(jax.jit(jax.grad(objective, argnums=(0, 1)))(a, b), eager)
    per_row = jax.vmap(jax.grad(lambda a, b, v: jnp.sum(v * jaxnn.concatenate()((a, b))),
                                argnums=(0, 1)))(a, b, v)
    chex.assert_trees_all_equal(per_row, eager)

    def scanned(a):
        return jax.lax.scan(lambda c, _: (c, objective(c, b)), a, None, length=2)[1].sum()

    np.testing.assert_allclose(jax.jit(jax.grad(scanned))(a), 2 * eager[0], rtol=1e-15)


def test_concatenate_errors_name_the_layer_and_the_shapes():
    layer = jaxnn.concatenate()
    with pytest.raises(ValueError, match=r"concatenate: the inputs must agree on every axis but "
                                         r"-1, got shapes \[\(2, 3\), \(4, 3\)\]"):
        layer.init(None, ((2, 3), (4, 3)))
    with pytest.raises(ValueError, match="concatenate: the inputs must have the same rank"):
        jaxnn.apply(layer, (), (), (jnp.ones((2, 3)), jnp.ones((2, 3, 1))))
    with pytest.raises(TypeError, match="concatenate: expects a non-empty tuple of arrays"):
        jaxnn.apply(layer, (), (), jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="concatenate: init expects a tuple of input shapes"):
        layer.init(None, (2, 3))
    with pytest.raises(TypeError, match="concatenate: the inputs must share one dtype"):
        jaxnn.apply(layer, (), (), (jnp.ones((2, 3)), jnp.ones((2, 3), jnp.float32)))
    with pytest.raises(ValueError, match="concatenate: axis 2 is out of range"):
        jaxnn.concatenate(axis=2).init(None, ((2, 3), (2, 3)))


# --- residual ----------------------------------------------------------------------------------


def test_residual_forward_adds_the_input_and_backward_adds_dy(key):
    inner = jaxnn.serial(jaxnn.dense(4, dtype=jnp.float64), jaxnn.tanh(),
                         jaxnn.dense(3, dtype=jnp.float64))
    block = jaxnn.residual(inner)
    _, params, state = block.init(key, (-1, 3))
    assert len(params) == 1
    assert state == ()
    x = jax.random.normal(key, (5, 3))
    dy = jax.random.normal(jax.random.key(1), (5, 3))
    y, new_state, residuals = block.forward(params, state, x)
    assert new_state == ()
    fx, _, r = inner.forward(params[0], (), x)
    np.testing.assert_allclose(y, x + fx, rtol=1e-15)
    grads, dx = block.backward(params, residuals, dy)
    g_inner, dx_inner = inner.backward(params[0], r, dy)
    chex.assert_trees_all_close(grads, (g_inner,))
    np.testing.assert_allclose(dx, dy + dx_inner, rtol=1e-15)


def test_residual_of_a_shape_changing_layer_is_an_error_naming_it():
    block = jaxnn.residual(jaxnn.serial(jaxnn.dense(4), jaxnn.relu()))
    with pytest.raises(ValueError, match=r"residual: x \+ f\(x\) needs f to keep the shape, but "
                                         r"serial\(dense, relu\) maps \(-1, 3\) to \(-1, 4\)"):
        block.init(jax.random.key(0), (-1, 3))
    # params made for another shape are caught at trace time too
    params = ({"W": jnp.ones((3, 4)), "b": jnp.zeros(4)},)
    with pytest.raises(ValueError, match=r"residual: .* maps \(2, 3\) to \(2, 4\)"):
        jax.jit(lambda p, x: jaxnn.apply(jaxnn.residual(jaxnn.dense(4)), p, (), x))(
            params, jnp.ones((2, 3)))


def test_residual_rejects_a_tuple_input():
    with pytest.raises(TypeError, match="residual: expects a single array input"):
        jaxnn.residual(jaxnn.concatenate()).init(None, ((2, 3), (2, 3)))


# --- the walk over leaves and the model check --------------------------------------------------


def test_map_leaves_walks_through_parallel_and_residual():
    net = jaxnn.serial(jaxnn.parallel(jaxnn.dense(2), jaxnn.tanh()), jaxnn.concatenate(),
                       jaxnn.residual(jaxnn.serial(jaxnn.dense(3), jaxnn.relu())))
    seen = []
    rebuilt = jaxnn.map_leaves(lambda leaf, path: seen.append(path) or leaf, net)
    assert seen == ["serial/0:parallel/0:dense", "serial/0:parallel/1:tanh",
                    "serial/1:concatenate", "serial/2:residual/0:serial/0:dense",
                    "serial/2:residual/0:serial/1:relu"]
    assert repr(rebuilt) == repr(net) == (
        "serial(parallel(dense, tanh), concatenate, residual(serial(dense, relu)))")


def _network_with_a_residual(inner_activation):
    return jaxnn.serial(
        jaxnn.dense(3),
        jaxnn.residual(jaxnn.serial(jaxnn.dense(3), inner_activation)),
        jaxnn.parallel(jaxnn.dense(2), jaxnn.identity()), jaxnn.concatenate(),
    )


def test_check_model_passes_a_network_with_branches_and_names_their_parameters(key):
    net = _network_with_a_residual(jaxnn.tanh())
    _, params, _ = net.init(key, (-1, 3))
    x = jax.random.normal(key, (6, 3))
    y = jax.random.normal(jax.random.key(1), (6, 5))
    report = gradcheck.check_model(net, jaxnn.mean_squared_error, params, x, y)
    assert report.passed, report.table()
    rows = {(c.layer, c.parameter) for c in report.comparisons}
    assert {("serial/1:residual/0:serial/0:dense", "W"), ("serial/2:parallel/0:dense", "b"),
            ("serial/3:concatenate (alone)", "input[0]"),
            ("serial/3:concatenate (alone)", "input[1]")} <= rows


def test_check_model_names_a_wrong_layer_inside_a_residual(key):
    bad_tanh = jaxnn.tanh()._replace(backward=lambda p, a, dy: ((), dy * (1 - a)))
    net = _network_with_a_residual(bad_tanh)
    _, params, _ = net.init(key, (-1, 3))
    x = jax.random.normal(key, (6, 3))
    y = jax.random.normal(jax.random.key(1), (6, 5))
    report = gradcheck.check_model(net, jaxnn.mean_squared_error, params, x, y)
    assert not report.passed
    alone = [name for name in report.failing_layers if name.endswith("(alone)")]
    assert alone == ["serial/1:residual/0:serial/1:tanh (alone)"]


def test_gradient_check_of_a_tuple_output_covers_every_entry():
    # the second branch's backward is wrong: a cotangent on the first output alone would miss it
    bad_tanh = jaxnn.tanh()._replace(backward=lambda p, a, dy: ((), dy * (1 - a)))
    report = gradcheck.check_layer(jaxnn.parallel(jaxnn.identity(), bad_tanh), (4, 3))
    assert report.failing_layers == ["parallel"]
    assert {c.parameter for c in report.failures} == {"input"}


def test_gradient_check_of_a_tuple_input_names_the_wrong_entry():
    base = jaxnn.concatenate()

    def backward(params, sizes, dy):
        _, (da, db) = base.backward(params, sizes, dy)
        return (), (da, 2 * db)

    report = gradcheck.check_layer(base._replace(backward=backward), ((3, 2), (3, 4)))
    assert {c.parameter for c in report.failures} == {"input[1]"}
    assert {c.parameter for c in report.comparisons} == {"input[0]", "input[1]"}
