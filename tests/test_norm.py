"""batch_norm, layer_norm, rms_norm: shapes, statistics, state, and the hand-derived backward."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnn
from tests.gradcases import registered, run_layer_case

_RUNNING = {"mean": jnp.array([0.3, -1.2, 2.0]), "var": jnp.array([0.5, 2.0, 1.5])}

GRADCHECK_CASES = registered("batch_norm", "layer_norm", "rms_norm")

CASES = [(name, case) for name, cases in GRADCHECK_CASES.items() for case in cases]


@pytest.mark.parametrize(("name", "case"), CASES, ids=lambda c: repr(c))
def test_norm_backward_matches_autodiff_and_finite_differences(name, case):
    run_layer_case(case)


def _random_params(key, params):
    """Scale and offset away from their initial ones and zeros, so that their role shows."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree.unflatten(treedef, [
        leaf + 0.5 * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)
    ])


# --- shapes ------------------------------------------------------------------------------------

CONFIGS = [
    *[(jaxnn.batch_norm, {"axis": a, "use_scale": s, "use_offset": s}, train)
      for a, s, train in itertools.product((-1, 1), (True, False), (True, False))],
    *[(jaxnn.layer_norm, {"use_scale": s, "use_offset": not s}, False) for s in (True, False)],
    *[(jaxnn.rms_norm, {"use_scale": s}, False) for s in (True, False)],
]


@pytest.mark.parametrize("in_shape", [(-1, 3), (2, 5, 2, 3)])
@pytest.mark.parametrize(("make", "kwargs", "train"), CONFIGS)
def test_init_shape_equals_forward_shape(make, kwargs, train, in_shape):
    layer = make(**kwargs)
    out_shape, params, state = layer.init(jax.random.key(0), in_shape)
    x = jax.random.normal(jax.random.key(1), tuple(2 if d == -1 else d for d in in_shape))
    y, new_state = jaxnn.apply(layer, params, state, x, train=train)
    assert out_shape[1:] == y.shape[1:]
    assert out_shape[0] in (-1, y.shape[0])
    features = in_shape[kwargs.get("axis", -1)]
    expected = {n for n, used in (("scale", kwargs.get("use_scale", True)),
                                  ("offset", kwargs.get("use_offset", True))) if used}
    if make is jaxnn.rms_norm:
        expected.discard("offset")
    assert set(params) == expected
    for value in params.values():
        chex.assert_shape(value, (features,))
    chex.assert_trees_all_equal_shapes(new_state, state)


# --- batch norm: statistics and state ----------------------------------------------------------


def test_batch_norm_eval_uses_the_running_statistics(key):
    layer = jaxnn.batch_norm(epsilon=1e-3)
    _, params, _ = layer.init(key, (-1, 3))
    params = {"scale": jnp.array([1.0, 2.0, 0.5]), "offset": jnp.array([0.0, 1.0, -1.0])}
    state = {"mean": jnp.array([1.0, -2.0, 4.0]), "var": jnp.array([4.0, 0.25, 9.0])}
    x = jnp.array([[3.0, -1.0, 4.0], [1.0, -3.0, 10.0]])
    y, new_state = jaxnn.apply(layer, params, state, x, train=False)
    # by hand: y = γ (x − μ_run) / sqrt(σ²_run + ε) + β
    expected = np.array([
        [1.0 * 2 / np.sqrt(4.001), 2.0 * 1 / np.sqrt(0.251) + 1, 0.5 * 0 / np.sqrt(9.001) - 1],
        [1.0 * 0 / np.sqrt(4.001), 2.0 * -1 / np.sqrt(0.251) + 1, 0.5 * 6 / np.sqrt(9.001) - 1],
    ])
    # y[1, 2] = 0.99994… − 1 cancels to −5.6e-5: its rounding is judged against the terms' size
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_equal(new_state, state)  # evaluation leaves the statistics alone


