"""Losses: known values, hand-derived derivatives in float64, stable fused forms."""

from typing import NamedTuple

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
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


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
    assert np.all(np.isnan(np.asarray(grad[1])))
    assert np.all(np.isfinite(np.asarray(grad[0])))


def test_empty_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="empty batch"):
        jaxnn.mean_squared_error(jnp.zeros((0, 1)), jnp.zeros((0, 1)))


# --- derivatives with respect to the target ---------------------------------------------------

class TargetCase(NamedTuple):
    loss: jaxnn.Loss
    prediction: jax.Array
    target: jax.Array

    def __repr__(self):
        return f"{self.loss.name}{tuple(self.prediction.shape)}"


TARGET_CASES = [
    TargetCase(jaxnn.mean_squared_error, _normal((4, 3)), _normal((4, 3))),
    TargetCase(jaxnn.binary_cross_entropy, _probs((5, 1)), _probs((5, 1))),
    TargetCase(jaxnn.binary_cross_entropy_with_logits, _normal((3, 4)), _probs((3, 4))),
    TargetCase(jaxnn.softmax_cross_entropy, _normal((4, 3)),
             jax.nn.softmax(_normal((4, 3)), axis=-1)),
    TargetCase(jaxnn.softmax_cross_entropy, _normal((2, 3, 5)),
             jax.nn.softmax(_normal((2, 3, 5)), axis=-1)),
]


def _central_differences(f, y, eps=1e-5):
    flat = np.asarray(y, np.float64).ravel()
    grads = np.zeros_like(flat)
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += eps
        down[i] -= eps
        grads[i] = (float(f(jnp.asarray(up.reshape(y.shape))))
                    - float(f(jnp.asarray(down.reshape(y.shape))))) / (2 * eps)
    return grads.reshape(y.shape)


def _relative_error(got, want):
    got, want = np.asarray(got), np.asarray(want)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


@pytest.mark.parametrize("case", TARGET_CASES, ids=repr)
def test_target_derivative_is_hand_derived_and_matches_autodiff_and_finite_differences(case):
    p, y = case.prediction, case.target
    assert p.dtype == jnp.float64
    hand = jax.grad(case.loss, argnums=1)(p, y)
    assert np.any(np.asarray(hand) != 0)
    chex.assert_trees_all_close(hand, case.loss.target_grad(p, y))  # the hand-derived rule ran
    reference = jax.grad(case.loss.value, argnums=1)(p, y)
    assert _relative_error(hand, reference) <= 1e-9
    fd = _central_differences(lambda t: case.loss.value(p, t), y)
    assert _relative_error(hand, fd) <= 1e-6


def test_mean_squared_error_target_gradient_is_minus_the_prediction_gradient():
    p, y = _normal((3, 2)), _normal((3, 2))
    dp, dy = jax.grad(jaxnn.mean_squared_error, argnums=(0, 1))(p, y)
    chex.assert_trees_all_close(dy, -(p - y) * 2 / p.size, rtol=1e-12)
    chex.assert_trees_all_close(dy, -dp, rtol=1e-12)


def test_distillation_through_a_learned_target_gets_its_gradient():
    # a loss between two network outputs: both sides get their gradient
    teacher, student = _normal((4, 3)), _normal((4, 3))

    def distill(t, s):
        return jaxnn.softmax_cross_entropy(s, jax.nn.softmax(t, axis=-1))

    def reference(t, s):
        return jaxnn.softmax_cross_entropy.value(s, jax.nn.softmax(t, axis=-1))

    hand = jax.grad(distill, argnums=(0, 1))(teacher, student)
    chex.assert_trees_all_close(hand, jax.grad(reference, argnums=(0, 1))(teacher, student),
                                rtol=1e-9)
    assert np.all(np.abs(np.asarray(hand[0])).sum() > 0)


def test_a_loss_without_target_derivative_refuses_a_differentiated_target():
    mse = jaxnn.mean_squared_error
    user = jaxnn.Loss("user_mse", mse.value, mse.grad)
    p, y = _normal((3, 1)), _normal((3, 1))
    chex.assert_trees_all_close(jax.grad(user)(p, y), jax.grad(mse)(p, y))  # target constant
    with pytest.raises(TypeError, match=r"user_mse: .*target_grad.*stop_gradient"):
        jax.grad(user, argnums=1)(p, y)
    with pytest.raises(TypeError, match="user_mse"):
        jax.jit(jax.grad(lambda p, y: user(p, 2 * y), argnums=1))(p, y)


def test_integer_class_ids_take_no_gradient_and_raise_nothing():
    z = _normal((3, 4))
    labels = jnp.array([0, 3, 1])
    chex.assert_trees_all_close(jax.grad(jaxnn.softmax_cross_entropy)(z, labels),
                                jax.grad(jaxnn.softmax_cross_entropy.value)(z, labels))


# --- jit, help, bad predictions and labels ---------------------------------------------------


@pytest.mark.parametrize("loss", [jaxnn.mean_squared_error, jaxnn.binary_cross_entropy,
                                  jaxnn.binary_cross_entropy_with_logits,
                                  jaxnn.softmax_cross_entropy], ids=repr)
