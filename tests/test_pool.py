"""Pooling: shapes across configurations, values against numpy, arg-max routing and its ties."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from tests.gradcases import registered, run_layer_case


def distinct(shape, seed=0):
    """Inputs without ties (a shuffled ramp), so every window has a single arg-max."""
    n = int(np.prod(shape))
    values = np.random.default_rng(seed).permutation(n).reshape(shape)
    return jnp.asarray(values / n * 4.0 - 2.0)  # in [-2, 2): padding must never win


GRADCHECK_CASES = registered(
    "max_pool",
    "avg_pool",
    "global_avg_pool",
)


@pytest.mark.parametrize(
    "case", [c for name in ("max_pool", "avg_pool", "global_avg_pool")
             for c in GRADCHECK_CASES[name]], ids=repr,
)
def test_pool_backward_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


CONFIGS = list(itertools.product(
    ["max", "avg"],
    [(2,), (3,), (2, 2), (3, 2)],  # windows of rank 1 and 2
    [None, 1, 2, 3],  # strides (None: the window)
    ["VALID", "SAME", "explicit"],
))


def _make(kind, window, strides, padding):
    if padding == "explicit":
        padding = ((1, 0), (0, 1))[: len(window)]
    pool = jaxnn.max_pool if kind == "max" else jaxnn.avg_pool
    return pool(window, strides=strides, padding=padding)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_init_shape_equals_forward_shape(config):
    layer = _make(*config)
    in_shape = (-1, *(7, 6)[: len(config[1])], 3)
    out_shape, params, state = layer.init(jax.random.key(0), in_shape)
    assert params == ()
    assert state == ()
    x = jax.ShapeDtypeStruct((2, *in_shape[1:]), jnp.float32)
    y = jax.eval_shape(lambda x: jaxnn.apply(layer, (), (), x)[0], x)
    assert out_shape == (-1, *y.shape[1:])
    assert y.shape[0] == 2


def _windows(x, window, strides, pads, fill):
    """Every window of padded ``x`` as ``(N, *out, C, taps)``, looped in numpy."""
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    out = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:-1], window, strides, strict=True)]
    res = np.zeros((x.shape[0], *out, x.shape[-1], int(np.prod(window))))
    for o in itertools.product(*map(range, out)):
        idx = tuple(slice(oi * s, oi * s + k) for oi, s, k in zip(o, strides, window,
                                                                  strict=True))
        res[(slice(None), *o)] = xp[(slice(None), *idx)].reshape(
            x.shape[0], -1, x.shape[-1]).swapaxes(1, 2)
    return res


@pytest.mark.parametrize(
    ("window", "strides", "padding", "pads"),
    [
        ((3,), (2,), "SAME", ((1, 1),)),  # n = 7: out 4, total padding 2
        ((2, 2), (1, 2), "VALID", ((0, 0), (0, 0))),
        ((3, 2), (2, 1), ((1, 2), (1, 0)), ((1, 2), (1, 0))),
        ((2, 3), (2, 2), "SAME", ((0, 1), (0, 1))),  # (7, 6): total padding (1, 1)
    ],
)
def test_values_against_numpy(window, strides, padding, pads):
    x = np.asarray(distinct((2, *(7, 6)[: len(window)], 3)))
    taps = _windows(x, window, strides, pads, np.nan)
    real = ~np.isnan(taps)
    y_max = jaxnn.max_pool(window, strides=strides, padding=padding)(jnp.asarray(x))
    np.testing.assert_array_equal(y_max, np.nanmax(taps, axis=-1))
    y_avg = jaxnn.avg_pool(window, strides=strides, padding=padding)(jnp.asarray(x))
    np.testing.assert_allclose(y_avg, np.nansum(taps, -1) / real.sum(-1), rtol=1e-12)
    y_inc = jaxnn.avg_pool(window, strides=strides, padding=padding,
                           count_include_pad=True)(jnp.asarray(x))
    np.testing.assert_allclose(y_inc, np.nansum(taps, -1) / np.prod(window), rtol=1e-12)


def _input_grad(layer, x, dy):
    _, _, residuals = layer.forward((), (), x)
    return layer.backward((), residuals, dy)[1]


def test_max_tie_in_1d_goes_to_the_first_maximum():
    x = jnp.array([[[1.0], [3.0], [3.0], [0.0], [2.0], [2.0]]])
    dx = _input_grad(jaxnn.max_pool((3,)), x, jnp.array([[[10.0], [20.0]]]))
    np.testing.assert_array_equal(dx[0, :, 0], [0, 10, 0, 0, 20, 0])


def test_max_tie_in_2d_goes_to_the_first_maximum_in_row_major_order():
    # ties at (0, 1) and (1, 0): row-major order visits (0, 1) first
    x = jnp.array([[0.0, 5.0], [5.0, 1.0]]).reshape(1, 2, 2, 1)
    dx = _input_grad(jaxnn.max_pool((2, 2)), x, jnp.full((1, 1, 1, 1), 7.0))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 7], [0, 0]])
    # all four tied: the top-left entry
    dx = _input_grad(jaxnn.max_pool((2, 2)), jnp.ones((1, 2, 2, 1)), jnp.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0], [0, 0]])


def test_max_gradient_accumulates_over_the_overlapping_windows_an_entry_wins():
    x = jnp.array([[[0.0], [4.0], [1.0], [2.0]]])
    # windows of 2 with stride 1: [0,4] [4,1] [1,2]; entry 1 wins twice
    dx = _input_grad(jaxnn.max_pool((2,), strides=1), x, jnp.array([[[1.0], [10.0], [100.0]]]))
    np.testing.assert_array_equal(dx[0, :, 0], [0, 11, 0, 100])


def test_max_padding_never_wins_even_for_negative_inputs():
    x = -jnp.arange(1.0, 6.0).reshape(1, 5, 1)  # [-1, -2, -3, -4, -5]
    layer = jaxnn.max_pool((3,), strides=2, padding="SAME")  # pads (1, 1)
    y, _ = jaxnn.apply(layer, (), (), x)
    np.testing.assert_array_equal(y[0, :, 0], [-1, -2, -4])
    dx = _input_grad(layer, x, jnp.ones_like(y))
    np.testing.assert_array_equal(dx[0, :, 0], [1, 1, 0, 1, 0])


@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_spreads_the_gradient_evenly_over_the_counted_entries(count_include_pad):
    x = jnp.zeros((1, 4, 1))
    layer = jaxnn.avg_pool((3,), strides=2, padding=((1, 0),),
                           count_include_pad=count_include_pad)
    # windows: [pad, x0, x1] and [x1, x2, x3]
    dx = _input_grad(layer, x, jnp.array([[[6.0], [12.0]]]))
    first = 6.0 / (3 if count_include_pad else 2)
    np.testing.assert_allclose(dx[0, :, 0], [first, first + 4, 4, 4])


def test_global_avg_pool_is_the_spatial_mean_and_spreads_dy_evenly(key):
    x = jax.random.normal(key, (2, 3, 4, 5))
    layer = jaxnn.global_avg_pool()
    y, _ = jaxnn.apply(layer, (), (), x)
    chex.assert_shape(y, (2, 5))
    np.testing.assert_allclose(y, np.asarray(x).mean(axis=(1, 2)), rtol=1e-12)
    dy = jax.random.normal(key, (2, 5))
    dx = _input_grad(layer, x, dy)
    np.testing.assert_allclose(dx, np.broadcast_to(np.asarray(dy)[:, None, None, :] / 12,
                                                   x.shape), rtol=1e-12)


def test_max_pool_keeps_an_int32_arg_max_not_the_input():
    x = distinct((2, 8, 8, 4))
    _, _, (winner, spatial) = jaxnn.max_pool((2, 2)).forward((), (), x)
    assert winner.dtype == jnp.int32
    assert winner.shape == (2, 4, 4, 4)
    assert spatial == (8, 8)


def test_float32_in_float32_out_and_gradient():
    x = jnp.ones((2, 4, 4, 3), jnp.float32)
    for layer in (jaxnn.max_pool((2, 2)), jaxnn.avg_pool((2, 2)), jaxnn.global_avg_pool()):
        dx = jax.grad(lambda x: jnp.sum(layer(x)))(x)
        assert layer(x).dtype == dx.dtype == jnp.float32


@pytest.mark.parametrize("pool", [jaxnn.max_pool, jaxnn.avg_pool])
def test_wrong_rank_names_the_layer_and_the_expected_layout(pool):
    layer = pool((2, 2))
    name = layer.name
    with pytest.raises(ValueError, match=rf"{name}: expected an input of rank 4 \(batch, height, "
                                         r"width, channels\).*\(2, 4, 3\)"):
        layer(jnp.ones((2, 4, 3)))
    with pytest.raises(ValueError, match=rf"{name}: expected an input of rank 4"):
        layer.init(jax.random.key(0), (-1, 4, 3))


@pytest.mark.parametrize("pool", [jaxnn.max_pool, jaxnn.avg_pool])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 2}, "window must be a tuple with one entry per spatial axis"),
        ({"window": (2, 0)}, "window must be a positive int or a tuple of 2"),
        ({"strides": (1,)}, "strides must be a positive int or a tuple of 2"),
        ({"padding": "full"}, r"padding must be 'SAME', 'VALID' or 2 \(low, high\) pairs"),
        ({"padding": ((2, 0), (0, 0))}, r"each explicit padding must be smaller than the window"),
    ],
)
def test_bad_arguments_name_the_argument(pool, kwargs, message):
    kwargs = {"window": (2, 2), **kwargs}
    window = kwargs.pop("window")
    with pytest.raises((ValueError, TypeError), match=message):
        pool(window, **kwargs)


def test_window_larger_than_the_input_is_an_error():
    with pytest.raises(ValueError, match=r"max_pool: a window spanning \(3, 3\) entries does "
                                         r"not fit the spatial shape \(2, 5\)"):
        jaxnn.max_pool((3, 3))(jnp.ones((1, 2, 5, 1)))


def test_global_avg_pool_needs_a_spatial_axis():
    with pytest.raises(ValueError, match=r"global_avg_pool: expected an input \(batch, "
                                         r"\*spatial, channels\).*\(2, 3\)"):
        jaxnn.global_avg_pool()(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="global_avg_pool: in_shape must be"):
        jaxnn.global_avg_pool().init(jax.random.key(0), (-1, 3))


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match="max_pool: expected a floating-point input"):
        jaxnn.max_pool((2,))(jnp.ones((1, 4, 1), jnp.int32))


@pytest.mark.parametrize("pool", [jaxnn.max_pool, jaxnn.avg_pool])
def test_both_paths_differentiate_under_jit(pool):
    layer = pool((2, 2), padding="SAME")
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))

    def objective(path):
        return lambda x: jnp.sum(jnp.sin(path(layer, (), (), x)[0]))

    hand = jax.jit(jax.grad(objective(jaxnn.apply)))(x)
    reference = jax.jit(jax.grad(objective(jaxnn.reference_apply)))(x)
    chex.assert_trees_all_close(hand, reference, rtol=1e-12)