def test_batch_norm_train_normalizes_with_batch_statistics_and_updates_the_state(key):
    momentum = 0.9
    layer = jaxnn.batch_norm(momentum=momentum)
    _, params, state0 = layer.init(key, (-1, 4, 2))
    state0 = {"mean": jnp.array([0.5, -0.5]), "var": jnp.array([2.0, 3.0])}
    x = 3.0 + 2.0 * jax.random.normal(key, (6, 4, 2))
    y, state1 = jaxnn.apply(layer, params, state0, x, train=True)
    xn = np.asarray(x).reshape(-1, 2)  # N = 6·4 entries per feature
    batch_mean, batch_var = xn.mean(0), xn.var(0)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 2),
                               (xn - batch_mean) / np.sqrt(batch_var + 1e-5), rtol=1e-10)
    # running = momentum · running + (1 − momentum) · batch, with the unbiased variance
    np.testing.assert_allclose(state1["mean"], momentum * np.array([0.5, -0.5])
                               + (1 - momentum) * batch_mean, rtol=1e-12)
    np.testing.assert_allclose(state1["var"], momentum * np.array([2.0, 3.0])
                               + (1 - momentum) * xn.var(0, ddof=1), rtol=1e-12)


def test_batch_norm_running_statistics_converge_to_the_data_statistics(key):
    layer = jaxnn.batch_norm(momentum=0.8)
    _, params, state = layer.init(key, (-1, 1))
    step = jax.jit(lambda s, x: jaxnn.apply(layer, params, s, x, train=True)[1])
    for k in jax.random.split(key, 60):
        state = step(state, 5.0 + 3.0 * jax.random.normal(k, (256, 1)))
    np.testing.assert_allclose(state["mean"], [5.0], atol=0.3)
    np.testing.assert_allclose(state["var"], [9.0], rtol=0.15)


def test_batch_norm_train_backward_is_the_classic_formula(key):
    k1, k2, k3 = jax.random.split(key, 3)
    layer = jaxnn.batch_norm(dtype=jnp.float64)
    _, params, state = layer.init(k1, (-1, 3))
    params = _random_params(k1, params)
    x = jax.random.normal(k2, (8, 3))
    dy = jax.random.normal(k3, (8, 3))
    _, _, residuals = layer.forward(params, state, x, train=True)
    grads, dx = layer.backward(params, residuals, dy)
    xn, dyn, scale = np.asarray(x), np.asarray(dy), np.asarray(params["scale"])
    n = xn.shape[0]
    inv_std = 1 / np.sqrt(xn.var(0) + 1e-5)
    xhat = (xn - xn.mean(0)) * inv_std
    # dx = (1/N)·γ·inv_std·(N·dy − Σdy − x̂·Σ(dy·x̂))
    expected_dx = scale * inv_std / n * (n * dyn - dyn.sum(0) - xhat * (dyn * xhat).sum(0))
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["scale"], (dyn * xhat).sum(0), rtol=1e-10)
    np.testing.assert_allclose(grads["offset"], dyn.sum(0), rtol=1e-12)


def test_batch_norm_eval_backward_is_the_affine_map(key):
    layer = jaxnn.batch_norm(dtype=jnp.float64)
    _, params, _ = layer.init(key, (-1, 3))
    params = _random_params(key, params)
    x = jax.random.normal(key, (4, 3))
    dy = jnp.ones((4, 3))
    _, _, residuals = layer.forward(params, _RUNNING, x, train=False)
    _, dx = layer.backward(params, residuals, dy)
    expected = np.asarray(params["scale"]) / np.sqrt(np.asarray(_RUNNING["var"]) + 1e-5)
    np.testing.assert_allclose(dx, np.broadcast_to(expected, (4, 3)), rtol=1e-12)


