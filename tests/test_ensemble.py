"""Ensembles: K models in one vmapped step equal K separate runs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn import ensemble
from tests.helpers import noisy_counter


def _net():
    return jaxnn.serial(jaxnn.dense(5), jaxnn.tanh(), jaxnn.dense(1), jaxnn.sigmoid())


def _data(key, m=16, n_in=3, members=None):
    k1, k2 = jax.random.split(key)
    shape = (m, n_in) if members is None else (members, m, n_in)
    x = jax.random.normal(k1, shape)
    y = (jax.random.uniform(k2, (*shape[:-1], 1)) > 0.5).astype(x.dtype)
    return x, y


def _float64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64), tree)


def test_init_stacks_members_made_from_their_own_keys():
    net = _net()
    keys = jax.random.split(jax.random.key(0), 3)
    out_shape, params, _ = ensemble.init(net, keys, (-1, 3))
    assert out_shape == (-1, 1)
    chex.assert_shape(params[0]["W"], (3, 3, 5))
    for k in range(3):
        chex.assert_trees_all_equal(ensemble.member(params, k), net.init(keys[k], (-1, 3))[1])
    assert not np.allclose(params[0]["W"][0], params[0]["W"][1])


def test_members_with_their_own_learning_rates_equal_separate_runs(key):
    net = _net()
    rates = jnp.array([0.1, 0.03, 0.01])
    _, params, _ = ensemble.init(net, key, (-1, 3), members=3)
    params = _float64(params)
    x, y = _data(jax.random.key(1))
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
    opt_state = ensemble.init_optimizer(optimizer, params, learning_rate=rates)
    step = ensemble.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    trained = params
    for _ in range(5):
        trained, _, opt_state, losses = step(trained, (), opt_state, x, y)
    assert step._cache_size() == 1
    chex.assert_shape(losses, (3,))

    for k in range(3):
        single_opt = optax.adam(float(rates[k]))
        single_step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, single_opt)
        p, s = ensemble.member(params, k), single_opt.init(ensemble.member(params, k))
        for _ in range(5):
            p, _, s, value = single_step(p, (), s, x, y)
        chex.assert_trees_all_close(ensemble.member(trained, k), p, rtol=1e-10, atol=1e-12)
        chex.assert_trees_all_close(losses[k], value, rtol=1e-10)


def test_members_on_their_own_data_equal_separate_runs(key):
    net = _net()
    _, params, _ = ensemble.init(net, key, (-1, 3), members=2)
    params = _float64(params)
    x, y = _data(jax.random.key(2), members=2)
    optimizer = optax.chain(jaxnn.l2_regularization(net, 0.01), optax.sgd(0.2))
    opt_state = ensemble.init_optimizer(optimizer, params)
    step = ensemble.make_train_step(net, jaxnn.binary_cross_entropy, optimizer,
                                    shared_data=False)
    trained, _, _, _ = step(params, (), opt_state, x, y)
    single = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    for k in range(2):
        p = ensemble.member(params, k)
        expected, _, _, _ = single(p, (), optimizer.init(p), x[k], y[k])
        chex.assert_trees_all_close(ensemble.member(trained, k), expected, rtol=1e-10)


def test_predict_gives_every_members_output(key):
    net = _net()
    _, params, _ = ensemble.init(net, key, (-1, 3), members=4)
    x, _ = _data(jax.random.key(3))
    out = ensemble.predict(net, params, x)
    chex.assert_shape(out, (4, 16, 1))
    chex.assert_trees_all_close(out[2], jaxnn.predict(net, ensemble.member(params, 2), x),
                                rtol=1e-6)


def test_hyperparameters_need_inject_hyperparams_and_one_value_per_member(key):
    net = _net()
    _, params, _ = ensemble.init(net, key, (-1, 3), members=3)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        ensemble.init_optimizer(optax.sgd(0.1), params, learning_rate=jnp.ones(3))
    injected = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    with pytest.raises(ValueError, match=r"one value per member, shape \(3,\), got shape \(2,\)"):
        ensemble.init_optimizer(injected, params, learning_rate=jnp.ones(2))
    with pytest.raises(ValueError, match="unknown hyperparameter 'momentum_rate'"):
        ensemble.init_optimizer(injected, params, momentum_rate=jnp.ones(3))
    with pytest.raises(ValueError, match="members must be a positive int"):
        ensemble.init(net, key, (-1, 3))


def test_stateful_members_with_their_own_keys_equal_separate_runs(key):
    net = jaxnn.serial(jaxnn.dense(4), noisy_counter(), jaxnn.tanh(), jaxnn.dense(1))
    _, params, state = ensemble.init(net, key, (-1, 3), members=2)
    params = _float64(params)
    x, _ = _data(jax.random.key(4))
    y = jnp.sin(x[:, :1])
    optimizer = optax.sgd(0.1)
    step = ensemble.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    keys = jax.random.split(jax.random.key(5), 2)
    trained, new_state, _, _ = step(params, state, ensemble.init_optimizer(optimizer, params),
                                    x, y, keys)
    chex.assert_trees_all_equal(new_state[1]["count"], jnp.array([1, 1], jnp.int32))
    single = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    for k in range(2):
        p, s = ensemble.member(params, k), ensemble.member(state, k)
        expected, _, _, _ = single(p, s, optimizer.init(p), x, y, keys[k])
        chex.assert_trees_all_close(ensemble.member(trained, k), expected, rtol=1e-10)
