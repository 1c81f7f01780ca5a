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
    assert {(c.layer, c.parameter, c.reference) for c in report.failures} == {
        ("my_dense", "W", "jax.grad"), ("my_dense", "W", "finite differences")}
    assert {c.in_shape for c in report.failures} == {(4, 2), (1, 2)}  # both batch sizes
    # an error of 1e-8 is below what finite differences resolve; autodiff still sees it
    report = gradcheck.check_layer(_scaled_dense(1 + 1e-8), (4, 2))
    assert {(c.parameter, c.reference) for c in report.failures} == {("W", "jax.grad")}


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
    assert bias_rows
    assert all(c.max_abs_error < 1e-12 for c in bias_rows)


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


# --- kinks: never accuse a correct layer; still catch a wrong one -------------------------------

SEEDS = range(6)


def _dense_with_backward(change):
    """``dense(4)`` whose backward's ``(grads, dx)`` goes through ``change``."""
    base = jaxnn.dense(4)

    def backward(params, residuals, dz):
        return change(*base.backward(params, residuals, dz))

    return base._replace(name="broken_dense", backward=backward)


BROKEN = {
    "dW x 1.01": lambda g, dx: ({**g, "W": g["W"] * 1.01}, dx),
    "transposed dW": lambda g, dx: ({**g, "W": g["W"].T}, dx),
    "wrong bias gradient": lambda g, dx: ({**g, "b": g["b"] * 0.5}, dx),
    "missing dx": lambda g, dx: (g, jnp.zeros_like(dx)),
}
WRONG_PARAMETER = {"dW x 1.01": "W", "transposed dW": "W", "wrong bias gradient": "b",
                   "missing dx": "input"}


@pytest.mark.parametrize("broken", sorted(BROKEN))
@pytest.mark.parametrize("seed", SEEDS)
def test_a_wrong_backward_fails_at_every_seed_against_both_references(broken, seed):
    relu_net = jaxnn.serial(_dense_with_backward(BROKEN[broken]), jaxnn.relu())
    for layer in (_dense_with_backward(BROKEN[broken]), relu_net):
        report = gradcheck.check_layer(layer, (6, 4), seed=seed)
        assert not report.passed
        failed = {(c.parameter.split(".")[-1].split("]")[-1], c.reference)
                  for c in report.failures}
        name = WRONG_PARAMETER[broken]
        assert {(name, "jax.grad"), (name, "finite differences")} <= failed, report.table()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("make", "in_shape"), [
    (jaxnn.relu, (8, 16)), (lambda: jaxnn.leaky_relu(0.1), (8, 16)),
    (lambda: jaxnn.max_pool((2, 2)), (2, 4, 6, 2)),
    (lambda: jaxnn.serial(jaxnn.relu(), jaxnn.max_pool((2,))), (3, 8, 4)),
], ids=["relu", "leaky_relu", "max_pool", "relu-max_pool"])
def test_layers_with_kinks_pass_at_many_seeds(make, in_shape, seed):
    report = gradcheck.check_layer(make(), in_shape, seed=seed)
    assert report.passed, report.table()


def _residual_relu_model():
    block = jaxnn.residual(jaxnn.serial(jaxnn.dense(6), jaxnn.relu(), jaxnn.dense(6)))
    return jaxnn.serial(jaxnn.dense(6), jaxnn.relu(), block, jaxnn.relu(), block, jaxnn.relu(),
                        jaxnn.dense(3))


@pytest.mark.parametrize("seed", range(4))
def test_check_model_passes_a_correct_residual_relu_model_at_many_seeds(seed):
    model = _residual_relu_model()
    _, params, _ = model.init(jax.random.key(seed), (-1, 5))
    x = jax.random.normal(jax.random.key(100 + seed), (16, 5))
    y = jnp.arange(16) % 3
    report = gradcheck.check_model(model, jaxnn.softmax_cross_entropy, params, x, y, seed=seed)
    assert report.passed, report.table()


def test_non_smooth_entries_are_skipped_and_counted_never_failed():
    x = jnp.array([[0.0, 1.0, -1.0, 2e-4]])  # 0 and 2e-4 lie within the step of the kink
    report = gradcheck.check_layer(jaxnn.relu(), x=x)
    assert report.passed
    (fd,) = [c for c in report.comparisons if c.reference == "finite differences"]
    assert fd.skipped == 2
    assert "2 finite-difference entries skipped: non-smooth point" in report.table()


def test_a_backward_wrong_only_at_batch_one_is_caught_by_default():
    def derivative(z):
        return 3 * z**2 * (z.shape[0] > 1)

    report = gradcheck.check_layer(_cube_layer(derivative), (4, 5))
    assert not report.passed
    assert {c.in_shape for c in report.failures} == {(1, 5)}
    assert gradcheck.check_layer(_cube_layer(derivative), (4, 5), batch_sizes=()).passed


def test_check_model_with_a_saturated_sigmoid_and_separate_bce_checks_the_fused_pair():
    """Pins: sigmoid + binary_cross_entropy with every output saturated past the clip is checked
    fused (what training uses) and passes, where the separate pair's flat clipped value gave
    false finite-difference failures; the note says it fused."""
    net = jaxnn.serial(jaxnn.dense(1), jaxnn.sigmoid())
    params = ({"W": jnp.zeros((3, 1)).at[0, 0].set(0.01), "b": jnp.full((1,), 16.5)}, ())
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    y = (x[:, :1] > 0).astype(x.dtype)
    report = gradcheck.check_model(net, jaxnn.binary_cross_entropy, params, x, y)
    assert report.passed, report.table()
    assert "checked fused as binary_cross_entropy_with_logits" in report.table()
    as_given = gradcheck.check_model(net, jaxnn.binary_cross_entropy, params, x, y,
                                     per_layer=False, fused=False)
    assert {c.reference for c in as_given.failures} == {"finite differences"}


def _compilations(run) -> int:
    """How many XLA compilations ``run()`` makes."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        run()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return len(events)


def test_checking_again_at_another_seed_reuses_the_compiled_check():
    """Pins: cotangents, keys and finite-difference directions are arguments of one cached
    compiled function, so a second check of the same layer or function at another seed compiles
    nothing, and a first check compiles the gradients and finite differences together."""

    @jax.custom_vjp
    def cube(x):
        return x ** 3

    cube.defvjp(lambda x: (cube(x), x), lambda x, g: (3 * x ** 2 * g,))
    x = jnp.arange(1.0, 4.0)
    assert gradcheck.check_function(cube, x, seed=0).passed
    assert _compilations(lambda: gradcheck.check_function(cube, x, seed=1).raise_if_failed()) == 0

    layer = _cube_layer(lambda z: 3 * z ** 2)
    assert gradcheck.check_layer(layer, (4, 5), seed=0).passed
    assert _compilations(lambda: gradcheck.check_layer(layer, (4, 5), seed=1)) == 0
    case = gradcheck.LAYER_CASES["dense"][0]
    gradcheck.check_case(case, seed=0)
    assert _compilations(lambda: gradcheck.check_case(case, seed=1)) == 0
