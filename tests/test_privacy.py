"""DP-SGD: per-example clipping and noise by vmap equal a Python loop over examples."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn import privacy
from tests.helpers import noisy_counter


def _problem(key, m=8, n_in=3, hidden=4):
    net = jaxnn.serial(jaxnn.dense(hidden), jaxnn.tanh(), jaxnn.dense(1), jaxnn.sigmoid())
    k1, k2, k3 = jax.random.split(key, 3)
    _, params, _ = net.init(k1, (-1, n_in))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = 3 * jax.random.normal(k2, (m, n_in))  # large inputs: some examples exceed the clip norm
    y = (jax.random.uniform(k3, (m, 1)) > 0.5).astype(x.dtype)
    return net, params, x, y


def _loop_clipped_mean(net, loss, params, x, y, clip_norm):
    """The reference: one example at a time, the textbook formula with numpy."""
    total, norms, values = None, [], []
    chain = jax.jit(jaxnn.value_and_grad(net, loss))
    for i in range(x.shape[0]):
        (value, _), g = chain(params, (), x[i:i + 1], y[i:i + 1])
        flat = np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])
        norm = np.linalg.norm(flat)
        norms.append(norm)
        values.append(float(value))
        g = jax.tree.map(lambda a: np.asarray(a) * min(1.0, clip_norm / norm), g)
        total = g if total is None else jax.tree.map(np.add, total, g)
    return jax.tree.map(lambda a: a / x.shape[0], total), np.array(norms), np.mean(values)


def test_clipped_mean_equals_a_loop_over_examples(key):
    net, params, x, y = _problem(key)
    _, norms, _ = _loop_clipped_mean(net, jaxnn.binary_cross_entropy, params, x, y, np.inf)
    clip_norm = float(np.median(norms))
    grads = jaxnn.per_example_grads(net, jaxnn.binary_cross_entropy, params, x, y)
    expected, norms, _ = _loop_clipped_mean(net, jaxnn.binary_cross_entropy, params, x, y,
                                            clip_norm)
    assert (norms > clip_norm).any()
    assert (norms < clip_norm).any()
    clipped, got_norms = privacy.clip_per_example(grads, clip_norm)
    np.testing.assert_allclose(got_norms, norms, rtol=1e-12)
    clipped_norms = jnp.sqrt(sum(jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=1)
                                 for a in jax.tree.leaves(clipped)))
    np.testing.assert_allclose(clipped_norms, np.minimum(norms, clip_norm), rtol=1e-12)
    mean = privacy.clipped_noisy_mean(grads, clip_norm, 0.0, jax.random.key(0))
    chex.assert_trees_all_close(mean, expected, rtol=1e-12)


def _private_step(net, loss, optimizer, clip_norm, noise_multiplier, noise_key, l2=0.0):
    """The one step with DP-SGD's two pieces; L2 after the aggregation, unclipped."""
    pieces = [privacy.private_aggregate(clip_norm, noise_multiplier, noise_key)]
    pieces += [jaxnn.l2_regularization(net, l2)] if l2 else []
    private = optax.chain(*pieces, optimizer)
    step = jaxnn.make_train_step(net, loss, private,
                                 gradients=privacy.per_example_value_and_grad(net, loss))
    return private, step


def test_private_step_equals_the_loop_then_sgd(key):
    net, params, x, y = _problem(key)
    private, step = _private_step(net, jaxnn.binary_cross_entropy, optax.sgd(0.5), 1.5, 0.0,
                                  jax.random.key(0), l2=0.01)
    new_params, _, _, value = step(params, (), private.init(params), x, y)
    mean, _, loss = _loop_clipped_mean(net, jaxnn.binary_cross_entropy, params, x, y, 1.5)
    mask = jaxnn.weight_mask(net, params)
    expected = jax.tree.map(lambda p, g, m: p - 0.5 * (g + 0.01 * p * m), params, mean, mask)
    chex.assert_trees_all_close(new_params, expected, rtol=1e-12)
    np.testing.assert_allclose(value, loss, rtol=1e-12)


