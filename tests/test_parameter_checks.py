"""Every layer checks its parameters against its configuration, and takes any integer type.

The layers are those of the gradient-check registry (``jaxnn.gradcheck.LAYER_CASES``):
each leaf layer with parameters refuses a mis-shaped, missing, extra or integer entry with an
error naming the layer and the entry, also while tracing under ``jit``; each leaf layer without
parameters refuses parameters. Integer arguments accept ``np.int64`` and refuse ``True``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from jaxnn.gradcheck import LAYER_CASES, LayerCase


def _leaf_cases() -> list[tuple[str, LayerCase]]:
    """The first registered case of each exported leaf layer (combinators are not leaves)."""
    cases = []
    for name, entries in sorted(LAYER_CASES.items()):
        # concatenate takes a tuple of inputs: not a one-input leaf
        layer_cases = [c for c in entries
                       if isinstance(c, LayerCase) and isinstance(c.in_shape[0], int)]
        if layer_cases and not layer_cases[0].make().sublayers:
            cases.append((name, layer_cases[0]))
    return cases


def _setup(case: LayerCase):
    """``(layer, params, state, x, train)`` for a case, the input as the gradient check's."""
    layer = case.make()
    kwargs = dict(case.options)
    _, params, state = layer.init(jax.random.key(0), case.in_shape)
    state = kwargs.get("state", state)
    if "x" in kwargs:
        x = kwargs["x"]
    elif jnp.issubdtype(kwargs.get("input_dtype", jnp.float64), jnp.integer):
        x = jnp.zeros(case.in_shape, kwargs["input_dtype"])
    else:
        x = jax.random.normal(jax.random.key(1), case.in_shape)
    train = kwargs.get("train", False) and layer.name != "dropout"
    return layer, params, state, x, train


LEAVES = _leaf_cases()
WITH_PARAMS = [(n, c) for n, c in LEAVES if jax.tree_util.tree_leaves(_setup(c)[1])]
WITHOUT_PARAMS = [(n, c) for n, c in LEAVES if not jax.tree_util.tree_leaves(_setup(c)[1])]


def test_the_registry_has_leaves_with_and_without_parameters():
    names = {n for n, _ in WITH_PARAMS}
    assert {"dense", "conv", "batch_norm", "layer_norm", "rms_norm", "embedding"} <= names
    assert {"relu", "max_pool", "dropout", "reshape"} <= {n for n, _ in WITHOUT_PARAMS}


def _run(layer, params, state, x, train, jit):
    def run(params, state, x):
        return jaxnn.apply(layer, params, state, x, train=train)

    return (jax.jit(run) if jit else run)(params, state, x)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(("name", "case"), WITH_PARAMS, ids=[n for n, _ in WITH_PARAMS])
def test_a_mis_shaped_entry_names_the_layer_the_entry_and_both_shapes(name, case, jit):
    layer, params, state, x, train = _setup(case)
    name = layer.name  # what the errors call it
    _run(layer, params, state, x, train, jit)  # the layer's own params run
    for entry, value in params.items():
        # one more entry on the last axis: a size no input can justify
        wrong = jnp.zeros((*value.shape[:-1], value.shape[-1] + 1), value.dtype)
        got = rf"got \({', '.join(map(str, wrong.shape))},?\)"
        with pytest.raises(ValueError, match=rf"{name}: .*params\['{entry}'\] must have shape "
                                             rf".*{got}|{name}: expected input with"):
            _run(layer, {**params, entry: wrong}, state, x, train, jit)
        with pytest.raises(ValueError, match=rf"{name}: params\['{entry}'\] must have shape"):
            _run(layer, {**params, entry: value[None]}, state, x, train, jit)  # an extra axis


@pytest.mark.parametrize(("name", "case"), WITH_PARAMS, ids=[n for n, _ in WITH_PARAMS])
def test_a_missing_entry_is_named_not_a_key_error(name, case):
    layer, params, state, x, train = _setup(case)
    name = layer.name  # what the errors call it
    for entry in params:
        rest = {k: v for k, v in params.items() if k != entry}
        with pytest.raises(ValueError, match=rf"{name}: params lack the entry '{entry}'"):
            _run(layer, rest, state, x, train, jit=True)


@pytest.mark.parametrize(("name", "case"), WITH_PARAMS, ids=[n for n, _ in WITH_PARAMS])
def test_an_extra_entry_and_integer_entries_are_named(name, case):
    layer, params, state, x, train = _setup(case)
    name = layer.name  # what the errors call it
    first = next(iter(params))
    with pytest.raises(ValueError, match=rf"{name}: params have an unexpected entry 'extra'"):
        _run(layer, {**params, "extra": params[first]}, state, x, train, jit=False)
    integer = params[first].astype(jnp.int32)
    with pytest.raises(TypeError, match=rf"{name}: params\['{first}'\] must be a floating-point "
                                        r"array, got dtype int32"):
        _run(layer, {**params, first: integer}, state, x, train, jit=False)
    with pytest.raises(ValueError, match=rf"{name}: params must be a dict"):
        _run(layer, tuple(params.values()), state, x, train, jit=False)


