"""Rematerialization: same gradients, only the input kept, the forward recomputed in backward."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn import precision
from tests.gradcases import registered, run_layer_case

GRADCHECK_CASES = registered("remat")


@pytest.mark.parametrize("case", GRADCHECK_CASES["remat"], ids=repr)
def test_remat_backward_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


def _block(width=6):
    return jaxnn.serial(jaxnn.dense(width), jaxnn.tanh(), jaxnn.dense(width), jaxnn.relu())


def _noisy():
    """Additive noise from the key in training and a call counter in the state."""

    def init(key, in_shape):
        return tuple(in_shape), (), {"calls": jnp.zeros((), jnp.int32)}

    def forward(params, state, x, *, key=None, train=False):
        noise = 0.1 * jax.random.normal(key, x.shape, x.dtype) if train else 0 * x
        return x + noise, {"calls": state["calls"] + 1}, None

    def backward(params, residuals, dy):
        return (), dy

    return jaxnn.core.leaf_layer("noisy", init, forward, backward)


def _pair(key, blocks, n_in=4, m=8):
    """The same network with and without remat around each block, with the same parameters."""
    plain = jaxnn.serial(*blocks, jaxnn.dense(1))
    wrapped = jaxnn.serial(*[jaxnn.remat(b) for b in blocks], jaxnn.dense(1))
    k1, k2, k3 = jax.random.split(key, 3)
    _, params, state = plain.init(k1, (-1, n_in))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)

    def as_remat(tree):  # each block's entry wrapped in remat's 1-tuple; () stays () (no state)
        return tree if tree == () else (*[(t,) for t in tree[:-1]], tree[-1])

    x = jax.random.normal(k2, (m, n_in), jnp.float64)
    y = jax.random.normal(k3, (m, 1), jnp.float64)
    return plain, wrapped, params, as_remat(params), state, as_remat(state), x, y, as_remat


def test_gradients_are_unchanged_by_remat(key):
    plain, wrapped, p, rp, _, _, x, y, as_remat = _pair(key, [_block(), _block()])
    mse = jaxnn.mean_squared_error
    (value, _), grads = jaxnn.value_and_grad(plain, mse)(p, (), x, y)
    (r_value, _), r_grads = jax.jit(jaxnn.value_and_grad(wrapped, mse))(rp, (), x, y)
    np.testing.assert_allclose(r_value, value, rtol=1e-14)
    chex.assert_trees_all_close(r_grads, as_remat(grads), rtol=1e-12)
    # and through jax.grad of apply (the custom_vjp path)
    def objective(model, params):
        return mse(jaxnn.apply(model, params, (), x, train=True)[0], y)

    chex.assert_trees_all_close(jax.grad(lambda q: objective(wrapped, q))(rp), as_remat(grads),
                                rtol=1e-12)


def test_a_random_stateful_block_recomputes_the_same_noise_and_updates_state_once(key):
    block = jaxnn.serial(jaxnn.dense(5), _noisy(), jaxnn.tanh())
    plain, wrapped, p, rp, s, rs, x, y, as_remat = _pair(key, [block])
    chain = jaxnn.value_and_grad(plain, jaxnn.mean_squared_error)
    r_chain = jaxnn.value_and_grad(wrapped, jaxnn.mean_squared_error)
    noise_key = jax.random.key(11)
    (value, new_state), grads = chain(p, s, x, y, noise_key)
    (r_value, r_new_state), r_grads = r_chain(rp, rs, x, y, noise_key)
    np.testing.assert_allclose(r_value, value, rtol=1e-14)
    chex.assert_trees_all_close(r_grads, as_remat(grads), rtol=1e-12)
    assert int(r_new_state[0][0][1]["calls"]) == 1 == int(new_state[0][1]["calls"])


def test_the_forward_keeps_only_the_input_and_the_backward_runs_forward_then_backward(key):
    calls = []
    dense = jaxnn.dense(3)
    spy = dense._replace(
        forward=lambda *a, **k: calls.append("forward") or dense.forward(*a, **k),
        backward=lambda *a: calls.append("backward") or dense.backward(*a))
    layer = jaxnn.remat(jaxnn.serial(spy, jaxnn.relu()))
    _, params, _ = layer.init(key, (-1, 2))
    x = jnp.ones((4, 2))
    _, _, saved = layer.forward(params, (), x, key=None, train=True)
    leaves = jax.tree.leaves(saved)
    assert len(leaves) == 1
    assert leaves[0] is x
    calls.clear()
    layer.backward(params, saved, jnp.ones((4, 3)))
    assert calls == ["forward", "backward"]


def test_the_lowered_step_recomputes_behind_an_optimization_barrier(key):
    """What the program hands XLA: the recomputation, fenced like jax.checkpoint's."""
    plain, wrapped, p, rp, _, _, x, y, _ = _pair(key, [_block(), _block()])

    def lowered(model, params):
        step = jaxnn.make_train_step(model, jaxnn.mean_squared_error, optax.sgd(0.1), jit=False)
        return jax.jit(step).lower(params, (), optax.sgd(0.1).init(params), x, y).as_text()

    plain_text, remat_text = lowered(plain, p), lowered(wrapped, rp)
    # each of the 4 dense layers in the blocks runs its forward product once more
    assert remat_text.count("dot_general") == plain_text.count("dot_general") + 4
    barriers = remat_text.count("optimization_barrier") - plain_text.count("optimization_barrier")
    assert barriers == 2  # one per remat block


def test_policies_and_the_gradient_check_reach_inside_remat(key):
    _, wrapped, _, rp, _, _, x, y, _ = _pair(key, [_block(3)], n_in=2, m=4)
    report = jaxnn.gradcheck.check_model(wrapped, jaxnn.mean_squared_error, rp, x, y)
    report.raise_if_failed()
    assert any("remat/0:serial/0:dense" in c.layer for c in report.comparisons)
    half = precision.apply_policy(wrapped, precision.Policy(compute_dtype=jnp.bfloat16))
    assert half.sublayers[0].name == "remat"
    out, _ = jaxnn.apply(half, rp, (), x.astype(jnp.float32))
    assert out.dtype == jnp.bfloat16


def test_remat_of_a_non_layer_is_a_clear_error():
    with pytest.raises(TypeError, match="did you forget the parentheses"):
        jaxnn.remat(jaxnn.relu)