def test_a_stateful_model_with_dropout_gets_one_key_per_example_and_the_mean_state(key):
    net = jaxnn.serial(jaxnn.dense(8), noisy_counter(), jaxnn.tanh(), jaxnn.dropout(0.2),
                       jaxnn.dense(1))
    k1, k2 = jax.random.split(key)
    _, params, state = net.init(k1, (-1, 3))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(k2, (32, 3))
    y = jnp.sin(x[:, :1])
    loss = jaxnn.mean_squared_error
    step_key = jax.random.key(7)
    (value, new_state), grads = privacy.per_example_value_and_grad(net, loss)(
        params, state, x, y, step_key)
    assert int(new_state[1]["count"]) == 1  # every example advanced the counter once
    chain = jax.jit(jaxnn.value_and_grad(net, loss))
    values = []
    for i, example_key in enumerate(jax.random.split(step_key, 32)):
        (v, _), g = chain(params, state, x[i:i + 1], y[i:i + 1], example_key)
        values.append(v)
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], grads), g, rtol=1e-10,
                                    atol=1e-15)
    np.testing.assert_allclose(value, np.mean(values), rtol=1e-12)
    # and it trains inside the one step, carrying the state
    private, step = _private_step(net, loss, optax.adam(0.02), 1.0, 0.3, jax.random.key(1))
    opt_state, losses = private.init(params), []
    for step_key in jax.random.split(jax.random.key(2), 60):
        params, state, opt_state, value = step(params, state, opt_state, x, y, step_key)
        losses.append(float(value))
    assert int(state[1]["count"]) == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_batch_norm_whose_statistics_mix_examples_is_refused_per_example(key):
    net = jaxnn.serial(jaxnn.dense(4), jaxnn.batch_norm(), jaxnn.dense(1))
    _, params, state = net.init(key, (-1, 3))
    x = jax.random.normal(key, (8, 3))
    with pytest.raises(ValueError, match="batch_norm: training mode needs more than one value"):
        privacy.per_example_value_and_grad(net, jaxnn.mean_squared_error)(
            params, state, x, x[:, :1])


def test_noise_has_standard_deviation_sigma_c_over_b_and_follows_the_key(key):
    grads = {"W": jax.random.normal(key, (16, 200, 50))}
    clip_norm, sigma = 0.5, 2.0
    clean = privacy.clipped_noisy_mean(grads, clip_norm, 0.0, jax.random.key(1))
    noisy = privacy.clipped_noisy_mean(grads, clip_norm, sigma, jax.random.key(1))
    noise = np.asarray(noisy["W"] - clean["W"]) * 16 / (sigma * clip_norm)
    # 10 000 draws of N(0, 1): the mean is within 5 standard errors, the std within 3 %
    assert abs(noise.mean()) < 5 / np.sqrt(noise.size)
    assert abs(noise.std() - 1) < 0.03
    again = privacy.clipped_noisy_mean(grads, clip_norm, sigma, jax.random.key(1))
    chex.assert_trees_all_equal(again, noisy)
    other = privacy.clipped_noisy_mean(grads, clip_norm, sigma, jax.random.key(2))
    assert not np.allclose(other["W"], noisy["W"])


def test_optax_transformation_chains_with_any_optimizer(key):
    net, params, x, y = _problem(key)
    grads = jaxnn.per_example_grads(net, jaxnn.binary_cross_entropy, params, x, y)
    noise_key = jax.random.key(4)
    private = optax.chain(privacy.private_aggregate(1.5, 1.0, noise_key), optax.sgd(0.5))
    state = private.init(params)
    updates, state = private.update(grads, state, params)
    _, expected_key = jax.random.split(noise_key)
    expected = privacy.clipped_noisy_mean(grads, 1.5, 1.0, expected_key)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -0.5 * g, expected),
                                rtol=1e-12)
    # the key advances: the next step's noise differs
    updates2, _ = private.update(grads, state, params)
    assert not np.allclose(updates2[0]["W"], updates[0]["W"])


