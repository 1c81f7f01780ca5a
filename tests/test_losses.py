"""Losses: known values, hand-derived derivatives in float64, stable fused forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from tests.gradcases import registered, run_loss_case

_rng = np.random.default_rng(0)


def _probs(shape):
    return jnp.asarray(_rng.uniform(0.05, 0.95, shape))


def _labels(shape):
    return jnp.asarray((_rng.uniform(size=shape) > 0.5).astype(np.float64))


def _normal(shape):
    return jnp.asarray(_rng.normal(size=shape))


GRADCHECK_CASES = registered(
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "softmax_cross_entropy",
    "mean_squared_error",
)


@pytest.mark.parametrize(
    "case", [c for cases in GRADCHECK_CASES.values() for c in cases], ids=repr
)
def test_hand_derived_loss_gradient_matches_autodiff_and_finite_differences(case):
    run_loss_case(case)


def test_binary_cross_entropy_known_value():
    value = jaxnn.binary_cross_entropy(jnp.array([0.8, 0.9, 0.4]), jnp.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(value, 0.414931599615, rtol=1e-11)


def test_binary_cross_entropy_derivative_is_the_seeds_formula():
    a = jnp.array([[0.2], [0.7], [0.9]])
    y = jnp.array([[0.0], [1.0], [1.0]])
    m = 3
    expected = -(y / a - (1 - y) / (1 - a)) / m  # dJ/dA[L]
    chex.assert_trees_all_close(jax.grad(jaxnn.binary_cross_entropy)(a, y), expected, rtol=1e-12)


def test_fused_derivative_is_a_minus_y_over_m():
    z = jnp.array([[-2.0], [0.5], [3.0], [40.0]])
    y = jnp.array([[0.0], [1.0], [1.0], [0.0]])
    dz = jax.grad(jaxnn.binary_cross_entropy_with_logits)(z, y)
    chex.assert_trees_all_close(dz, (jax.nn.sigmoid(z) - y) / 4, rtol=1e-12)


def test_softmax_cross_entropy_derivative_is_p_minus_onehot_over_m():
    z = jnp.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    labels = jnp.array([1, 0])
    dz = jax.grad(jaxnn.softmax_cross_entropy)(z, labels)
    expected = (jax.nn.softmax(z) - jax.nn.one_hot(labels, 3, dtype=z.dtype)) / 2
    chex.assert_trees_all_close(dz, expected, rtol=1e-12)


def test_integer_labels_and_one_hot_give_the_same_loss():
    z = _normal((5, 4))
    labels = jnp.array([0, 3, 1, 1, 2])
    onehot = jax.nn.one_hot(labels, 4, dtype=jnp.float64)
    np.testing.assert_allclose(jaxnn.softmax_cross_entropy(z, labels),
                               jaxnn.softmax_cross_entropy(z, onehot), rtol=1e-14)


def test_fused_and_unfused_forms_agree_away_from_saturation():
    z = _normal((6, 1))
    y = _labels((6, 1))
    np.testing.assert_allclose(jaxnn.binary_cross_entropy(jax.nn.sigmoid(z), y),
                               jaxnn.binary_cross_entropy_with_logits(z, y), rtol=1e-12)


def test_fuse_replaces_final_sigmoid_and_keeps_params_aligned():
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.relu(), jaxnn.dense(1), jaxnn.sigmoid())
    fused_net, fused_loss = jaxnn.fuse(net, jaxnn.binary_cross_entropy)
    assert fused_loss is jaxnn.binary_cross_entropy_with_logits
    assert [layer.name for layer in fused_net.sublayers] == ["dense", "relu", "dense", "identity"]
    _, params, _ = net.init(jax.random.key(0), (-1, 2))
    x = _normal((5, 2))
    logits, _ = jaxnn.apply(fused_net, params, (), x)
    probs, _ = jaxnn.apply(net, params, (), x)
    chex.assert_trees_all_close(jax.nn.sigmoid(logits), probs, rtol=1e-12)
    # any other pair is left alone
    assert jaxnn.fuse(net, jaxnn.mean_squared_error) == (net, jaxnn.mean_squared_error)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16, jnp.float64])
def test_losses_finite_at_extreme_logits_and_saturated_probabilities(dtype):
    z = jnp.array([[-1e4], [1e4], [0.0]], dtype)
    y = jnp.array([[1.0], [0.0], [1.0]], dtype)
    p = jnp.array([[0.0], [1.0], [0.5]], dtype)
    for loss, pred in [(jaxnn.binary_cross_entropy_with_logits, z),
                       (jaxnn.binary_cross_entropy, p),
                       (jaxnn.mean_squared_error, z)]:
        value, grad = jax.value_and_grad(loss)(pred, y)
        assert np.isfinite(float(value)), loss
        assert np.all(np.isfinite(np.asarray(grad, np.float32))), loss
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], dtype)
    value, grad = jax.value_and_grad(jaxnn.softmax_cross_entropy)(logits, jnp.array([1, 0]))
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_saturated_wrong_prediction_still_gets_a_gradient():
    # straight-through clipping: the derivative at the clipped probability, never zero
    g = jax.grad(jaxnn.binary_cross_entropy)(jnp.array([[0.0]]), jnp.array([[1.0]]))
    assert float(g[0, 0]) < -1e6


def test_targets_are_never_broadcast():
    with pytest.raises(ValueError, match=r"binary_cross_entropy: target shape \(4,\) does not "
                                         r"match prediction shape \(4, 1\)"):
        jaxnn.binary_cross_entropy(jnp.full((4, 1), 0.5), jnp.ones(4))
    with pytest.raises(ValueError, match="mean_squared_error: target shape"):
        jaxnn.mean_squared_error(jnp.ones((3, 2)), jnp.ones((3, 1)))


def test_label_range_is_checked_for_concrete_arrays():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        jaxnn.binary_cross_entropy(jnp.full((2, 1), 0.5), jnp.array([[2.0], [0.0]]))
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 2\] for 3 classes"):
        jaxnn.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3]))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(2,\)"):
        jaxnn.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([[0], [1]]))


def test_out_of_range_labels_under_jit_give_nan_not_a_silently_dropped_example():
    z = jnp.zeros((2, 3))
    loss = jax.jit(lambda z, y: jaxnn.softmax_cross_entropy(z, y))
    assert np.isfinite(float(loss(z, jnp.array([0, 2]))))
    assert np.isnan(float(loss(z, jnp.array([0, 3]))))
    grad = jax.jit(jax.grad(lambda z, y: jaxnn.softmax_cross_entropy(z, y)))(z, jnp.array([0, -1]))
    assert np.all(np.isnan(np.asarray(grad[1]))) and np.all(np.isfinite(np.asarray(grad[0])))


def test_empty_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="empty batch"):
        jaxnn.mean_squared_error(jnp.zeros((0, 1)), jnp.zeros((0, 1)))
