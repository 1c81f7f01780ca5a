"""Mixed precision: the policy's dtypes reach every layer, loss scaling rescues float16."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn import precision
from jaxnn.precision import Policy


def _net():
    return jaxnn.serial(jaxnn.dense(16), jaxnn.tanh(), jaxnn.dense(16), jaxnn.relu(),
                        jaxnn.dense(1))


def _problem(key, m=64, n_in=4):
    net = _net()
    k1, k2 = jax.random.split(key)
    _, params, _ = net.init(k1, (-1, n_in))
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    x = jax.random.normal(k2, (m, n_in), jnp.float32)
    y = jnp.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    return net, params, x, y


def _relative_error(a, b):
    a = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(b)])
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _grads(net, loss, policy, params, x, y, loss_scale=None):
    """``(value, grads, finite)`` with the scale read from a loss_scaling optimizer state."""
    loss_scale = precision.static_loss_scale(1.0) if loss_scale is None else loss_scale
    opt_state = precision.loss_scaling(optax.sgd(0.1), loss_scale).init(params)
    fn = jax.jit(precision.value_and_grad(net, loss, policy))
    (value, _), grads = fn(params, (), x, y, None, opt_state)
    finite = all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    return value, grads, finite


def test_every_leaf_computes_in_the_compute_dtype_and_gradients_arrive_in_float32(key):
    seen = []
    dense = jaxnn.dense(3)

    def forward(params, state, x, *, key=None, train=False):
        seen.append(("forward x", x.dtype))
        seen.append(("forward W", params["W"].dtype))
        return dense.forward(params, state, x, key=key, train=train)

    def backward(params, residuals, dy):
        seen.append(("backward dy", dy.dtype))
        return dense.backward(params, residuals, dy)

    spy = dense._replace(forward=forward, backward=backward)
    net = precision.apply_policy(jaxnn.serial(spy, jaxnn.tanh()), Policy())
    _, params, _ = net.init(key, (-1, 2))
    x = jnp.ones((4, 2), jnp.float32)

    def objective(params, x):
        y, _ = jaxnn.apply(net, params, (), x)
        assert y.dtype == jnp.bfloat16
        return jnp.sum(y.astype(jnp.float32))

    grads, dx = jax.grad(objective, argnums=(0, 1))(params, x)
    bf16 = jnp.dtype(jnp.bfloat16)
    assert set(seen) == {("forward x", bf16), ("forward W", bf16), ("backward dy", bf16)}
    assert grads[0]["W"].dtype == jnp.float32
    assert dx.dtype == jnp.float32


def test_output_dtype_is_what_each_layer_hands_on(key):
    net = precision.apply_policy(_net(), Policy(compute_dtype=jnp.bfloat16,
                                                output_dtype=jnp.float32))
    _, params, x, _ = _problem(key)
    y, _ = jaxnn.apply(net, params, (), x)
    assert y.dtype == jnp.float32


def test_bfloat16_gradients_are_close_to_float32_and_training_lowers_the_loss(key):
    net, params, x, y = _problem(key)
    mse = jaxnn.mean_squared_error
    _, ref, _ = _grads(net, mse, Policy(compute_dtype=jnp.float32), params, x, y)
    _value, grads, finite = _grads(net, mse, Policy(compute_dtype=jnp.bfloat16), params, x, y)
    assert bool(finite)
    chex.assert_trees_all_equal_dtypes(grads, params)
    assert _relative_error(grads, ref) < 0.05  # bfloat16 keeps 8 bits of mantissa

    optimizer = precision.loss_scaling(optax.adam(1e-2), precision.static_loss_scale(1.0))
    step = jaxnn.make_train_step(net, mse, optimizer, gradients=precision.value_and_grad(
        net, mse, Policy(compute_dtype=jnp.bfloat16)))
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(60):
        params, _, opt_state, loss = step(params, (), opt_state, x, y)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0]
    assert params[0]["W"].dtype == jnp.float32


def _tiny_loss(weight=1e-7):
    """A loss whose derivative (~1e-9 per entry) is below float16's smallest subnormal."""
    mse = jaxnn.mean_squared_error
    return jaxnn.Loss("tiny_mse", lambda a, t: weight * mse.value(a, t),
                      lambda a, t: weight * mse.grad(a, t))


def test_float16_gradients_flush_to_zero_without_loss_scaling_and_survive_with_it(key):
    net, params, x, y = _problem(key)
    loss = _tiny_loss()
    _, ref, _ = _grads(net, loss, Policy(compute_dtype=jnp.float32), params, x, y)
    assert 0 < float(np.max(np.abs(ref[0]["W"]))) < 6e-8  # tiny, but not zero in float32
    half = Policy(compute_dtype=jnp.float16)
    _, unscaled, _ = _grads(net, loss, half, params, x, y)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(unscaled))  # all flushed
    _, scaled, finite = _grads(net, loss, half, params, x, y,
                               precision.static_loss_scale(2.0**20))
    assert bool(finite)
    assert _relative_error(scaled, ref) < 0.01


def _float16_step(net, loss, inner, scale):
    optimizer = precision.loss_scaling(inner, scale)
    gradients = precision.value_and_grad(net, loss, Policy(compute_dtype=jnp.float16))
    return optimizer, jaxnn.make_train_step(net, loss, optimizer, gradients=gradients)