def test_batch_norm_train_needs_more_than_one_value_per_feature():
    layer = jaxnn.batch_norm()
    _, params, state = layer.init(jax.random.key(0), (-1, 3))
    with pytest.raises(ValueError, match=r"batch_norm: training mode needs more than one value"):
        jaxnn.apply(layer, params, state, jnp.ones((1, 3)), train=True)
    jaxnn.apply(layer, params, state, jnp.ones((1, 3)), train=False)  # evaluation is fine


def test_batch_norm_bad_arguments_and_inputs_are_named():
    with pytest.raises(ValueError, match=r"batch_norm: momentum must be in \[0, 1\], got 1.5"):
        jaxnn.batch_norm(momentum=1.5)
    with pytest.raises(ValueError, match="batch_norm: epsilon must be > 0"):
        jaxnn.batch_norm(epsilon=0)
    with pytest.raises(ValueError, match="batch_norm: axis 0 is the batch axis"):
        jaxnn.batch_norm(axis=0).init(jax.random.key(0), (-1, 3))
    layer = jaxnn.batch_norm()
    _, params, state = layer.init(jax.random.key(0), (-1, 3))
    with pytest.raises(ValueError, match=r"batch_norm: expected input with 3 features.*\(2, 4\)"):
        jaxnn.apply(layer, params, state, jnp.ones((2, 4)), train=True)
    with pytest.raises(TypeError, match="batch_norm: expected a floating-point input"):
        jaxnn.apply(layer, params, state, jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="batch_norm: state must be the dict"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"batch_norm: params\['scale'\] must have shape \(3,\)"):
        jaxnn.apply(layer, {**params, "scale": jnp.ones(4)}, state, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"axis 1 of in_shape \(4, -1\) must have a known size"):
        layer.init(jax.random.key(0), (4, -1))


def test_batch_norm_keeps_half_precision_inputs_in_their_dtype(key):
    layer = jaxnn.batch_norm()
    _, params, state = layer.init(key, (-1, 2))
    x = (100.0 + jax.random.normal(key, (16, 2))).astype(jnp.bfloat16)
    y, new_state = jaxnn.apply(layer, params, state, x, train=True)
    assert y.dtype == jnp.bfloat16
    assert new_state["mean"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float32).std(0), 1.0, atol=0.05)


@settings(max_examples=4, deadline=None)
@given(batch=st.integers(2, 6), middle=st.lists(st.integers(1, 3), max_size=2),
       features=st.integers(1, 4))
def test_batch_norm_train_output_has_zero_mean_unit_variance_per_feature(batch, middle,
                                                                         features):
    shape = (batch, *middle, features)
    x = 2.0 + 5.0 * jax.random.normal(jax.random.key(batch * 7 + features), shape)
    layer = jaxnn.batch_norm(epsilon=1e-9)
    out_shape, params, state = layer.init(jax.random.key(0), (-1, *shape[1:]))
    y, _ = jaxnn.apply(layer, params, state, x, train=True)
    assert out_shape == (-1, *shape[1:])
    flat = np.asarray(y).reshape(-1, features)
    x_var = np.asarray(x).reshape(-1, features).var(0)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-7)
    np.testing.assert_allclose(flat.var(0), x_var / (x_var + 1e-9), rtol=1e-9)


# --- layer norm and RMS norm -------------------------------------------------------------------


@settings(max_examples=4, deadline=None)
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=3), features=st.integers(2, 8))
def test_layer_norm_normalizes_each_example_over_its_features(lead, features):
    shape = (*lead, features)
    x = -1.0 + 3.0 * jax.random.normal(jax.random.key(len(lead) * 10 + features), shape)
    layer = jaxnn.layer_norm(epsilon=1e-9)
    out_shape, params, _ = layer.init(jax.random.key(0), shape)
    y, _ = jaxnn.apply(layer, params, (), x)
    assert out_shape == shape == y.shape
    x_var = np.asarray(x).var(-1)
    np.testing.assert_allclose(np.asarray(y).mean(-1), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(y).var(-1), x_var / (x_var + 1e-9), rtol=1e-9)