def test_private_training_still_learns(key):
    net, params, x, y = _problem(key, m=64)
    y = (x[:, :1] > 0).astype(x.dtype)
    private, step = _private_step(net, jaxnn.binary_cross_entropy, optax.adam(0.05), 1.0, 0.5,
                                  jax.random.key(0))
    opt_state = private.init(params)
    losses = []
    for _ in range(30):
        params, _, opt_state, value = step(params, (), opt_state, x, y)
        losses.append(float(value))
    assert losses[-1] < 0.7 * losses[0]


def _square_problem(batch):
    """A network whose every parameter has 4 rows (``W (4, 4)``, ``b (4,)``): with a batch of
    4 the batch gradient's leading axes all equal the batch size."""
    net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(4))
    _, params, _ = net.init(jax.random.key(0), (-1, 4))
    x = jax.random.normal(jax.random.key(1), (batch, 4))
    return net, params, x, jnp.zeros((batch, 4))


@pytest.mark.parametrize("batch", [4, 8], ids=["first_axes_equal_the_batch", "axes_differ"])
def test_the_batch_gradient_is_refused_naming_per_example_value_and_grad(batch):
    """Issue 20 item 5: ``private_aggregate`` given the step's default (batch-mean) gradient is
    a ValueError naming ``privacy.per_example_value_and_grad``, while tracing: when every
    parameter's first axis equals the batch size (it trained silently) and when it does not
    (it was clip_per_example's message about leading axes)."""
    net, params, x, y = _square_problem(batch)
    optimizer = optax.chain(privacy.private_aggregate(1.0, 1.1, jax.random.key(2)),
                            optax.sgd(0.1))
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    with pytest.raises(ValueError, match=r"private_aggregate: expected per-example gradients, "
                                         r"got the batch gradient: \[0\]\['W'\] has shape "
                                         r"\(4, 4\).*privacy\.per_example_value_and_grad"):
        step(params, (), optimizer.init(params), x, y)
    # the same step with per-example gradients trains
    per_example = jaxnn.make_train_step(
        net, jaxnn.mean_squared_error, optimizer,
        gradients=privacy.per_example_value_and_grad(net, jaxnn.mean_squared_error))
    new_params, *_ = per_example(params, (), optimizer.init(params), x, y)
    chex.assert_trees_all_equal_shapes(new_params, params)


def test_update_without_params_compares_with_the_parameters_init_saw():
    """Issue 20 item 5: ``update(grads, state)`` (no params) refuses the batch gradient by the
    shapes ``init`` saw, and refuses per-example gradients whose batch sizes differ, naming
    ``per_example_value_and_grad``; per-example gradients pass."""
    net, params, x, y = _square_problem(4)
    tx = privacy.private_aggregate(1.0, 1.1, jax.random.key(2))
    state = tx.init(params)
    (_, _), batch_grads = jaxnn.value_and_grad(net, jaxnn.mean_squared_error)(params, (), x, y)
    with pytest.raises(ValueError, match=r"got the batch gradient.*per_example_value_and_grad"):
        tx.update(batch_grads, state)
    grads = jaxnn.per_example_grads(net, jaxnn.mean_squared_error, params, x, y)
    mixed = (grads[0], (), {"W": grads[2]["W"][:3], "b": grads[2]["b"]})
    with pytest.raises(ValueError, match=r"one batch size B for every leaf, got 4 at "
                                         r"\[0\]\['W'\], 3 at \[2\]\['W'\].*"
                                         r"per_example_value_and_grad"):
        tx.update(mixed, state)
    mean, _ = tx.update(grads, state)
    chex.assert_trees_all_equal_shapes(mean, params)

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"clip_norm": 0.0, "noise_multiplier": 1.0}, "clip_norm must be positive, got 0.0"),
    ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "noise_multiplier must be non-negative"),
])
def test_bad_privacy_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        privacy.private_aggregate(key=jax.random.key(0), **kwargs)


