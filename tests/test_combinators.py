"""Combinators: serial's backward is the reverse chain of its layers' backward; named layers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnn
from tests.gradcases import registered, run_layer_case

GRADCHECK_CASES = registered("serial")


@pytest.mark.parametrize("case", GRADCHECK_CASES["serial"], ids=repr)
def test_serial_backward_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


def test_serial_backward_is_each_layers_backward_in_reverse(key):
    layers = [jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(2)]
    net = jaxnn.serial(*layers)
    _, params, _ = net.init(key, (-1, 3))
    x = jax.random.normal(key, (5, 3))
    dy = jnp.ones((5, 2))
    _, _, residuals = net.forward(params, (), x)
    grads, dx = net.backward(params, residuals, dy)
    # by hand, the classic loop from L down to 1
    d = dy
    expected = [None] * 3
    for i in (2, 1, 0):
        expected[i], d = layers[i].backward(params[i], residuals[i], d)
    chex.assert_trees_all_close(grads, tuple(expected))
    chex.assert_trees_all_close(dx, d)


def test_serial_params_and_state_are_tuples_per_layer():
    net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1))
    out_shape, params, state = net.init(jax.random.key(0), (-1, 2))
    assert out_shape == (-1, 1)
    assert isinstance(params, tuple)
    assert len(params) == 3
    assert params[1] == ()
    assert state == ()  # no layer has state: the network has none
    assert repr(net) == "serial(dense, relu, dense)"


def test_serial_rejects_non_layers_with_a_hint():
    with pytest.raises(TypeError, match=r"argument 1 .* forget the parentheses"):
        jaxnn.serial(jaxnn.dense(2), jaxnn.relu)
    with pytest.raises(ValueError, match="at least one layer"):
        jaxnn.serial()


def test_serial_rejects_params_of_another_network():
    net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1))
    with pytest.raises(ValueError, match="params must be a tuple of 3 entries"):
        jaxnn.apply(net, ({},), (), jnp.ones((2, 2)))


def test_map_leaves_visits_every_leaf_with_its_path():
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.serial(jaxnn.relu(), jaxnn.dense(1)))
    seen = []
    rebuilt = jaxnn.map_leaves(lambda leaf, path: seen.append(path) or leaf, net)
    assert seen == ["serial/0:dense", "serial/1:serial/0:relu", "serial/1:serial/1:dense"]
    assert repr(rebuilt) == repr(net)


# --- named layers --------------------------------------------------------------------------------


def _named_net():
    return jaxnn.serial(enc=jaxnn.serial(jaxnn.dense(4), jaxnn.tanh()), head=jaxnn.dense(2))


@pytest.mark.parametrize("make", [
    lambda: jaxnn.serial(enc=jaxnn.dense(4), act=jaxnn.relu(), head=jaxnn.dense(2)),
    lambda: jaxnn.serial(("enc", jaxnn.dense(4)), ("act", jaxnn.relu()), ("head", jaxnn.dense(2))),
], ids=["keywords", "pairs"])
def test_named_serial_params_are_dicts_keyed_by_name_in_order(make, key):
    net = make()
    out_shape, params, state = net.init(key, (-1, 3))
    assert out_shape == (-1, 2)
    assert isinstance(params, dict)
    assert list(params) == ["enc", "act", "head"]
    assert params["enc"]["W"].shape == (3, 4)
    assert params["act"] == ()
    assert state == ()
    assert net.names == ("enc", "act", "head")
    assert repr(net) == "serial(enc=dense, act=relu, head=dense)"


def test_named_serial_computes_what_the_positional_one_does(key):
    layers = (jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(2))
    positional = jaxnn.serial(*layers)
    named = jaxnn.serial(a=layers[0], b=layers[1], c=layers[2])
    _, params, _ = positional.init(key, (-1, 3))
    named_params = dict(zip("abc", params, strict=True))
    x = jax.random.normal(key, (5, 3))
    y, _ = jaxnn.apply(positional, params, (), x)
    y_named, new_state = jaxnn.apply(named, named_params, (), x)
    chex.assert_trees_all_close(y_named, y)
    assert new_state == ()

    def loss(apply_params, net):
        return jnp.sum(jnp.sin(jaxnn.apply(net, apply_params, (), x)[0]))

    grads = jax.grad(loss)(params, positional)
    named_grads = jax.grad(loss)(named_params, named)
    chex.assert_trees_all_close(named_grads, dict(zip("abc", grads, strict=True)))


@settings(max_examples=10, deadline=None)
@given(widths=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       names=st.lists(st.from_regex(r"[a-z_][a-z0-9_-]{0,5}", fullmatch=True), min_size=4,
                      max_size=4, unique=True))
def test_any_valid_names_give_the_positional_networks_output(widths, names):
    layers = [jaxnn.dense(w) for w in widths]
    positional = jaxnn.serial(*layers)
    named = jaxnn.serial(*zip(names, layers, strict=False))
    _, params, state = positional.init(jax.random.key(0), (-1, 2))
    _, named_params, named_state = named.init(jax.random.key(0), (-1, 2))
    assert list(named_params) == names[:len(widths)]
    assert state == named_state == ()
    chex.assert_trees_all_equal(tuple(named_params.values()), params)
    x = jnp.arange(6.0).reshape(3, 2)
    chex.assert_trees_all_close(jaxnn.apply(named, named_params, (), x),
                                jaxnn.apply(positional, params, (), x))


def test_named_params_are_found_by_name_not_dict_order(key):
    net = _named_net()
    _, params, _ = net.init(key, (-1, 3))
    x = jax.random.normal(key, (2, 3))
    y, _ = jaxnn.apply(net, params, (), x)
    swapped = {"head": params["head"], "enc": params["enc"]}
    chex.assert_trees_all_close(jaxnn.apply(net, swapped, (), x)[0], y)


def test_replacing_one_named_layers_params_changes_only_that_layer(key):
    net = _named_net()
    k1, k2 = jax.random.split(key)
    _, params, _ = net.init(k1, (-1, 3))
    _, new_head, _ = jaxnn.dense(2).init(k2, (-1, 4))
    replaced = {**params, "head": new_head}
    x = jax.random.normal(key, (5, 3))
    y, _ = jaxnn.apply(net, replaced, (), x)
    hidden, _ = jaxnn.apply(net.sublayers[0], params["enc"], (), x)
    expected, _ = jaxnn.apply(jaxnn.dense(2), new_head, (), hidden)
    chex.assert_trees_all_close(y, expected)
    assert not np.allclose(y, jaxnn.apply(net, params, (), x)[0])


def test_multi_transform_freezes_the_block_named_enc(key):
    net = _named_net()
    _, params, _ = net.init(key, (-1, 3))
    labels = {name: jax.tree.map(lambda _, n=name: "frozen" if n == "enc" else "trained", sub)
              for name, _, sub in jaxnn.core.children(net, params)}
    optimizer = optax.multi_transform(
        {"trained": optax.sgd(0.1), "frozen": optax.set_to_zero()}, labels)
    opt_state = optimizer.init(params)
    x = jax.random.normal(key, (8, 3))
    y = jnp.ones((8, 2))

    def loss(p):
        out, _ = jaxnn.apply(net, p, (), x)
        return jaxnn.mean_squared_error.value(out, y)

    trained = params
    for _ in range(3):
        updates, opt_state = optimizer.update(jax.grad(loss)(trained), opt_state, trained)
        trained = optax.apply_updates(trained, updates)
    chex.assert_trees_all_equal(trained["enc"], params["enc"])
    assert not np.allclose(trained["head"]["W"], params["head"]["W"])
    assert loss(trained) < loss(params)


def test_children_pairs_entries_with_sublayers_by_name_or_position(key):
    named = _named_net()
    _, params, _ = named.init(key, (-1, 3))
    entries = jaxnn.core.children(named, jax.tree.map(lambda a: a, params))  # sorted keys
    assert [(label, sub.name) for label, sub, _ in entries] == [("enc", "serial"),
                                                               ("head", "dense")]
    chex.assert_trees_all_equal(entries[1][2], params["head"])
    positional = jaxnn.serial(jaxnn.dense(2), jaxnn.relu())
    _, p, state = positional.init(key, (-1, 3))
    assert [label for label, _, _ in jaxnn.core.children(positional, p)] == ["0", "1"]
    assert [s for _, _, s in jaxnn.core.children(positional, state, "state")] == [(), ()]
    with pytest.raises(ValueError, match=r"serial: params must be a dict with keys "
                                         r"\['enc', 'head'\].*got keys \['enc'\]"):
        jaxnn.core.children(named, {"enc": params["enc"]})


def test_named_serial_rejects_params_with_other_names(key):
    net = _named_net()
    _, params, _ = net.init(key, (-1, 3))
    with pytest.raises(ValueError, match=r"params must be a dict with keys \['enc', 'head'\]"):
        jaxnn.apply(net, {"enc": params["enc"], "out": params["head"]}, (), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"params must be a dict with keys"):
        jaxnn.apply(net, (params["enc"], params["head"]), (), jnp.ones((2, 3)))


@pytest.mark.parametrize("combinator", [jaxnn.serial, jaxnn.parallel])
def test_bad_names_are_clear_errors(combinator):
    d = jaxnn.dense(2)
    with pytest.raises(TypeError, match="either all by position or all by name"):
        combinator(d, head=d)
    with pytest.raises(TypeError, match=r"argument 1 is not a \(name, layer\) pair"):
        combinator(("a", d), d)
    with pytest.raises(ValueError, match=r"duplicate layer names \['a'\]"):
        combinator(("a", d), ("b", d), ("a", d))
    for bad in ("", "a/b", "a:b", "two words", "0", 3, None):
        with pytest.raises(ValueError, match=f"layer name {bad!r} is invalid"):
            combinator((bad, d), ("ok", d))
    with pytest.raises(TypeError, match=r"layer 'head' is .*forget the parentheses"):
        combinator(enc=d, head=jaxnn.relu)


def test_named_parallel_params_are_dicts_and_outputs_stay_a_tuple(key):
    net = jaxnn.parallel(wide=jaxnn.dense(3), narrow=jaxnn.dense(1))
    out_shapes, params, state = net.init(key, (-1, 2))
    assert out_shapes == ((-1, 3), (-1, 1))
    assert list(params) == ["wide", "narrow"]
    assert state == ()
    (a, b), new_state = jaxnn.apply(net, params, (), jnp.ones((4, 2)))
    assert (a.shape, b.shape, new_state) == ((4, 3), (4, 1), ())


def test_rebuild_and_map_leaves_keep_names_in_paths():
    net = jaxnn.serial(enc=jaxnn.serial(jaxnn.dense(3), jaxnn.relu()),
                       head=jaxnn.parallel(a=jaxnn.dense(1), b=jaxnn.dense(2)))
    seen = []
    rebuilt = jaxnn.map_leaves(lambda leaf, path: seen.append(path) or leaf, net)
    assert seen == ["serial/enc:serial/0:dense", "serial/enc:serial/1:relu",
                    "serial/head:parallel/a:dense", "serial/head:parallel/b:dense"]
    assert rebuilt.names == ("enc", "head")
    assert rebuilt.sublayers[1].names == ("a", "b")
    assert repr(rebuilt) == repr(net)


def test_gradient_check_rows_are_named_by_layer_name(key):
    net = jaxnn.serial(enc=jaxnn.dense(4), act=jaxnn.tanh(),
                       head=jaxnn.parallel(a=jaxnn.dense(1), b=jaxnn.dense(2)),
                       join=jaxnn.concatenate())
    _, params, _ = net.init(key, (-1, 3))
    x = jax.random.normal(key, (5, 3))
    y = jax.random.normal(jax.random.split(key)[0], (5, 3))
    report = jaxnn.gradcheck.check_model(net, jaxnn.mean_squared_error, params, x, y,
                                         per_layer=False)
    assert report.passed, "\n" + report.table()
    rows = {(c.layer, c.parameter) for c in report.comparisons}
    assert {("serial/enc:dense", "W"), ("serial/head:parallel/a:dense", "b"),
            ("serial/head:parallel/b:dense", "W")} <= rows


# --- one meaning of "no state" -------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: jaxnn.serial(jaxnn.dense(3), jaxnn.relu(), jaxnn.serial(jaxnn.dense(2))),
    lambda: jaxnn.serial(a=jaxnn.dense(3), b=jaxnn.residual(jaxnn.dense(3))),
    lambda: jaxnn.parallel(jaxnn.dense(3), jaxnn.remat(jaxnn.serial(jaxnn.dense(1)))),
], ids=["serial", "named+residual", "parallel+remat"])
def test_a_network_without_state_has_state_empty_tuple(make, key):
    net = make()
    _, params, state = net.init(key, (-1, 3))
    assert state == ()
    _, new_state = jaxnn.apply(net, params, state, jnp.ones((2, 3)))
    assert new_state == ()


def test_a_network_with_some_state_keeps_the_aligned_structure(key):
    net = jaxnn.serial(dense=jaxnn.dense(3), norm=jaxnn.batch_norm(), out=jaxnn.dense(1))
    _, params, state = net.init(key, (-1, 2))
    assert list(state) == ["dense", "norm", "out"]
    assert state["dense"] == ()
    assert state["out"] == ()
    assert set(state["norm"]) == {"mean", "var"}
    _, new_state = jaxnn.apply(net, params, state, jnp.ones((4, 2)), train=True)
    chex.assert_trees_all_equal_structs(new_state, state)
    positional = jaxnn.serial(jaxnn.dense(3), jaxnn.residual(jaxnn.batch_norm()))
    _, _, state = positional.init(key, (-1, 2))
    assert state[0] == ()
    assert len(state[1]) == 1
    assert set(state[1][0]) == {"mean", "var"}


def test_the_check_mode_names_the_layer_by_its_name():
    net = jaxnn.serial(enc=jaxnn.dense(2), act=jaxnn.relu(), head=jaxnn.dense(1))
    _, params, _ = net.init(jax.random.key(0), (-1, 2))
    params = {**params, "head": {**params["head"], "b": jnp.array([jnp.inf])}}
    with pytest.raises(jaxnn.debug.NonFiniteError, match=r"parameters of serial/head:dense"):
        jaxnn.debug.checked_apply(net, params, (), jnp.ones((1, 2)))


def test_checkpoint_paths_and_mismatch_messages_name_the_layers(key, tmp_path):
    net = _named_net()
    _, params, _ = net.init(key, (-1, 3))
    path = str(tmp_path / "named.npz")
    jaxnn.checkpoint.save(path, params)
    restored = jaxnn.checkpoint.load(path, params)
    chex.assert_trees_all_equal(restored, params)
    _, other, _ = jaxnn.serial(enc=jaxnn.serial(jaxnn.dense(4), jaxnn.tanh()),
                               out=jaxnn.dense(2)).init(key, (-1, 3))
    with pytest.raises(jaxnn.checkpoint.CheckpointError, match=r"\['out'\]\['W'\]"):
        jaxnn.checkpoint.load(path, other)