def test_a_float16_overflow_skips_the_step_and_halves_a_dynamic_scale(key):
    net, params, x, y = _problem(key)
    # dJ/dA · 2³⁰ overflows float16's 65504
    optimizer, step = _float16_step(net, jaxnn.mean_squared_error, optax.adam(1e-2),
                                    precision.dynamic_loss_scale(2.0**30))
    opt_state = optimizer.init(params)
    new_params, _, new_opt_state, _ = step(params, (), opt_state, x, y)
    chex.assert_trees_all_equal(new_params, params)
    chex.assert_trees_all_equal(new_opt_state.guarded.inner_state,
                                opt_state.guarded.inner_state)
    scale = new_opt_state.loss_scale
    assert float(scale.scale) == 2.0**29
    assert int(scale.good_steps) == 0
    # the scale comes down until steps are finite, then parameters move
    opt_state = new_opt_state
    for _ in range(20):
        new_params, _, opt_state, _ = step(new_params, (), opt_state, x, y)
    scale = opt_state.loss_scale
    assert int(scale.good_steps) > 0
    assert float(scale.scale) < 2.0**29
    assert not np.allclose(new_params[0]["W"], params[0]["W"])


def test_a_stateful_model_with_dropout_and_batch_norm_trains_in_float16(key):
    net = jaxnn.serial(jaxnn.dense(16), jaxnn.batch_norm(), jaxnn.relu(), jaxnn.dropout(0.1),
                       jaxnn.dense(1))
    _, params, state = net.init(key, (-1, 4))
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    state = jax.tree.map(lambda a: a.astype(jnp.float32), state)
    _, _, x, y = _problem(key)
    optimizer, step = _float16_step(net, jaxnn.mean_squared_error, optax.adam(1e-2),
                                    precision.dynamic_loss_scale(2.0**10))
    opt_state = optimizer.init(params)
    first = None
    for step_key in jax.random.split(jax.random.key(1), 60):
        params, new_state, opt_state, loss = step(params, state, opt_state, x, y, step_key)
        first = float(loss) if first is None else first
        chex.assert_trees_all_equal_dtypes(new_state, state)
        state = new_state
    assert float(loss) < 0.5 * first
    assert not np.allclose(state[1]["mean"], 0.0)  # the running statistics moved
    assert params[0]["W"].dtype == jnp.float32


def test_a_dynamic_scale_grows_after_its_interval_of_finite_steps():
    scale = precision.dynamic_loss_scale(4.0, growth_interval=2, factor=2.0)
    scale = scale.adjust(jnp.asarray(True))
    assert (float(scale.scale), int(scale.good_steps)) == (4.0, 1)
    scale = scale.adjust(jnp.asarray(True))
    assert (float(scale.scale), int(scale.good_steps)) == (8.0, 0)
    scale = scale.adjust(jnp.asarray(False))
    assert (float(scale.scale), int(scale.good_steps)) == (4.0, 0)
    static = precision.static_loss_scale(8.0)
    assert float(static.adjust(jnp.asarray(False)).scale) == 8.0


def test_a_float64_policy_with_a_static_scale_equals_the_plain_step(key):
    net, params, x, y = _problem(key)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x, y = x.astype(jnp.float64), y.astype(jnp.float64)
    inner = optax.chain(jaxnn.l2_regularization(net, 0.01), optax.sgd(0.1))
    optimizer = precision.loss_scaling(inner, precision.static_loss_scale(1024.0))
    policy = Policy(param_dtype=jnp.float64, compute_dtype=jnp.float64)
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer,
                                 gradients=precision.value_and_grad(net,
                                                                    jaxnn.mean_squared_error,
                                                                    policy))
    got, _, _, loss = step(params, (), optimizer.init(params), x, y)
    plain = jaxnn.make_train_step(net, jaxnn.mean_squared_error, inner)
    expected, _, _, expected_loss = plain(params, (), inner.init(params), x, y)
    chex.assert_trees_all_close(got, expected, rtol=1e-12)
    chex.assert_trees_all_close(loss, expected_loss, rtol=1e-12)


def test_a_float64_policy_passes_the_gradient_check(key):
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), jaxnn.dense(2), jaxnn.sigmoid())
    wrapped = precision.apply_policy(net, Policy(param_dtype=jnp.float64,
                                                 compute_dtype=jnp.float64))
    k1, k2, k3 = jax.random.split(key, 3)
    _, params, _ = wrapped.init(k1, (-1, 2))
    x = jax.random.normal(k2, (4, 2), jnp.float64)
    y = (jax.random.uniform(k3, (4, 2)) > 0.5).astype(jnp.float64)
    report = jaxnn.gradcheck.check_model(wrapped, jaxnn.binary_cross_entropy, params, x, y)
    report.raise_if_failed()
    assert len(report.comparisons) > 0


def test_bad_policies_and_scales_are_clear_errors():
    with pytest.raises(TypeError, match=r"policy must be a jaxnn.Policy, got dict"):
        precision.apply_policy(_net(), {"compute_dtype": jnp.float16})
    with pytest.raises(ValueError, match="scale must be positive"):
        precision.static_loss_scale(0.0)
    with pytest.raises(ValueError, match="factor must be > 1"):
        precision.dynamic_loss_scale(factor=1.0)
    with pytest.raises(TypeError, match=r"loss_scale must be a jaxnn.precision.LossScale, got "
                                        "float"):
        precision.loss_scaling(optax.sgd(0.1), 1024.0)