def test_losses_are_usable_where_jax_expects_a_function(loss):
    p = _probs((4, 3))
    y = jnp.array([0, 2, 1, 1]) if loss is jaxnn.softmax_cross_entropy else _labels((4, 3))
    np.testing.assert_allclose(jax.jit(loss)(p, y), loss(p, y), rtol=1e-12)
    chex.assert_trees_all_close(jax.jit(jax.grad(loss))(p, y), jax.grad(loss)(p, y))


def test_each_loss_shows_its_own_documentation():
    import pydoc

    for loss, words in [(jaxnn.softmax_cross_entropy, "log softmax"),
                        (jaxnn.mean_squared_error, "(p − y)²"),
                        (jaxnn.binary_cross_entropy, "probabilities"),
                        (jaxnn.binary_cross_entropy_with_logits, "softplus")]:
        text = pydoc.render_doc(loss, renderer=pydoc.plaintext)
        assert words in text, loss
        assert "dJ/dy" in text, loss
        assert "A loss: a value and its hand-derived" not in text, loss


def test_minus_one_plus_one_and_nan_labels_are_refused_when_concrete():
    for loss in [jaxnn.binary_cross_entropy, jaxnn.binary_cross_entropy_with_logits]:
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\].*\(y \+ 1\) / 2"):
            loss(jnp.full((2, 1), 0.5), jnp.array([[-1.0], [1.0]]))
        with pytest.raises(ValueError, match="NaN labels"):
            loss(jnp.full((2, 1), 0.5), jnp.array([[jnp.nan], [1.0]]))


def test_out_of_range_binary_labels_under_jit_give_nan():
    # what every training path runs inside its compiled step: loss.value and loss.grad
    for loss, pred in [(jaxnn.binary_cross_entropy_with_logits, _normal((4, 1))),
                       (jaxnn.binary_cross_entropy, _probs((4, 1)))]:
        good = jnp.array([[0.0], [1.0], [1.0], [0.0]])
        for row, label in [(1, -1.0), (2, 2.0), (0, jnp.nan)]:
            bad = good.at[row, 0].set(label)
            assert np.isnan(float(jax.jit(loss.value)(pred, bad))), loss
            # the bad example's derivative is NaN, so every parameter gradient summed over the
            # batch is NaN too
            grad = np.asarray(jax.jit(loss.grad)(pred, bad))
            assert np.isnan(grad[row, 0]), loss
            assert np.isfinite(np.delete(grad, row)).all(), loss
            assert np.isnan(float(jax.jit(loss)(pred, bad))), loss
        assert np.isfinite(float(jax.jit(loss.value)(pred, good)))
        assert np.all(np.isfinite(np.asarray(jax.jit(loss.grad)(pred, good))))


def test_logits_given_to_binary_cross_entropy_are_an_error_or_nan_never_inf():
    logits = jnp.array([[2.5], [-1.0], [0.3]])
    y = jnp.array([[1.0], [0.0], [1.0]])
    with pytest.raises(ValueError, match=r"binary_cross_entropy: predictions must be "
                                         r"probabilities in \[0, 1\].*with_logits"):
        jaxnn.binary_cross_entropy(logits, y)
    value, grad = jax.jit(jax.value_and_grad(jaxnn.binary_cross_entropy))(logits, y)
    assert np.isnan(float(value))
    assert np.isnan(np.asarray(grad)).any()
    assert not np.isinf(np.asarray(grad)).any()
    # probabilities 0 and 1 stay valid
    assert np.isfinite(float(jaxnn.binary_cross_entropy(jnp.array([[0.0], [1.0]]),
                                                        jnp.array([[1.0], [0.0]]))))


def test_integer_predictions_are_a_clear_error():
    for loss in [jaxnn.binary_cross_entropy, jaxnn.binary_cross_entropy_with_logits,
                 jaxnn.mean_squared_error]:
        with pytest.raises(TypeError, match=f"{loss.name}: predictions must be floating-point, "
                                            f"got dtype int"):
            loss(jnp.array([[1], [0]]), jnp.array([[1.0], [0.0]]))
    with pytest.raises(TypeError, match="softmax_cross_entropy: predictions must be floating"):
        jaxnn.softmax_cross_entropy(jnp.array([[1, 0]]), jnp.array([0]))


def test_mean_squared_error_float16_gradient_limit_is_the_documented_one():
    doc = jaxnn.mean_squared_error.__doc__
    assert "32752·n" in doc
    for n in (1, 2, 4):
        y = jnp.zeros((n, 1), jnp.float16)
        inside = jnp.full((n, 1), 32752.0, jnp.float16)  # 2·32752/1 = 65504, float16's max
        value, grad = jax.value_and_grad(jaxnn.mean_squared_error)(inside, y)
        assert np.isfinite(float(value))
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    # beyond the limit the float16 gradient cannot be represented; the value still can
    value, grad = jax.value_and_grad(jaxnn.mean_squared_error)(jnp.full((1, 1), 6e4, jnp.float16),
                                                                jnp.zeros((1, 1), jnp.float16))
    assert np.isfinite(float(value))
    assert np.isinf(np.asarray(grad, np.float32)).all()
