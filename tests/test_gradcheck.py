"""The gradient-check harness: it passes correct layers, and catches and names wrong ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from jaxnn import gradcheck
from jaxnn.core import Layer, stateless_init


def _cube_layer(derivative):
    """A user's own layer ``a = z³`` with a given backward ``dZ = dA * derivative(z)``."""

    def forward(params, state, x, *, key=None, train=False):
        return x**3, state, x

    def backward(params, z, dy):
        return (), dy * derivative(z)

    return Layer("cube", stateless_init(lambda s: s), forward, backward)


def _scaled_dense(scale_dw):
    """A user's dense layer whose dW can be made wrong by a factor."""
    base = jaxnn.dense(3)

    def backward(params, residuals, dz):
        grads, dx = base.backward(params, residuals, dz)
        return {**grads, "W": grads["W"] * scale_dw}, dx

    return base._replace(name="my_dense", backward=backward)


def test_a_users_correct_layer_passes():
    report = gradcheck.check_layer(_cube_layer(lambda z: 3 * z**2), (4, 5))
    assert report.passed
    assert {(c.parameter, c.reference) for c in report.comparisons} == {
        ("input", "jax.grad"), ("input", "finite differences")}


def test_a_wrong_backward_is_caught_against_both_references():
    report = gradcheck.check_layer(_cube_layer(lambda z: 2 * z**2), (4, 5))
    assert not report.passed
    assert report.failing_layers == ["cube"]
    assert {c.reference for c in report.failures} == {"jax.grad", "finite differences"}
    with pytest.raises(AssertionError, match="cube"):
        report.raise_if_failed()


def test_a_slightly_wrong_weight_gradient_is_caught_and_the_parameter_named():
    report = gradcheck.check_layer(_scaled_dense(1 + 1e-5), (4, 2))
    assert [(c.layer, c.parameter, c.reference) for c in report.failures] == [
        ("my_dense", "W", "jax.grad"), ("my_dense", "W", "finite differences")]
    # an error of 1e-8 is below what finite differences resolve; autodiff still sees it
    report = gradcheck.check_layer(_scaled_dense(1 + 1e-8), (4, 2))
    assert [(c.parameter, c.reference) for c in report.failures] == [("W", "jax.grad")]


def test_check_model_names_the_failing_layer_without_parameters():
    bad_tanh = jaxnn.tanh()._replace(backward=lambda p, a, dy: ((), dy * (1 - a)))
    net = jaxnn.serial(jaxnn.dense(4), bad_tanh, jaxnn.dense(1))
    _, params, _ = net.init(jax.random.key(0), (-1, 3))
    x = jax.random.normal(jax.random.key(1), (6, 3))
    y = jax.random.normal(jax.random.key(2), (6, 1))
    report = gradcheck.check_model(net, jaxnn.mean_squared_error, params, x, y)
    assert not report.passed
    # the whole-model gradient of the first dense is wrong (it is below the bad layer), and the
    # per-layer check names the culprit itself
    assert "serial/1:tanh (alone)" in report.failing_layers
    assert all("dense (alone)" not in name for name in report.failing_layers)
    assert "FAIL" in report.table()


def test_check_model_passes_a_correct_network_and_reports_every_parameter():
    net = jaxnn.serial(jaxnn.dense(5), jaxnn.tanh(), jaxnn.dense(3), jaxnn.softmax())
    _, params, _ = net.init(jax.random.key(0), (-1, 4))
    x = jax.random.normal(jax.random.key(1), (7, 4))
    y = jax.nn.one_hot(jnp.arange(7) % 3, 3)
    report = gradcheck.check_model(net, jaxnn.mean_squared_error, params, x, y)
    assert report.passed, report.table()
    rows = {(c.layer, c.parameter) for c in report.comparisons}
    assert {("serial/0:dense", "W"), ("serial/0:dense", "b"), ("serial/2:dense", "W"),
            ("serial/2:dense", "b"), ("serial/3:softmax (alone)", "input"),
            ("mean_squared_error", "prediction")} <= rows


def test_a_wrong_loss_derivative_is_caught():
    wrong = jaxnn.mean_squared_error._replace(name="my_mse", grad=lambda p, y: (p - y) / p.size)
    report = gradcheck.check_loss(wrong, jnp.ones((3, 1)), jnp.zeros((3, 1)))
    assert report.failing_layers == ["my_mse"]


def test_checks_run_in_float64_even_with_float32_parameters():
    layer = jaxnn.dense(2)
    _, params, _ = layer.init(jax.random.key(0), (-1, 3))
    assert params["W"].dtype == jnp.float32
    report = gradcheck.check_layer(layer, params=params, x=np.ones((2, 3), np.float32))
    assert report.passed
    assert max(c.max_relative_error for c in report.comparisons
               if c.reference == "jax.grad") <= 1e-12


def test_an_exact_zero_gradient_next_to_large_ones_is_judged_on_the_gradients_scale():
    # a bias before a training-mode batch norm has gradient exactly 0 (the mean removes it);
    # both paths give rounding noise around 0, which must not count as a relative error of 1
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.batch_norm())
    report = gradcheck.check_layer(net, (5, 2), train=True)
    assert report.passed, report.table()
    bias_rows = [c for c in report.comparisons if c.parameter == "[0].b"]
    assert bias_rows and all(c.max_abs_error < 1e-12 for c in bias_rows)


def test_compare_definition():
    abs_err, rel_err = gradcheck.compare(np.array([1.0, 2.0]), np.array([1.0, 2.002]))
    assert abs_err == pytest.approx(0.002)
    assert rel_err == pytest.approx(0.002 / 2.002)
    assert gradcheck.compare(np.array([np.nan]), np.array([1.0]))[1] == np.inf
    # entries tiny next to the rest of the array are judged against 1e-3 of its largest entry
    _, rel = gradcheck.compare(np.array([1.0, 1e-12]), np.array([1.0, 0.0]))
    assert rel == pytest.approx(1e-9)
    # ... or of the whole check, when another array holds the large entries
    _, rel = gradcheck.compare(np.array([1e-17]), np.array([0.0]), scale=2.0)
    assert rel == pytest.approx(1e-17 / 2e-3)
    _, rel = gradcheck.compare(np.array([2e-6]), np.array([1e-6]), scale=1.0)
    assert rel == pytest.approx(1e-3)  # a 100% error on a small entry still fails
