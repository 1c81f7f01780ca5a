"""Training: two ways to the same gradients, jitted optax steps, L2, vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from tests.helpers import noisy_counter_problem


def _problem(key, m=16, n_in=3, hidden=5):
    net = jaxnn.serial(jaxnn.dense(hidden), jaxnn.relu(), jaxnn.dense(hidden), jaxnn.tanh(),
                       jaxnn.dense(1), jaxnn.sigmoid())
    k1, k2, k3 = jax.random.split(key, 3)
    _, params, _ = net.init(k1, (-1, n_in))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)  # tight comparisons
    x = jax.random.normal(k2, (m, n_in))
    y = (jax.random.uniform(k3, (m, 1)) > 0.5).astype(x.dtype)
    return net, params, x, y


def test_explicit_chain_equals_jax_grad_through_apply(key):
    net, params, x, y = _problem(key)
    (value, _), grads = jaxnn.value_and_grad(net, jaxnn.binary_cross_entropy)(params, (), x, y)

    def objective(p):
        out, _ = jaxnn.apply(net, p, (), x, train=True)
        return jaxnn.binary_cross_entropy(out, y)

    value2, grads2 = jax.value_and_grad(objective)(params)
    chex.assert_trees_all_close(value, value2, rtol=1e-12)
    chex.assert_trees_all_close(grads, grads2, rtol=1e-10)
    # and both equal plain autodiff of the reference forward
    grads3 = jax.grad(lambda p: jaxnn.binary_cross_entropy.value(
        jaxnn.reference_apply(net, p, (), x)[0], y))(params)
    chex.assert_trees_all_close(grads, grads3, rtol=1e-9)


def test_jax_grad_through_apply_runs_the_hand_derived_backward(key):
    calls = []
    relu = jaxnn.relu()
    spy = relu._replace(backward=lambda p, r, dy: calls.append(1) or relu.backward(p, r, dy))
    x = jax.random.normal(key, (3, 2))
    jax.grad(lambda x: jnp.sum(jaxnn.apply(spy, (), (), x)[0]))(x)
    assert calls == [1]


def test_train_step_is_traced_once_and_lowers_the_loss(key):
    net, params, x, y = _problem(key, m=64)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer, jit=False)
    step = jax.jit(chex.assert_max_traces(step, n=1))
    losses = []
    for _ in range(50):
        params, _, opt_state, loss = step(params, (), opt_state, x, y, None)
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0]


def test_train_step_is_pure_and_matches_a_hand_written_sgd_update(key):
    net, params, x, y = _problem(key)
    lr = 0.1
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optax.sgd(lr))
    new_params, _, _, loss = step(params, (), optax.sgd(lr).init(params), x, y)
    (value, _), grads = jaxnn.value_and_grad(net, jaxnn.binary_cross_entropy)(params, (), x, y)
    chex.assert_trees_all_close(new_params, jax.tree.map(lambda p, g: p - lr * g, params, grads),
                                rtol=1e-9)
    chex.assert_trees_all_close(loss, value, rtol=1e-9)
    # calling it again with the same inputs gives the same outputs: nothing hidden changed
    again, _, _, _ = step(params, (), optax.sgd(lr).init(params), x, y)
    chex.assert_trees_all_equal(new_params, again)


def test_hand_and_autodiff_steps_agree(key):
    net, params, x, y = _problem(key)
    opt = optax.adam(1e-3)
    hand = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, opt)
    auto = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, opt, gradients="autodiff")
    out_hand = hand(params, (), opt.init(params), x, y)
    out_auto = auto(params, (), opt.init(params), x, y)
    chex.assert_trees_all_close(out_hand, out_auto, rtol=1e-9)


def test_l2_applies_lambda_w_to_weights_and_not_to_biases(key):
    net, params, x, y = _problem(key)
    lam, lr = 0.3, 1.0
    plain = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optax.sgd(lr))
    regularized = optax.chain(jaxnn.l2_regularization(net, lam), optax.sgd(lr))
    reg = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, regularized)
    p0, _, _, loss0 = plain(params, (), optax.sgd(lr).init(params), x, y)
    p1, _, _, loss1 = reg(params, (), regularized.init(params), x, y)
    for i in (0, 2, 4):  # the dense layers
        chex.assert_trees_all_close(p1[i]["W"], p0[i]["W"] - lr * lam * params[i]["W"],
                                    rtol=1e-9)
        chex.assert_trees_all_close(p1[i]["b"], p0[i]["b"], rtol=1e-12)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-12)  # the data loss
    # the decay is the gradient of the penalty (λ/2) Σ ‖W‖² on the weights alone
    penalty = 0.5 * lam * sum(float(jnp.sum(params[i]["W"] ** 2)) for i in (0, 2, 4))
    np.testing.assert_allclose(float(jaxnn.l2_penalty(net, params, lam)), penalty, rtol=1e-12)
    decay = jax.grad(lambda p: jaxnn.l2_penalty(net, p, lam))(params)
    chex.assert_trees_all_close(jax.tree.map(lambda a, b: (a - b) / lr, p0, p1), decay,
                                rtol=1e-7, atol=1e-12)


def test_weight_mask_marks_what_each_layer_declares(key):
    net = jaxnn.serial(jaxnn.dense(2), jaxnn.relu(), jaxnn.dense(1))
    _, params, _ = net.init(key, (-1, 3))
    assert jaxnn.weight_mask(net, params) == ({"W": True, "b": False}, (),
                                              {"W": True, "b": False})
    # combinators inside combinators: the mask follows the sublayers
    nested = jaxnn.serial(jaxnn.residual(jaxnn.serial(jaxnn.dense(3), jaxnn.tanh())),
                          jaxnn.layer_norm())
    _, params, _ = nested.init(key, (-1, 3))
    mask = jaxnn.weight_mask(nested, params)
    assert mask[0] == (({"W": True, "b": False}, ()),)
    assert not any(jax.tree.leaves(mask[1]))


def _attention_like(declared):
    """A user's own leaf with a parameter named Wq (no naming convention applies)."""

    def init(key, in_shape):
        return tuple(in_shape), {"Wq": jnp.ones((in_shape[-1], in_shape[-1])),
                                 "scale": jnp.ones(())}, ()

    def forward(params, state, x, *, key=None, train=False):
        return params["scale"] * (x @ params["Wq"]), state, x

    def backward(params, x, dy):
        z = x @ params["Wq"]
        return ({"Wq": x.T @ (params["scale"] * dy), "scale": jnp.sum(dy * z)},
                params["scale"] * dy @ params["Wq"].T)

    return jaxnn.core.leaf_layer("attention_like", init, forward, backward,
                                 weights=("Wq",) if declared else ())


