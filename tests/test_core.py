"""The layer protocol: layers usable where JAX expects functions, and errors that name the layer
and say what the protocol expects."""

import pathlib
import pydoc

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _my_scale(forward=None, backward=None):
    """A user's own layer ``y = w·x`` (one weight per feature), with replaceable halves."""

    def init(key, in_shape):
        return tuple(in_shape), {"w": jax.random.normal(key, (in_shape[-1],))}, ()

    def good_forward(params, state, x, *, key=None, train=False):
        return params["w"][None, :] * x, state, x

    def good_backward(params, x, dy):
        return {"w": jnp.sum(dy * x, axis=0)}, dy * params["w"][None, :]

    return jaxnn.Layer("my_scale", init, forward or good_forward, backward or good_backward)


def _grad_through(layer, x):
    _, params, state = layer.init(jax.random.key(0), x.shape)
    return jax.grad(lambda p, x: jnp.sum(jaxnn.apply(layer, p, state, x)[0]), argnums=(0, 1))(
        params, x)


# --- layers and losses where JAX expects functions ---------------------------------------------


def test_layers_are_usable_where_jax_expects_a_function():
    x = jnp.array([[-1.0, 2.0, 0.5]])
    chex.assert_trees_all_close(jax.jit(jaxnn.relu())(x), jnp.maximum(x, 0))
    chex.assert_trees_all_close(jax.jit(jaxnn.tanh())(x), jnp.tanh(x))


def test_layers_keep_their_named_tuple_reading():
    layer = jaxnn.dense(3)
    name, init, forward, backward, *_ = layer
    assert (name, init, forward, backward) == (layer.name, layer.init, layer.forward,
                                               layer.backward)
    assert layer._fields[:4] == ("name", "init", "forward", "backward")
    assert layer[0] == "dense"
    assert len(layer) == len(layer._fields)
    renamed = layer._replace(name="my_dense")
    assert renamed.name == "my_dense"
    assert renamed.forward is layer.forward
    assert layer.name == "dense"
    with pytest.raises(AttributeError):
        layer.name = "other"  # frozen
    loss = jaxnn.mean_squared_error._replace(name="my_mse")
    assert loss.name == "my_mse"
    assert loss.grad is jaxnn.mean_squared_error.grad


def test_calling_a_layer_with_parameters_says_what_to_write_instead():
    x = jnp.ones((4, 2))
    with pytest.raises(TypeError, match=r"(?s)dense: this layer has parameters.*layer\.init.*"
                                        r"jaxnn\.apply\(layer, params, state, x\)") as error:
        jaxnn.dense(3)(x)
    assert "jaxnn.relu()" in str(error.value)
    with pytest.raises(TypeError, match="batch_norm: this layer has parameters"):
        jaxnn.batch_norm()(x)
    chex.assert_trees_all_close(jaxnn.relu()(x), x)  # parameter-free layers still run


# --- a user's layer that breaks the protocol ---------------------------------------------------


def test_forward_returning_two_values_is_named():
    def forward(params, state, x, *, key=None, train=False):
        return params["w"][None, :] * x, state

    layer = _my_scale(forward=forward)
    _, params, _ = layer.init(jax.random.key(0), (-1, 3))
    with pytest.raises(TypeError, match=r"my_scale: forward must return a tuple \(y, new_state, "
                                        r"residuals\), got a tuple of 2 values"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="my_scale: forward must return"):
        _grad_through(layer, jnp.ones((2, 3)))


def test_backward_returning_the_wrong_structure_is_named():
    def one_value(params, x, dy):
        return dy * params["w"][None, :]

    def list_of_grads(params, x, dy):
        return [jnp.sum(dy * x, axis=0)], dy * params["w"][None, :]

    with pytest.raises(TypeError, match=r"my_scale: backward must return a tuple \(dparams, dx\), "
                                        r"got an array of shape \(2, 3\)"):
        _grad_through(_my_scale(backward=one_value), jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="my_scale: backward must return \\(dparams, dx\\) with "
                                        "dparams shaped like params"):
        _grad_through(_my_scale(backward=list_of_grads), jnp.ones((2, 3)))


def test_backward_returning_wrong_shapes_is_named():
    def unsummed_dw(params, x, dy):
        return {"w": dy * x}, dy * params["w"][None, :]

    def summed_dx(params, x, dy):
        return {"w": jnp.sum(dy * x, axis=0)}, jnp.sum(dy * params["w"][None, :], axis=0)

    with pytest.raises(ValueError, match=r"my_scale: backward returned dparams\['w'\] of shape "
                                         r"\(2, 3\), expected \(3,\)"):
        _grad_through(_my_scale(backward=unsummed_dw), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"my_scale: backward returned dx of shape \(3,\), "
                                         r"expected \(2, 3\)"):
        jax.jit(lambda x: _grad_through(_my_scale(backward=summed_dx), x))(jnp.ones((2, 3)))


def test_a_correct_users_layer_passes_the_protocol_checks():
    layer = _my_scale()
    report = jaxnn.gradcheck.check_layer(layer, (4, 3))
    assert report.passed, report.table()
    grads = jax.vmap(lambda x: _grad_through(layer, x[None])[1])(jnp.ones((5, 3)))
    chex.assert_shape(grads, (5, 1, 3))


