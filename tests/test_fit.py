"""Scan-fused epochs: same parameters as the Python step loop, compiled once, stateful models."""

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn.fit import _LossHistory, epoch_batches, make_epoch
from tests.helpers import noisy_counter_problem


def _problem(key, m=22, n_in=3):
    net = jaxnn.serial(jaxnn.dense(6), jaxnn.tanh(), jaxnn.dense(1), jaxnn.sigmoid())
    k1, k2, k3 = jax.random.split(key, 3)
    _, params, _ = net.init(k1, (-1, n_in))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(k2, (m, n_in))
    y = (jax.random.uniform(k3, (m, 1)) > 0.5).astype(x.dtype)
    return net, params, x, y


def _python_loop(net, loss, optimizer, params, x, y, *, epochs, batch_size, key, state=()):
    """The reference: make_train_step called from Python on the documented batches."""
    step = jaxnn.make_train_step(net, loss, optimizer)
    opt_state = optimizer.init(params)
    n = x.shape[0]
    steps = n // batch_size
    losses = []
    for epoch in range(epochs):
        perm_key, step_key = jax.random.split(jax.random.fold_in(key, epoch))
        perm = np.asarray(jax.random.permutation(perm_key, n))
        step_keys = jax.random.split(step_key, steps)
        for s in range(steps):
            rows = perm[s * batch_size:(s + 1) * batch_size]
            params, state, opt_state, value = step(params, state, opt_state, x[rows], y[rows],
                                                   step_keys[s])
            losses.append(value)
    return params, state, jnp.stack(losses).reshape(epochs, steps)


def test_fit_equals_the_python_step_loop_with_the_same_seed(key):
    net, params, x, y = _problem(key)
    optimizer = optax.adam(0.05)
    shuffle_key = jax.random.key(7)
    result = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y, epochs=3,
                       batch_size=5, key=shuffle_key)
    expected, _, expected_losses = _python_loop(net, jaxnn.binary_cross_entropy, optimizer,
                                                params, x, y, epochs=3, batch_size=5,
                                                key=shuffle_key)
    chex.assert_shape(result.losses, (3, 4))  # 22 // 5 = 4 steps, remainder of 2 dropped
    chex.assert_trees_all_close(result.params, expected, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(result.losses, expected_losses, rtol=1e-10)
    assert float(result.losses[-1].mean()) < float(result.losses[0].mean())


def test_epoch_batches_is_a_permutation_without_repeats_that_changes_each_epoch():
    key = jax.random.key(3)
    first, keys = epoch_batches(key, 0, 23, 4)
    second, _ = epoch_batches(key, 1, 23, 4)
    chex.assert_shape(first, (5, 4))
    assert len(keys) == 5
    assert len(set(np.asarray(first).ravel().tolist())) == 20  # no example twice
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    # a pure function of (key, epoch)
    np.testing.assert_array_equal(np.asarray(epoch_batches(key, 1, 23, 4)[0]), second)


def test_the_epoch_is_traced_once_for_every_epoch(key):
    net, params, x, y = _problem(key)
    calls = []
    counting = jaxnn.mean_squared_error._replace(
        value=lambda a, t: calls.append(1) or jaxnn.mean_squared_error.value(a, t))
    counting = counting._replace(value=chex.assert_max_traces(counting.value, n=1))
    result = jaxnn.fit(net, counting, optax.sgd(0.1), params, x, y, epochs=4, batch_size=4,
                       key=jax.random.key(0))
    chex.assert_shape(result.losses, (4, 5))
    assert len(calls) == 1  # one trace of the scan body served four epochs of five steps

    epoch_fn = make_epoch(net, jaxnn.mean_squared_error, optax.sgd(0.1), batch_size=4)
    opt_state = optax.sgd(0.1).init(params)
    for epoch in range(3):
        params, _, opt_state, _ = epoch_fn(params, (), opt_state, x, y, jax.random.key(0),
                                           jnp.asarray(epoch, jnp.int32))
    assert epoch_fn._cache_size() == 1


def test_fit_carries_state_and_gives_each_step_its_key(key):
    net, params, state, x, y = noisy_counter_problem(key, 12)
    optimizer = optax.sgd(0.1)
    result = jaxnn.fit(net, jaxnn.mean_squared_error, optimizer, params, x, y, epochs=2,
                       batch_size=4, key=jax.random.key(5), state=state)
    expected, expected_state, expected_losses = _python_loop(
        net, jaxnn.mean_squared_error, optimizer, params, x, y, epochs=2, batch_size=4,
        key=jax.random.key(5), state=state)
    assert int(result.state[1]["count"]) == 6 == int(expected_state[1]["count"])
    chex.assert_trees_all_close(result.params, expected, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(result.losses, expected_losses, rtol=1e-10)
    # the noise really depends on the step keys: another key gives other parameters
    other = jaxnn.fit(net, jaxnn.mean_squared_error, optimizer, params, x, y, epochs=2,
                      batch_size=4, key=jax.random.key(6), state=state)
    assert not np.allclose(np.asarray(other.params[0]["W"]), np.asarray(result.params[0]["W"]))


def test_on_epoch_reports_each_epoch_and_can_stop_early(key):
    net, params, x, y = _problem(key)
    seen = []

    def on_epoch(epoch, losses, params, state):
        seen.append((epoch, losses.shape))
        return epoch == 1

    result = jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.1), params, x, y,
                       epochs=5, batch_size=11, key=jax.random.key(0), on_epoch=on_epoch)
    assert seen == [(0, (2,)), (1, (2,))]
    chex.assert_shape(result.losses, (2, 2))