@pytest.mark.parametrize("declared", [True, False])
def test_a_users_layer_is_decayed_when_it_declares_its_weight(key, declared):
    net = jaxnn.serial(_attention_like(declared), jaxnn.dense(1))
    _, params, _ = net.init(key, (-1, 2))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    assert jaxnn.weight_mask(net, params)[0] == {"Wq": declared, "scale": False}
    decay = jaxnn.l2_regularization(net, 0.5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = decay.update(zeros, decay.init(params), params)
    expected_wq = 0.5 * params[0]["Wq"] if declared else jnp.zeros_like(params[0]["Wq"])
    chex.assert_trees_all_close(updates[0]["Wq"], expected_wq)
    chex.assert_trees_all_close(updates[0]["scale"], jnp.zeros(()))
    chex.assert_trees_all_close(updates[1]["W"], 0.5 * params[1]["W"])


def test_train_step_works_under_vmap_over_stacked_models(key):
    net, _params, x, y = _problem(key)
    opt = optax.sgd(0.1)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, opt)
    keys = jax.random.split(key, 3)
    stacked = jax.vmap(lambda k: net.init(k, (-1, 3))[1])(keys)
    stacked = jax.tree.map(lambda a: a.astype(jnp.float64), stacked)
    opt_states = jax.vmap(opt.init)(stacked)
    new, _, _, losses = jax.vmap(step, in_axes=(0, None, 0, None, None))(stacked, (),
                                                                         opt_states, x, y)
    chex.assert_shape(losses, (3,))
    for i in range(3):
        one = jax.tree.map(lambda a, i=i: a[i], stacked)
        expected, _, _, loss = step(one, (), opt.init(one), x, y)
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], new), expected, rtol=1e-9)
        np.testing.assert_allclose(losses[i], loss, rtol=1e-9)


def test_per_example_gradients_by_vmap_equal_a_python_loop(key):
    net, params, x, y = _problem(key, m=6)
    per_example = jaxnn.per_example_grads(net, jaxnn.binary_cross_entropy, params, x, y)
    chain = jaxnn.value_and_grad(*jaxnn.fuse(net, jaxnn.binary_cross_entropy))
    for i in range(6):
        _, expected = chain(params, (), x[i:i + 1], y[i:i + 1])
        chex.assert_trees_all_close(jax.tree.map(lambda g, i=i: g[i], per_example), expected,
                                    rtol=1e-10, atol=1e-15)
    # the mean of per-example gradients is the batch gradient
    _, batch = chain(params, (), x, y)
    chex.assert_trees_all_close(jax.tree.map(lambda g: g.mean(0), per_example), batch,
                                rtol=1e-9, atol=1e-15)


