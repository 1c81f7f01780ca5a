"""conv: shapes across configurations, values against a direct loop, the hand-derived backward."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from tests.gradcases import registered, run_layer_case

GRADCHECK_CASES = registered("conv")


@pytest.mark.parametrize("case", GRADCHECK_CASES["conv"], ids=repr)
def test_conv_backward_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


CONFIGS = list(itertools.product(
    [(3,), (3, 2)],  # rank 1 and 2
    [1, 2, 3],  # strides
    ["SAME", "VALID", "explicit"],  # padding
    [1, 2],  # dilation
    [1, 2],  # feature groups
))


def _make(kernel, strides, padding, dilation, groups, features=4):
    if padding == "explicit":
        padding = ((2, 1), (0, 3))[: len(kernel)]
    return jaxnn.conv(features, kernel, strides=strides, padding=padding, dilation=dilation,
                      feature_group_count=groups)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_init_shape_equals_forward_shape(config):
    kernel = config[0]
    layer = _make(*config)
    in_shape = (-1, *(9, 8)[: len(kernel)], 4)
    out_shape, params, state = layer.init(jax.random.key(0), in_shape)
    x = jax.ShapeDtypeStruct((3, *in_shape[1:]), jnp.float32)
    y = jax.eval_shape(lambda p, x: jaxnn.apply(layer, p, state, x)[0], params, x)
    assert out_shape == (-1, *y.shape[1:])
    assert y.shape[0] == 3
    chex.assert_shape(params["W"], (*kernel, 4 // config[4], 4))
    chex.assert_shape(params["b"], (4,))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_hand_backward_equals_autodiff_across_configurations(config, key):
    # the wide product against jax.vjp; the float64 gradcheck above covers a sample of it with
    # finite differences too
    layer = _make(*config)
    k1, k2, k3 = jax.random.split(key, 3)
    in_shape = (2, *(9, 8)[: len(config[0])], 4)
    _, params, _ = layer.init(k1, in_shape)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(k2, in_shape, jnp.float64)
    y, _, residuals = layer.forward(params, (), x)
    dy = jax.random.normal(k3, y.shape, jnp.float64)
    hand = layer.backward(params, residuals, dy)
    _, vjp = jax.vjp(lambda p, x: layer.forward(p, (), x)[0], params, x)
    chex.assert_trees_all_close(hand, vjp(dy), rtol=1e-12, atol=1e-12)


def _loop_conv(x, w, b, strides, pads, dilation, groups):
    """The defining sum ``Z[n, o, f] = Σ_j Σ_c x̃[n, o·s + j·d, c] W[j, c, f] + b[f]``, looped."""
    rank = w.ndim - 2
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    window, c_group, c_out = w.shape[:rank], w.shape[-2], w.shape[-1]
    spatial = x.shape[1:-1]
    out = [(n - ((k - 1) * d + 1)) // s + 1
           for n, k, d, s in zip(spatial, window, dilation, strides, strict=True)]
    z = np.zeros((x.shape[0], *out, c_out))
    f_group = c_out // groups
    for o in itertools.product(*map(range, out)):
        for j in itertools.product(*map(range, window)):
            pos = tuple(oi * s + ji * d for oi, ji, s, d in zip(o, j, strides, dilation,
                                                                 strict=True))
            for f in range(c_out):
                g = f // f_group
                xs = x[(slice(None), *pos, slice(g * c_group, (g + 1) * c_group))]
                z[(slice(None), *o, f)] += xs @ w[(*j, slice(None), f)]
    return z + b


@pytest.mark.parametrize(
    ("kernel", "strides", "padding", "pads", "dilation", "groups"),
    [
        ((3,), (2,), "SAME", ((1, 1),), (1,), 1),  # n=7, out=4, total pad 2
        ((3,), (1,), ((2, 0),), ((2, 0),), (2,), 2),
        ((3, 2), (2, 1), "VALID", ((0, 0), (0, 0)), (1, 2), 1),
        ((2, 2), (1, 2), "SAME", ((0, 1), (0, 1)), (1, 1), 2),
    ],
)
def test_forward_is_the_defining_sum(kernel, strides, padding, pads, dilation, groups, key):
    layer = jaxnn.conv(4, kernel, strides=strides, padding=padding, dilation=dilation,
                       feature_group_count=groups, dtype=jnp.float64)
    in_shape = (2, *(7, 6)[: len(kernel)], 4)
    k1, k2, k3 = jax.random.split(key, 3)
    _, params, _ = layer.init(k1, in_shape)
    params["b"] = jax.random.normal(k3, (4,), jnp.float64)
    x = jax.random.normal(k2, in_shape, jnp.float64)
    y, _ = jaxnn.apply(layer, params, (), x)
    expected = _loop_conv(*map(np.asarray, (x, params["W"], params["b"])), strides, pads,
                          dilation, groups)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_backward_is_the_seeds_formulas_for_a_1x1_convolution(key):
    # a 1×1 convolution is a dense layer applied at every position:
    # dW = A_prevᵀ dZ, db = Σ dZ, dA_prev = dZ Wᵀ over all (example, position) rows
    k1, k2, k3 = jax.random.split(key, 3)
    layer = jaxnn.conv(3, (1, 1), dtype=jnp.float64)
    _, params, _ = layer.init(k1, (-1, 4, 5, 2))
    x = jax.random.normal(k2, (2, 4, 5, 2))
    dz = jax.random.normal(k3, (2, 4, 5, 3))
    _, _, residuals = layer.forward(params, (), x)
    grads, dx = layer.backward(params, residuals, dz)
    a, d, w = np.asarray(x).reshape(-1, 2), np.asarray(dz).reshape(-1, 3), params["W"][0, 0]
    np.testing.assert_allclose(grads["W"][0, 0], a.T @ d, rtol=1e-12)
    np.testing.assert_allclose(grads["b"], d.sum(0), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(dx).reshape(-1, 2), d @ np.asarray(w).T, rtol=1e-12)


def test_float32_parameters_and_input_give_float32_output_and_gradients(key):
    layer = jaxnn.conv(2, (3, 3), strides=2)
    _, params, _ = layer.init(key, (-1, 6, 6, 3))
    x = jnp.ones((2, 6, 6, 3), jnp.float32)
    y, _ = jaxnn.apply(layer, params, (), x)
    grads, dx = jax.grad(lambda p, x: jnp.sum(jaxnn.apply(layer, p, (), x)[0]), (0, 1))(params, x)
    assert y.dtype == dx.dtype == grads["W"].dtype == grads["b"].dtype == jnp.float32


def test_default_initialization_is_lecun_normal_with_the_grouped_fan_in():
    layer = jaxnn.conv(256, (3, 3), feature_group_count=2)
    _, params, _ = layer.init(jax.random.key(1), (-1, 8, 8, 64))
    w = np.asarray(params["W"])
    assert w.shape == (3, 3, 32, 256)
    assert abs(w.std() * np.sqrt(3 * 3 * 32) - 1) < 0.02  # fan_in = 3·3·(64/2)
    np.testing.assert_array_equal(params["b"], 0)


def test_wrong_rank_names_the_layer_and_the_expected_layout():
    layer = jaxnn.conv(2, (3, 3))
    _, params, _ = layer.init(jax.random.key(0), (-1, 5, 5, 2))
    with pytest.raises(ValueError, match=r"conv: expected an input of rank 4 \(batch, height, "
                                         r"width, channels\).*\(2, 5, 2\)"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 5, 2)))


def test_wrong_channel_count_names_expected_and_received_under_jit():
    layer = jaxnn.conv(2, (3,), feature_group_count=2)
    _, params, _ = layer.init(jax.random.key(0), (-1, 5, 4))
    with pytest.raises(ValueError, match=r"conv: expected 4 input channels.*\(2, 5, 3\)"):
        jax.jit(lambda p, x: jaxnn.apply(layer, p, (), x))(params, jnp.ones((2, 5, 3)))


def test_input_smaller_than_the_dilated_kernel_is_an_error():
    layer = jaxnn.conv(2, (3,), padding="VALID", dilation=3)
    with pytest.raises(ValueError, match=r"conv: a window spanning \(7,\) entries does not fit"):
        layer.init(jax.random.key(0), (-1, 6, 1))


def test_integer_input_is_rejected():
    layer = jaxnn.conv(2, (3,))
    _, params, _ = layer.init(jax.random.key(0), (-1, 5, 1))
    with pytest.raises(TypeError, match="conv: expected a floating-point input"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 5, 1), jnp.int32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 3}, r"kernel_size must be a tuple with one entry per spatial axis"),
        ({"kernel_size": (3, 3, 3, 3)}, r"kernel_size must have 1, 2 or 3 entries"),
        ({"kernel_size": (3, 0)}, r"kernel_size must be a positive int or a tuple of 2"),
        ({"strides": (1, 2, 3)}, r"strides must be a positive int or a tuple of 2"),
        ({"dilation": 0}, r"dilation must be a positive int"),
        ({"padding": "FULL"}, r"padding must be 'SAME', 'VALID' or 2 \(low, high\) pairs"),
        ({"padding": ((1, 1),)}, r"padding must be 'SAME', 'VALID' or 2 \(low, high\) pairs"),
        ({"padding": ((1, -1), (0, 0))}, r"padding must be .* pairs of ints >= 0"),
        ({"feature_group_count": 3}, r"features \(4\) must be divisible by feature_group_count"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    kwargs = {"kernel_size": (3, 3), **kwargs}
    with pytest.raises((ValueError, TypeError), match="conv: " + message):
        jaxnn.conv(4, **kwargs)


def test_input_channels_must_divide_into_groups():
    with pytest.raises(ValueError, match=r"conv: input channels \(3\) must be divisible by "
                                         r"feature_group_count \(2\)"):
        jaxnn.conv(4, (3,), feature_group_count=2).init(jax.random.key(0), (-1, 5, 3))


def test_conv_trains_in_a_serial_network_with_the_explicit_chain(key):
    net = jaxnn.serial(jaxnn.conv(3, (3,), strides=2), jaxnn.relu(), jaxnn.flatten(),
                       jaxnn.dense(1))
    _, params, _ = net.init(key, (-1, 8, 2))
    x = jax.random.normal(key, (4, 8, 2))
    y = jnp.zeros((4, 1))
    (_value, _), grads = jaxnn.value_and_grad(net, jaxnn.mean_squared_error)(params, (), x, y)
    auto = jax.grad(lambda p: jaxnn.mean_squared_error.value(
        jaxnn.reference_apply(net, p, (), x)[0], y))(params)
    chex.assert_trees_all_close(grads, auto, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("kernel", "strides", "dilation"),
                         [((3,), 2, 1), ((4,), 3, 2), ((2, 3), (2, 3), (3, 1)), ((5, 4), 1, 2)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_string_padding_resolves_as_in_jax_lax(kernel, strides, dilation, padding, key):
    layer = jaxnn.conv(2, kernel, strides=strides, padding=padding, dilation=dilation,
                       use_bias=False)
    in_shape = (1, *(11, 10)[: len(kernel)], 2)
    _, params, _ = layer.init(key, in_shape)
    x = jax.random.normal(key, in_shape)
    rank = len(kernel)
    letters = "HW"[-rank:] if rank == 2 else "W"
    expected = jax.lax.conv_general_dilated(
        x, params["W"].astype(x.dtype), (strides,) * rank if isinstance(strides, int)
        else strides, padding, rhs_dilation=(dilation,) * rank if isinstance(dilation, int)
        else dilation, dimension_numbers=(f"N{letters}C", f"{letters}IO", f"N{letters}C"),
    )
    np.testing.assert_allclose(jaxnn.apply(layer, params, (), x)[0], expected, rtol=1e-12)