# --- batch-norm state -----------------------------------------------------------------------


def test_batch_norm_state_of_the_wrong_size_blames_the_state():
    layer = jaxnn.batch_norm()
    _, params, _ = layer.init(jax.random.key(0), (-1, 3))
    _, _, other_state = layer.init(jax.random.key(0), (-1, 5))
    with pytest.raises(ValueError, match=r"batch_norm: state\['mean'\] has shape \(5,\), but the "
                                         r"input and the parameters have 3 features"):
        jaxnn.apply(layer, params, other_state, jnp.ones((4, 3)), train=True)


def test_batch_norm_without_its_state_says_how_to_carry_it():
    layer = jaxnn.batch_norm()
    _, params, _ = layer.init(jax.random.key(0), (-1, 3))
    with pytest.raises(ValueError, match=r"state must be the dict .* got \(\); a model with batch "
                                         r"norm carries state: keep the state init returns"):
        jaxnn.apply(layer, params, (), jnp.ones((4, 3)), train=True)


# --- forward mode, documented ----------------------------------------------------------------


def test_forward_mode_is_documented_with_the_way_to_do_it():
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), jaxnn.dense(1))
    _, params, state = net.init(jax.random.key(0), (-1, 2))
    x = jnp.array([[0.3, -0.7]])

    def through_apply(x):
        return jnp.sum(jaxnn.apply(net, params, state, x)[0])

    def through_reference(x):
        return jnp.sum(jaxnn.reference_apply(net, params, state, x)[0])

    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(through_apply, (x,), (x,))
    np.testing.assert_allclose(jax.hessian(through_apply)(x), jax.hessian(through_reference)(x),
                               rtol=1e-9)
    for text in [pydoc.getdoc(jaxnn.apply), (ROOT / "README.md").read_text()]:
        assert "jax.jvp" in text
        assert "jax.jacfwd" in text
        assert "jax.linearize" in text
        assert "reference_apply" in text
        assert "jax.hessian" in text


# --- defaults that differ from Flax and PyTorch ------------------------------------------------


def test_defaults_that_differ_from_flax_are_listed_and_each_docstring_says_so():
    table = (ROOT / "docs" / "guides" / "porting.md").read_text()
    for row in ["`avg_pool` padding", "pooling strides", "running variance",
                "`layer_norm` `epsilon`", "`gelu`", "`leaky_relu` derivative"]:
        assert row in table, row
    for layer in [jaxnn.avg_pool, jaxnn.max_pool, jaxnn.batch_norm, jaxnn.layer_norm,
                  jaxnn.gelu, jaxnn.leaky_relu]:
        assert "docs/guides/porting.md" in pydoc.getdoc(layer), layer.__name__


def test_the_listed_differences_are_real():
    x = jnp.array([[0.0, -1.5, 0.7]])
    # gelu: exact here, jax.nn's default is the tanh form, which approximate=True gives
    assert not np.allclose(jaxnn.gelu()(x), jax.nn.gelu(x), rtol=1e-12)
    chex.assert_trees_all_close(jaxnn.gelu(approximate=True)(x), jax.nn.gelu(x), rtol=1e-9)
    # leaky_relu at exactly 0: the slope here, 1 in jax.nn
    slope = jax.grad(lambda z: jaxnn.leaky_relu(0.1)(z).sum())(jnp.zeros((1, 1)))
    assert float(slope[0, 0]) == pytest.approx(0.1)
    assert float(jax.grad(lambda z: jax.nn.leaky_relu(z, 0.1))(0.0)) == 1.0
    # avg_pool: padding excluded by default, included with count_include_pad=True
    row = jnp.array([[[3.0], [3.0]]])
    assert float(jaxnn.avg_pool((2,), padding=((1, 0),))(row)[0, 0, 0]) == 3.0
    assert float(jaxnn.avg_pool((2,), padding=((1, 0),), count_include_pad=True)(row)[0, 0, 0]) \
        == 1.5


def test_map_params_is_the_one_walk_over_layers_and_their_params():
    """``map_params`` calls ``fn(path, leaf, params)`` in network order for every leaf, through
    positional and named combinators, and rebuilds the containers (tuples, name-keyed dicts);
    ``weight_mask`` is one such walk."""
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.relu(),
                       jaxnn.residual(jaxnn.serial(enc=jaxnn.dense(3), act=jaxnn.tanh())))
    _, params, _ = net.init(jax.random.key(0), (-1, 3))
    calls = []
    out = jaxnn.core.map_params(lambda path, leaf, p: calls.append((path, leaf.name)) or
                                len(jax.tree.leaves(p)), net, params)
    assert calls == [("serial/0:dense", "dense"), ("serial/1:relu", "relu"),
                     ("serial/2:residual/0:serial/enc:dense", "dense"),
                     ("serial/2:residual/0:serial/act:tanh", "tanh")]
    assert out == (2, 0, ({"enc": 2, "act": 0},))
    assert jaxnn.weight_mask(net, params) == (
        {"W": True, "b": False}, (), ({"enc": {"W": True, "b": False}, "act": ()},))
    with pytest.raises(ValueError, match="serial: params must be a tuple of 3 entries"):
        jaxnn.core.map_params(lambda *a: None, net, params[:2])