def test_shuffled_batches_cover_every_example_once(key):
    x = jnp.arange(10.0)[:, None]
    y = jnp.arange(10.0)[:, None]
    kept = list(jaxnn.data.batches(key, x, y, 4))
    assert [b[0].shape[0] for b in kept] == [4, 4, 2]
    assert sorted(np.concatenate([b[0] for b in kept]).ravel().tolist()) == list(range(10))
    for bx, by in kept:
        np.testing.assert_array_equal(bx, by)  # x and y stay paired
    dropped = list(jaxnn.data.batches(key, x, y, 4, drop_last=True))
    assert [b[0].shape[0] for b in dropped] == [4, 4]
    other = np.concatenate([b[0] for b in jaxnn.data.batches(jax.random.key(99), x, y, 4)])
    assert not np.array_equal(other, np.concatenate([b[0] for b in kept]))


def test_optimizer_must_be_an_optax_transformation():
    net = jaxnn.serial(jaxnn.dense(1))
    with pytest.raises(TypeError, match=r"optax.GradientTransformation"):
        jaxnn.make_train_step(net, jaxnn.mean_squared_error, "adam")


class _OwnOptimizer:
    """Looks like an optimizer (init, update) without being an optax transformation."""

    def init(self, params):
        return ()

    def update(self, updates, state, params=None):
        return updates, state


@pytest.mark.parametrize(("optimizer", "fix"), [
    (optax.adam, "got the function adam itself: call it to make the optimizer, e.g. "
                 "adam(learning_rate)"),
    (0.1, "got the number 0.1: give an optimizer made with that learning rate, e.g. "
          "optax.sgd(0.1)"),
    (_OwnOptimizer(), "wrap it as optax.GradientTransformation(opt.init, opt.update), or give "
                      "the transformation it holds (opt.gradient_transformation() for optax "
                      "wrappers such as optax.MultiSteps)"),
    ("adam", "(optax.sgd(0.1), optax.adam(1e-3), …; an optax.MultiSteps too), got str"),
])
def test_a_wrong_optimizer_gets_a_message_naming_the_fix(optimizer, fix):
    """An uncalled factory, a bare learning rate, an object with its own init/update and other
    objects are refused by make_train_step and fit with one message each saying what to pass."""
    net = jaxnn.serial(jaxnn.dense(1))
    _, params, _ = net.init(jax.random.key(0), (-1, 2))
    with pytest.raises(TypeError) as caught:
        jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    assert str(caught.value).startswith("make_train_step: optimizer must be an "
                                        "optax.GradientTransformation")
    assert fix in str(caught.value)
    x = jnp.ones((4, 2))
    with pytest.raises(TypeError, match=r"^fit: optimizer must be") as caught:
        jaxnn.fit(net, jaxnn.mean_squared_error, optimizer, params, x, x[:, :1], epochs=1,
                  batch_size=2, key=jax.random.key(1))
    assert fix in str(caught.value)


def test_multi_steps_accumulates_k_micro_steps_into_one_mean_gradient_update(key):
    """optax.MultiSteps(sgd, k=3) given as the optimizer: the first two micro-steps leave the
    parameters alone, the third updates them by the mean of the three batches' gradients, which
    is one sgd step on the three batches together (equal sizes, mean losses)."""
    net, params, x, y = _problem(key, m=18)
    accumulate = optax.MultiSteps(optax.sgd(0.3), every_k_schedule=3,
                                  accumulator_dtype=jnp.float64)  # float32 by default
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, accumulate)
    opt_state = accumulate.init(params)
    current = params
    for i in range(3):
        rows = slice(6 * i, 6 * (i + 1))
        current, _, opt_state, _ = step(current, (), opt_state, x[rows], y[rows])
        if i < 2:
            chex.assert_trees_all_equal(current, params)
    plain = optax.sgd(0.3)
    expected, _, _, _ = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, plain)(
        params, (), plain.init(params), x, y)
    chex.assert_trees_all_close(current, expected, rtol=1e-12, atol=1e-14)
    assert not np.allclose(np.asarray(current[0]["W"]), np.asarray(params[0]["W"]))