@pytest.mark.parametrize(("name", "case"), WITHOUT_PARAMS, ids=[n for n, _ in WITHOUT_PARAMS])
def test_a_layer_without_parameters_refuses_parameters(name, case):
    layer, params, state, x, train = _setup(case)
    name = layer.name  # what the errors call it
    _run(layer, params, state, x, train, jit=False)
    with pytest.raises(ValueError, match=rf"{name}: takes no parameters, got params with 1 "):
        _run(layer, {"W": jnp.ones((2, 2))}, state, x, train, jit=True)


def test_dense_refuses_a_wider_weight_and_a_broadcast_bias():
    layer = jaxnn.dense(3)
    _, params, _ = layer.init(jax.random.key(0), (-1, 4))
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match=r"dense: params\['W'\] must have shape \(any, 3\), "
                                         r"got \(4, 5\)"):
        jaxnn.apply(layer, {**params, "W": jnp.ones((4, 5))}, (), x)
    with pytest.raises(ValueError, match=r"dense: params\['b'\] must have shape \(3,\), got "
                                         r"\(1,\)"):
        jaxnn.apply(layer, {**params, "b": jnp.ones(1)}, (), x)
    with pytest.raises(ValueError, match="dense: params have an unexpected entry 'b'"):
        jaxnn.apply(jaxnn.dense(3, use_bias=False), params, (), x)


def test_params_of_a_same_depth_network_of_other_widths_are_refused():
    def net(width):
        return jaxnn.serial(jaxnn.dense(width), jaxnn.relu(), jaxnn.dense(2))

    _, other_params, state = net(5).init(jax.random.key(0), (-1, 3))
    with pytest.raises(ValueError, match=r"dense: params\['W'\] must have shape \(any, 4\), "
                                         r"got \(3, 5\)"):
        jaxnn.apply(net(4), other_params, state, jnp.ones((2, 3)))


# --- integer arguments -------------------------------------------------------------------------

INTEGER_ARGUMENTS = [
    (lambda i: jaxnn.dense(i(3)), (2, 4)),
    (lambda i: jaxnn.conv(i(3), (i(3),), strides=i(2), dilation=i(1),
                          padding=((i(1), i(1)),)), (2, 7, 2)),
    (lambda i: jaxnn.conv(i(4), (2, 2), feature_group_count=i(2)), (2, 5, 5, 2)),
    (lambda i: jaxnn.embedding(i(5), i(2)), (2, 3)),
    (lambda i: jaxnn.max_pool((i(2), i(2)), strides=i(1)), (2, 4, 4, 3)),
    (lambda i: jaxnn.avg_pool((i(3),), strides=(i(2),), padding=((i(1), i(1)),)), (2, 6, 3)),
    (lambda i: jaxnn.reshape((i(4), -1)), (2, 12)),
    (lambda i: jaxnn.batch_norm(axis=i(1)), (4, 3, 2)),
    (lambda i: jaxnn.softmax(axis=i(1)), (2, 3, 4)),
]


@pytest.mark.parametrize(("make", "in_shape"), INTEGER_ARGUMENTS)
def test_numpy_integer_arguments_make_the_same_layer_as_python_ints(make, in_shape):
    layer_np, layer_py = make(np.int64), make(int)
    assert layer_np.name == layer_py.name
    out_np, params_np, state_np = layer_np.init(jax.random.key(0), (-1, *in_shape[1:]))
    out_py, params_py, state_py = layer_py.init(jax.random.key(0), (-1, *in_shape[1:]))
    assert out_np == out_py
    assert all(type(d) is int for d in out_np)
    if layer_np.name == "embedding":
        x = jnp.arange(6).reshape(in_shape) % 5
    else:
        x = jax.random.normal(jax.random.key(1), in_shape)
    y_np, _ = jaxnn.apply(layer_np, params_np, state_np, x)
    y_py, _ = jaxnn.apply(layer_py, params_py, state_py, x)
    np.testing.assert_array_equal(y_np, y_py)


@pytest.mark.parametrize(("make", "argument"), [
    (lambda: jaxnn.dense(True), "features"),
    (lambda: jaxnn.conv(True, (3,)), "features"),
    (lambda: jaxnn.conv(2, (True, 3)), "kernel_size"),
    (lambda: jaxnn.conv(2, (3,), strides=True), "strides"),
    (lambda: jaxnn.conv(2, (3,), feature_group_count=True), "feature_group_count"),
    (lambda: jaxnn.conv(2, (3,), padding=((True, 0),)), "padding"),
    (lambda: jaxnn.embedding(True, 3), "num_embeddings"),
    (lambda: jaxnn.embedding(3, np.bool_(True)), "features"),
    (lambda: jaxnn.max_pool((2, True)), "window"),
    (lambda: jaxnn.avg_pool((2,), strides=(True,)), "strides"),
    (lambda: jaxnn.reshape((True, 3)), "shape"),
    (lambda: jaxnn.dense(3.0), "features"),
])
def test_bool_and_float_arguments_are_refused(make, argument):
    with pytest.raises((ValueError, TypeError), match=argument):
        make()


@pytest.mark.parametrize("make", [lambda: jaxnn.batch_norm(axis=True),
                                  lambda: jaxnn.softmax(axis=True)])
def test_bool_axis_is_refused(make):
    with pytest.raises(TypeError, match="axis must be an int, got True"):
        make()