def test_l2_is_chained_into_the_optimizer(key):
    net, params, x, y = _problem(key)
    regularized = optax.chain(jaxnn.l2_regularization(net, 0.05), optax.sgd(0.1))
    result = jaxnn.fit(net, jaxnn.binary_cross_entropy, regularized, params, x, y, epochs=2,
                       batch_size=5, key=jax.random.key(7))
    expected, _, _ = _python_loop(net, jaxnn.binary_cross_entropy, regularized, params, x, y,
                                  epochs=2, batch_size=5, key=jax.random.key(7))
    chex.assert_trees_all_close(result.params, expected, rtol=1e-10, atol=1e-12)
    plain = jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.1), params, x, y, epochs=2,
                      batch_size=5, key=jax.random.key(7))
    assert float(jnp.sum(result.params[0]["W"] ** 2)) < float(jnp.sum(plain.params[0]["W"] ** 2))


def test_resuming_with_start_epoch_equals_one_long_run(key):
    net, params, x, y = _problem(key)
    optimizer = optax.adam(0.01)
    kw = {"batch_size": 6, "key": jax.random.key(1)}
    whole = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y, epochs=3, **kw)
    part = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y, epochs=1, **kw)
    rest = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, part.params, x, y, epochs=2,
                     opt_state=part.opt_state, start_epoch=1, **kw)
    chex.assert_trees_all_close(rest.params, whole.params, rtol=1e-12)


@pytest.mark.parametrize(("batch_size", "message"), [(0, "positive int"), (23, "larger than"),
                                                 (2.0, "positive int")])
def test_bad_batch_sizes_are_clear_errors(key, batch_size, message):
    net, params, x, y = _problem(key)
    with pytest.raises(ValueError, match=message):
        jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.1), params, x, y, epochs=1,
                  batch_size=batch_size, key=key)


def test_mismatched_example_counts_are_a_clear_error(key):
    net, params, x, y = _problem(key)
    with pytest.raises(ValueError, match="x has 22 examples but y has 21"):
        jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.1), params, x, y[:21],
                  epochs=1, batch_size=4, key=key)


class _Compiled(AssertionError):
    pass


@contextlib.contextmanager
def _no_tracing(what):
    """Raises as soon as JAX traces a new function inside the block (a compilation on the way)."""

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            raise _Compiled(f"{what} traced a new function for compilation")

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_a_20000_epoch_fit_compiles_nothing_after_its_epoch(key):
    """A 20 000-epoch full-batch fit of a tiny model compiles nothing once its epoch is compiled:
    the history is one host array filled in chunks (a ``jnp.stack`` of one device array per
    epoch compiled a concatenate with 20 000 operands, minutes of work), and it holds every
    epoch's loss in order."""
    net = jaxnn.serial(jaxnn.dense(2), jaxnn.tanh(), jaxnn.dense(1), jaxnn.sigmoid())
    _, params, _ = net.init(key, (-1, 2))
    x = jax.random.normal(jax.random.key(1), (8, 2))
    y = (x[:, :1] > 0).astype(x.dtype)
    optimizer = optax.sgd(0.5)
    kw = {"batch_size": 8, "key": jax.random.key(2)}
    first = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y, epochs=2, **kw)
    with _no_tracing("fit's 20 000 epochs"):
        result = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y,
                           epochs=20_000, **kw)
    assert isinstance(result.losses, np.ndarray)
    chex.assert_shape(result.losses, (20_000, 1))
    np.testing.assert_array_equal(result.losses[:2], first.losses)
    assert np.all(np.isfinite(result.losses))
    assert result.losses[-1, 0] < 0.5 * result.losses[0, 0]