def _gaussian_mechanism_delta(eps, sigma):
    """The exact δ(ε) of one Gaussian mechanism with sensitivity 1 and noise σ (Balle & Wang
    2018): Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ)."""
    from math import erfc, exp, sqrt

    def phi(t):
        return 0.5 * erfc(-t / sqrt(2))

    return phi(0.5 / sigma - eps * sigma) - exp(eps) * phi(-0.5 / sigma - eps * sigma)


def test_epsilon_is_bounded_by_the_exact_gaussian_mechanism_and_the_classic_rdp_bound():
    pytest.importorskip("dp_accounting")
    sigma, delta = 2.0, 1e-5
    eps = privacy.epsilon(noise_multiplier=sigma, sampling_rate=1.0, steps=1, delta=delta)
    # one full-batch step is the Gaussian mechanism: RDP's ε is an upper bound on the exact ε
    # (δ(ε) decreases in ε, so the exact δ at the reported ε is at most the target)
    assert _gaussian_mechanism_delta(eps, sigma) <= delta
    assert _gaussian_mechanism_delta(0.8 * eps, sigma) > delta  # and not a loose one
    # the classic conversion min_α α/(2σ²) + log(1/δ)/(α − 1) bounds it from above
    classic = min(a / (2 * sigma**2) + np.log(1 / delta) / (a - 1)
                  for a in np.linspace(1.01, 200, 20000))
    assert eps <= classic


def test_epsilon_grows_with_steps_and_sampling_and_falls_with_noise():
    pytest.importorskip("dp_accounting")

    def eps(**kw):
        args = {"noise_multiplier": 1.1, "sampling_rate": 0.01, "steps": 1000, "delta": 1e-5} | kw
        return privacy.epsilon(**args)

    assert eps(steps=0) == 0.0
    assert eps(steps=100) < eps(steps=1000) < eps(steps=10_000)
    assert eps(sampling_rate=0.001) < eps() < eps(sampling_rate=0.1)
    assert eps(noise_multiplier=2.0) < eps() < eps(noise_multiplier=0.8)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sampling_rate": 0.0}, r"sampling_rate must be in \(0, 1\]"),
    ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
    ({"steps": 1.5}, "steps must be a non-negative int"),
    ({"noise_multiplier": 0.0}, "noise_multiplier must be positive"),
])
def test_bad_accounting_arguments_are_clear_errors(kwargs, message):
    args = {"noise_multiplier": 1.1, "sampling_rate": 0.01, "steps": 10, "delta": 1e-5} | kwargs
    with pytest.raises(ValueError, match=message):
        privacy.epsilon(**args)


def test_epsilon_without_dp_accounting_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r"jaxnn\[privacy\]"):
        privacy.epsilon(noise_multiplier=1.1, sampling_rate=0.01, steps=10, delta=1e-5)


def test_epsilon_prints_no_convergence_warning_and_leaves_the_logger_as_it_was(caplog, capfd):
    """Issue 20 item 15: the README's example (σ 1.1, q 64/256, 10 steps) printed seven
    ``WARNING:absl:_compute_log_a_frac failed to converge`` lines; none is printed or logged
    now, ε is the accountant's own value, and the ``absl`` logger's level and filters are
    restored afterwards (other absl warnings still show)."""
    dp_accounting = pytest.importorskip("dp_accounting")
    import logging

    absl_logger = logging.getLogger("absl")
    level, filters = absl_logger.level, list(absl_logger.filters)
    args = {"noise_multiplier": 1.1, "sampling_rate": 64 / 256, "steps": 10, "delta": 1e-5}
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        eps = privacy.epsilon(**args)
        assert "failed to converge" not in caplog.text
        out, err = capfd.readouterr()
        assert "failed to converge" not in out + err
        assert absl_logger.level == level
        assert absl_logger.filters == filters
        # the same computation outside epsilon still warns: the silence is scoped
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.PoissonSampledDpEvent(
            args["sampling_rate"], dp_accounting.GaussianDpEvent(args["noise_multiplier"])),
            args["steps"])
        assert caplog.text.count("failed to converge") == 7
        assert eps == float(accountant.get_epsilon(args["delta"]))