def test_layer_norm_known_values_with_scale_and_offset():
    layer = jaxnn.layer_norm(epsilon=1e-5)
    params = {"scale": jnp.array([1.0, 2.0, 3.0]), "offset": jnp.array([0.0, 0.5, -0.5])}
    y, _ = jaxnn.apply(layer, params, (), jnp.array([[1.0, 2.0, 3.0]]))
    s = 1 / np.sqrt(2 / 3 + 1e-5)  # the mean is 2, the biased variance 2/3
    np.testing.assert_allclose(y, [[-1.0 * s, 0.5, 3.0 * s - 0.5]], rtol=1e-12)


def test_rms_norm_known_values():
    layer = jaxnn.rms_norm(epsilon=1e-6)
    params = {"scale": jnp.array([1.0, 2.0])}
    y, _ = jaxnn.apply(layer, params, (), jnp.array([[3.0, 4.0], [0.0, -2.0]]))
    r = 1 / np.sqrt(np.array([[12.5], [2.0]]) + 1e-6)  # mean of squares per row
    np.testing.assert_allclose(y, np.array([[3.0, 8.0], [0.0, -4.0]]) * r, rtol=1e-12)


@pytest.mark.parametrize("make", [jaxnn.layer_norm, jaxnn.rms_norm])
def test_wrong_feature_size_is_named(make):
    layer = make()
    _, params, _ = layer.init(jax.random.key(0), (-1, 4))
    with pytest.raises(ValueError, match=rf"{layer.name}: expected input with 4 features"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=f"{layer.name}: epsilon must be > 0"):
        make(epsilon=-1.0)


# --- training with state and randomness --------------------------------------------------------


def test_stateful_training_with_batch_norm_and_dropout_lowers_the_loss_and_moves_the_state(key):
    k_data, k_init, k_steps = jax.random.split(key, 3)
    x = 4.0 + 3.0 * jax.random.normal(k_data, (128, 4))  # un-normalized inputs
    y = (x[:, :1] - x[:, 1:2] > 0).astype(jnp.float64)
    net = jaxnn.serial(jaxnn.dense(16, use_bias=False), jaxnn.batch_norm(momentum=0.9),
                       jaxnn.relu(), jaxnn.dropout(0.1), jaxnn.dense(1), jaxnn.sigmoid())
    _, params, state0 = net.init(k_init, (-1, 4))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    state, losses = state0, []
    for k in jax.random.split(k_steps, 100):
        params, state, opt_state, loss = step(params, state, opt_state, x, y, k)
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    # the running statistics left their initial zeros and ones
    bn_state = state[1]
    assert np.all(np.abs(bn_state["mean"] - state0[1]["mean"]) > 1e-3)
    assert np.all(np.abs(bn_state["var"] - state0[1]["var"]) > 1e-3)
    assert np.all(bn_state["var"] > 0)
    # evaluation runs on the running statistics, without dropout, deterministically
    p1 = jaxnn.predict(net, params, x, state=state)
    p2 = jaxnn.predict(net, params, x, state=state)
    np.testing.assert_array_equal(p1, p2)
    assert float(jnp.mean((p1 > 0.5) == (y > 0.5))) > 0.8


def test_check_model_passes_a_network_with_batch_norm_in_train_mode(key):
    net = jaxnn.serial(jaxnn.dense(3, use_bias=False), jaxnn.batch_norm(), jaxnn.tanh())
    _, params, state = net.init(key, (-1, 3))
    x = jax.random.normal(key, (6, 3))
    y = jax.random.normal(jax.random.key(1), (6, 3))
    report = jaxnn.gradcheck.check_model(net, jaxnn.mean_squared_error, params, x, y,
                                         state=state, train=True)
    assert report.passed, report.table()
    rows = {(c.layer, c.parameter) for c in report.comparisons}
    assert {("serial/1:batch_norm", "scale"), ("serial/1:batch_norm", "offset"),
            ("serial/1:batch_norm (alone)", "input")} <= rows
