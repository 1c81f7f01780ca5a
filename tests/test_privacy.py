"""DP-SGD: per-example clipping and noise by vmap equal a Python loop over examples."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn import privacy


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
        value, g = chain(params, x[i:i + 1], y[i:i + 1])
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
    assert (norms > clip_norm).any() and (norms < clip_norm).any()  # both branches exercised
    clipped, got_norms = privacy.clip_per_example(grads, clip_norm)
    np.testing.assert_allclose(got_norms, norms, rtol=1e-12)
    clipped_norms = jnp.sqrt(sum(jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=1)
                                 for a in jax.tree.leaves(clipped)))
    np.testing.assert_allclose(clipped_norms, np.minimum(norms, clip_norm), rtol=1e-12)
    mean = privacy.clipped_noisy_mean(grads, clip_norm, 0.0, jax.random.key(0))
    chex.assert_trees_all_close(mean, expected, rtol=1e-12)


def test_private_step_equals_the_loop_then_sgd(key):
    net, params, x, y = _problem(key)
    step = privacy.make_private_train_step(net, jaxnn.binary_cross_entropy, optax.sgd(0.5),
                                           clip_norm=1.5, noise_multiplier=0.0, l2=0.01)
    new_params, _, value = step(params, optax.sgd(0.5).init(params), x, y, jax.random.key(0))
    mean, _, loss = _loop_clipped_mean(net, jaxnn.binary_cross_entropy, params, x, y, 1.5)
    mask = jaxnn.weight_mask(params)
    expected = jax.tree.map(lambda p, g, m: p - 0.5 * (g + 0.01 * p * m), params, mean, mask)
    chex.assert_trees_all_close(new_params, expected, rtol=1e-12)
    np.testing.assert_allclose(value, loss + float(jaxnn.l2_penalty(params, 0.01)), rtol=1e-12)


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
    step = privacy.make_private_train_step(net, jaxnn.binary_cross_entropy, optax.adam(0.05),
                                           clip_norm=1.0, noise_multiplier=0.5)
    opt_state = optax.adam(0.05).init(params)
    losses = []
    for i in range(30):
        params, opt_state, value = step(params, opt_state, x, y, jax.random.key(i))
        losses.append(float(value))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(clip_norm=0.0, noise_multiplier=1.0), "clip_norm must be positive, got 0.0"),
    (dict(clip_norm=1.0, noise_multiplier=-1.0), "noise_multiplier must be non-negative"),
])
def test_bad_privacy_settings_are_clear_errors(key, kwargs, message):
    net, _, _, _ = _problem(key)
    with pytest.raises(ValueError, match=message):
        privacy.make_private_train_step(net, jaxnn.binary_cross_entropy, optax.sgd(0.1),
                                        **kwargs)