@pytest.mark.parametrize(("epochs", "stop_after"), [(10, None), (10, 6), (0, None)])
def test_the_history_holds_every_epoch_in_order_across_fetches(key, monkeypatch, epochs,
                                                               stop_after):
    """The returned losses are exactly the ones ``on_epoch`` saw, epoch by epoch, across the
    history's fetches (every 4 epochs here), after an early stop, and for zero epochs
    ``(0, steps)``."""
    monkeypatch.setattr(_LossHistory, "FETCH_EVERY", 4)
    net, params, x, y = _problem(key)
    seen = []

    def on_epoch(epoch, losses, params, state):
        seen.append(np.asarray(losses))
        return stop_after is not None and epoch + 1 == stop_after

    result = jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.1), params, x, y,
                       epochs=epochs, batch_size=11, key=jax.random.key(0), on_epoch=on_epoch)
    run = epochs if stop_after is None else stop_after
    chex.assert_shape(result.losses, (run, 2))
    if run:
        np.testing.assert_array_equal(result.losses, np.stack(seen))


def test_fit_with_multi_steps_over_a_whole_epoch_is_full_batch_descent(key):
    """fit with optax.MultiSteps(sgd, k) where k is the epoch's number of steps and the batches
    cover the data: one update per epoch by the mean gradient of all examples, the parameters
    of full-batch gradient descent for the same epochs."""
    net, params, x, y = _problem(key, m=20)
    accumulate = optax.MultiSteps(optax.sgd(0.5), every_k_schedule=4,
                                  accumulator_dtype=jnp.float64)  # float32 by default
    kw = {"epochs": 3, "key": jax.random.key(3)}
    micro = jaxnn.fit(net, jaxnn.binary_cross_entropy, accumulate, params, x, y, batch_size=5,
                      **kw)
    full = jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.5), params, x, y,
                     batch_size=20, **kw)
    chex.assert_shape(micro.losses, (3, 4))
    chex.assert_trees_all_close(micro.params, full.params, rtol=1e-10, atol=1e-12)
    # resuming from the returned state continues the accumulation
    more = jaxnn.fit(net, jaxnn.binary_cross_entropy, accumulate, micro.params, x, y,
                     batch_size=5, epochs=1, key=jax.random.key(3), start_epoch=3,
                     opt_state=micro.opt_state)
    longer = jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.5), params, x, y,
                       batch_size=20, epochs=4, key=jax.random.key(3))
    chex.assert_trees_all_close(more.params, longer.params, rtol=1e-10, atol=1e-12)


def _padded_sequences(key, m=12, time=5, features=3):
    """An LSTM classifier on padded sequences: the input is the pytree ``(x, lengths)``."""
    net = jaxnn.serial(jaxnn.lstm(4, lengths=True, return_sequences=False), jaxnn.dense(1),
                       jaxnn.sigmoid())
    _, params, _ = net.init(jax.random.key(0), ((-1, time, features), (-1,)))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (m, time, features))
    lengths = jax.random.randint(k2, (m,), 1, time + 1)
    y = (x[:, 0, :1] > 0).astype(x.dtype)
    return net, params, (x, lengths), y


def test_fit_batches_every_leaf_of_a_pytree_input(key):
    """fit takes (x, lengths): each step gets the same rows of x and of lengths, and the run
    equals make_train_step called from Python on those batches."""
    net, params, inputs, y = _padded_sequences(key)
    optimizer = optax.sgd(0.2)
    result = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, inputs, y,
                       epochs=2, batch_size=4, key=jax.random.key(3))
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    expected, opt_state, losses = params, optimizer.init(params), []
    for epoch in range(2):
        rows, step_keys = epoch_batches(jax.random.key(3), epoch, 12, 4)
        for r, k in zip(np.asarray(rows), step_keys):
            batch = jax.tree.map(lambda a, r=r: a[r], inputs)
            expected, _, opt_state, value = step(expected, (), opt_state, batch, y[r], k)
            losses.append(value)
    chex.assert_trees_all_close(result.params, expected, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(result.losses.ravel(), np.asarray(losses), rtol=1e-10)


def test_pytree_leaves_with_different_example_counts_are_a_clear_error(key):
    """Leaves of x (or y) whose leading sizes differ are named, by path, with both sizes."""
    net, params, (x, lengths), y = _padded_sequences(key)
    with pytest.raises(ValueError, match=r"fit: every leaf of x holds the examples on its "
                                         r"leading axis, but x\[0\] has 12 and x\[1\] has 11"):
        jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.1), params, (x, lengths[:11]),
                  y, epochs=1, batch_size=4, key=key)
    with pytest.raises(ValueError, match="fit: x has 12 examples but y has 10"):
        jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.1), params, (x, lengths),
                  y[:10], epochs=1, batch_size=4, key=key)
    with pytest.raises(ValueError, match=r"fit: x\[1\] is a scalar"):
        jaxnn.fit(net, jaxnn.binary_cross_entropy, optax.sgd(0.1), params, (x, jnp.array(3)),
                  y, epochs=1, batch_size=4, key=key)