def test_accuracy_for_probabilities_and_classes():
    assert float(jaxnn.accuracy(jnp.array([[0.9], [0.2], [0.6]]),
                                jnp.array([[1.0], [0.0], [0.0]]))) == pytest.approx(2 / 3)
    assert float(jaxnn.accuracy(jnp.array([[0.1, 0.9], [0.8, 0.2]]), jnp.array([1, 1]))) == 0.5


def test_run_steps_fuses_steps_into_one_scan_equal_to_a_python_loop(key):
    net, params, x, y = _problem(key)
    opt = optax.adam(1e-2)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, opt)
    p, s = params, opt.init(params)
    loop_losses = []
    for _ in range(7):
        p, _, s, loss = step(p, (), s, x, y)
        loop_losses.append(loss)
    p2, _, s2, losses = jaxnn.run_steps(step, params, (), opt.init(params), x, y, 7)
    chex.assert_trees_all_close((p2, s2), (p, s), rtol=1e-10)
    chex.assert_trees_all_close(losses, jnp.stack(loop_losses), rtol=1e-10)


def test_run_steps_carries_state_and_gives_each_step_its_key(key):
    net, params, state, x, y = noisy_counter_problem(key, 8)
    opt = optax.sgd(0.1)
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, opt)
    p, s, o = params, state, opt.init(params)
    loop_losses = []
    for step_key in jax.random.split(jax.random.key(3), 4):
        p, s, o, loss = step(p, s, o, x, y, step_key)
        loop_losses.append(loss)
    p2, s2, _, losses = jaxnn.run_steps(step, params, state, opt.init(params), x, y, 4,
                                        jax.random.key(3))
    assert int(s2[1]["count"]) == 4 == int(s[1]["count"])
    chex.assert_trees_all_close(p2, p, rtol=1e-10)
    chex.assert_trees_all_close(losses, jnp.stack(loop_losses), rtol=1e-10)


def test_unknown_gradients_are_a_clear_error():
    net = jaxnn.serial(jaxnn.dense(1))
    with pytest.raises(ValueError, match="gradients must be 'hand', 'autodiff' or a gradient "
                                         "function, got 'finite'"):
        jaxnn.make_train_step(net, jaxnn.mean_squared_error, optax.sgd(0.1), gradients="finite")


def test_accuracy_takes_the_data_loaders_column_of_class_ids():
    # jaxnn.data returns multi-class labels as (m, 1) int32: never broadcast against (m,)
    probs = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    column = jnp.array([[0], [1], [2], [2]], jnp.int32)
    assert float(jaxnn.accuracy(probs, column)) == pytest.approx(0.75)
    assert float(jaxnn.accuracy(probs, column[:, 0])) == pytest.approx(0.75)
    assert float(jaxnn.accuracy(probs, jax.nn.one_hot(column[:, 0], 3))) == pytest.approx(0.75)
    assert float(jax.jit(jaxnn.accuracy)(probs, column)) == pytest.approx(0.75)


def test_accuracy_refuses_targets_it_would_have_to_broadcast():
    probs = jnp.full((4, 3), 1 / 3)
    for bad in [jnp.zeros((4, 1)), jnp.zeros((1, 4), jnp.int32), jnp.zeros((4, 2)),
                jnp.zeros((2,), jnp.int32)]:
        with pytest.raises(ValueError, match=r"accuracy: for predictions of shape \(4, 3\) .*"
                                             r"never broadcast"):
            jaxnn.accuracy(probs, bad)
    with pytest.raises(ValueError, match="accuracy: target shape"):
        jaxnn.accuracy(jnp.full((4, 1), 0.5), jnp.ones((4,)))


@pytest.mark.parametrize("labels", [[-1.0, 1.0, 1.0, -1.0], [0.0, 1.0, float("nan"), 1.0]])
def test_a_jitted_step_on_out_of_range_binary_labels_reports_nan_not_a_loss(labels, key):
    # labels cannot be checked while tracing: the step's loss is NaN instead of a wrong number
    # (binary cross-entropy trained on -1/+1 once fell to an impossible -28.7)
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), jaxnn.dense(1), jaxnn.sigmoid())
    _, params, _ = net.init(key, (-1, 2))
    x = jax.random.normal(key, (4, 2))
    y = jnp.asarray(labels).reshape(4, 1)
    optimizer = optax.sgd(0.1)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    _, _, _, loss = step(params, (), optimizer.init(params), x, y, None)
    assert np.isnan(float(loss))
    result = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y, epochs=1,
                       batch_size=4, key=key)
    assert np.isnan(float(result.losses[0, 0]))
