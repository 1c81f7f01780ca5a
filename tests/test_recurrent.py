"""lstm and gru: hand-derived BPTT against autodiff and finite differences, the equations against
a NumPy loop, lengths (padding keeps the state and gets no gradient), initial states, and errors."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from tests.gradcases import registered, run_layer_case


def _sequence(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


def _with_lengths(shape, lengths, hidden=None, states=0, seed=0):
    """An input tuple ``(x, lengths[, h0[, c0]])`` for a layer built with ``lengths=True``."""
    rng = np.random.default_rng(seed)
    n = shape[0]
    parts = [jnp.asarray(rng.normal(size=shape)), jnp.asarray(lengths, jnp.int32)]
    parts += [jnp.asarray(rng.normal(size=(n, hidden))) for _ in range(states)]
    return tuple(parts)


GRADCHECK_CASES = registered("lstm", "gru")


@pytest.mark.parametrize("case", GRADCHECK_CASES["lstm"] + GRADCHECK_CASES["gru"], ids=repr)
def test_bptt_matches_autodiff_and_finite_differences(case):
    report = run_layer_case(case)
    checked = {c.parameter for c in report.comparisons}
    x = case.options.get("x")
    if isinstance(x, tuple):  # every float entry (x, h0, c0) is checked; integer lengths are not
        inputs = {f"input[{i}]" for i, a in enumerate(x) if jnp.issubdtype(a.dtype, jnp.floating)}
    else:
        inputs = {"input"}
    assert checked == {"W", "U", "b"} | inputs


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _numpy_lstm(p, x, h, c):
    """The LSTM equations, one step at a time, in NumPy (gate order i, f, g, o)."""
    W, U, b = (np.asarray(p[k]) for k in ("W", "U", "b"))
    hidden, outputs = U.shape[0], []
    for t in range(x.shape[1]):
        z = x[:, t] @ W + h @ U + b
        i, f = _sigmoid(z[:, :hidden]), _sigmoid(z[:, hidden:2 * hidden])
        g, o = np.tanh(z[:, 2 * hidden:3 * hidden]), _sigmoid(z[:, 3 * hidden:])
        c = f * c + i * g
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1)


def _numpy_gru(p, x, h):
    """The GRU equations (gate order r, z, n; reset applied to h U_n), in NumPy."""
    W, U, b = (np.asarray(p[k]) for k in ("W", "U", "b"))
    hidden, outputs = U.shape[0], []
    for t in range(x.shape[1]):
        a, u = x[:, t] @ W + b, h @ U
        r = _sigmoid(a[:, :hidden] + u[:, :hidden])
        z = _sigmoid(a[:, hidden:2 * hidden] + u[:, hidden:2 * hidden])
        n = np.tanh(a[:, 2 * hidden:] + r * u[:, 2 * hidden:])
        h = (1 - z) * n + z * h
        outputs.append(h)
    return np.stack(outputs, axis=1)


def _params(layer, in_shape, seed=0):
    _, params, _state = layer.init(jax.random.key(seed), in_shape)
    # a non-zero bias everywhere, so that the gate order matters to the comparison
    b = params["b"].astype(jnp.float64) + jnp.linspace(-0.5, 0.5, params["b"].size)
    return {"W": params["W"].astype(jnp.float64), "U": params["U"].astype(jnp.float64), "b": b}


def test_lstm_forward_is_the_gate_equations_in_order_i_f_g_o():
    x, h0, c0 = _sequence((3, 5, 2)), _sequence((3, 4), 1), _sequence((3, 4), 2)
    layer = jaxnn.lstm(4, initial_state=True)
    p = _params(layer, ((3, 5, 2), (3, 4), (3, 4)))
    y, _ = jaxnn.apply(layer, p, (), (x, h0, c0))
    np.testing.assert_allclose(y, _numpy_lstm(p, np.asarray(x), np.asarray(h0), np.asarray(c0)),
                               rtol=1e-12, atol=1e-12)


def test_gru_forward_is_the_gate_equations_in_order_r_z_n():
    x, h0 = _sequence((3, 5, 2)), _sequence((3, 4), 1)
    layer = jaxnn.gru(4, initial_state=True)
    p = _params(layer, ((3, 5, 2), (3, 4)))
    y, _ = jaxnn.apply(layer, p, (), (x, h0))
    np.testing.assert_allclose(y, _numpy_gru(p, np.asarray(x), np.asarray(h0)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("make", "sequences", "in_shape"), list(itertools.product(
    [jaxnn.lstm, jaxnn.gru], [True, False], [(2, 3, 4), (-1, 7, 1), (1, 1, 3)])))
def test_init_shape_equals_forward_shape(make, sequences, in_shape):
    layer = make(5, return_sequences=sequences)
    out_shape, params, state = layer.init(jax.random.key(0), in_shape)
    gates = 4 if make is jaxnn.lstm else 3
    chex.assert_shape([params["W"], params["U"], params["b"]],
                      [(in_shape[2], gates * 5), (5, gates * 5), (gates * 5,)])
    x = jnp.ones(tuple(2 if d == -1 else d for d in in_shape))
    y, _ = jaxnn.apply(layer, params, state, x)
    expected = (x.shape[0], x.shape[1], 5) if sequences else (x.shape[0], 5)
    assert y.shape == expected
    assert out_shape[1:] == expected[1:]
    assert out_shape[0] in (-1, y.shape[0])


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, 2.5])
def test_forget_gate_bias_is_initialized_to_the_option_and_the_rest_to_zero(forget_bias):
    _, params, _ = jaxnn.lstm(3, forget_bias=forget_bias).init(jax.random.key(0), (2, 4, 5))
    b = np.asarray(params["b"])
    np.testing.assert_array_equal(b[3:6], forget_bias)
    np.testing.assert_array_equal(np.delete(b, np.s_[3:6]), 0.0)


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_padding_keeps_the_state_outputs_zeros_and_gets_no_gradient(make):
    lengths = jnp.array([5, 2, 0, 3])
    x = _sequence((4, 5, 3))
    layer = make(4, lengths=True)
    _, params, _ = layer.init(jax.random.key(1), ((4, 5, 3), (4,)))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    y, _ = jaxnn.apply(layer, params, (), (x, lengths))
    plain = make(4)
    for n, length in enumerate(np.asarray(lengths)):
        # the valid steps equal the layer run on the unpadded sequence alone
        alone, _ = jaxnn.apply(plain, params, (), x[n:n + 1, :length])
        np.testing.assert_allclose(y[n, :length], alone[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(y[n, length:], 0.0)
    v = _sequence(y.shape, seed=3)
    dx = jax.grad(lambda x: jnp.sum(v * jaxnn.apply(layer, params, (), (x, lengths))[0]))(x)
    for n, length in enumerate(np.asarray(lengths)):
        np.testing.assert_array_equal(dx[n, length:], 0.0)
        assert np.all(np.abs(np.asarray(dx[n, :length])) > 0)


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_last_output_is_the_hidden_state_at_length_minus_one(make):
    lengths = jnp.array([5, 2, 1])
    x = _sequence((3, 5, 2))
    every = make(3, lengths=True)
    last = make(3, lengths=True, return_sequences=False)
    _, params, _ = every.init(jax.random.key(2), ((3, 5, 2), (3,)))
    ys, _ = jaxnn.apply(every, params, (), (x, lengths))
    y_last, _ = jaxnn.apply(last, params, (), (x, lengths))
    np.testing.assert_array_equal(y_last, ys[jnp.arange(3), lengths - 1])


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_length_zero_returns_the_initial_state(make):
    states = 2 if make is jaxnn.lstm else 1
    layer = make(3, lengths=True, initial_state=True, return_sequences=False)
    inp = _with_lengths((2, 4, 2), [0, 4], hidden=3, states=states)
    _, params, _ = layer.init(jax.random.key(0), tuple(jnp.shape(a) for a in inp))
    y, _ = jaxnn.apply(layer, params, (), inp)
    np.testing.assert_array_equal(y[0], inp[2][0])
    assert not np.allclose(y[1], inp[2][1])


def test_initial_state_gradients_are_returned_and_lengths_get_none():
    layer = jaxnn.lstm(3, lengths=True, initial_state=True)
    inp = _with_lengths((2, 4, 2), [4, 3], hidden=3, states=2)
    _, params, _ = layer.init(jax.random.key(0), tuple(jnp.shape(a) for a in inp))
    _, vjp = jax.vjp(lambda p, i: jaxnn.apply(layer, p, (), i)[0], params, inp)
    _, (dx, d_lengths, dh0, dc0) = vjp(jnp.ones((2, 4, 3)))
    assert d_lengths.dtype == jax.dtypes.float0
    chex.assert_shape([dx, dh0, dc0], [(2, 4, 2), (2, 3), (2, 3)])
    assert np.all(np.asarray(dh0) != 0)
    assert np.all(np.asarray(dc0) != 0)


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_weights_are_W_and_U_not_the_bias(make):
    # what L2 regularization and weight decay act on (Layer.weights)
    assert make(3).weights == ("W", "U")


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_inside_serial_the_model_check_passes(make):
    net = jaxnn.serial(make(2), make(2, return_sequences=False), jaxnn.dense(2))
    x = _sequence((3, 3, 2))
    _, params, _ = net.init(jax.random.key(0), x.shape)
    # per_layer=False: each layer alone is already checked by GRADCHECK_CASES
    report = jaxnn.gradcheck.check_model(net, jaxnn.mean_squared_error, params, x,
                                         _sequence((3, 2), seed=4), per_layer=False)
    assert report.comparisons, report.table()
    assert report.passed, report.table()


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_vmap_of_value_and_gradient_equals_a_loop(make):
    layer = make(3, lengths=True)
    _, params, _ = layer.init(jax.random.key(0), ((2, 4, 2), (2,)))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    xs = _sequence((3, 2, 4, 2))
    lengths = jnp.array([[4, 1], [0, 3], [2, 2]])

    def loss(p, x, lens):
        return jnp.sum(jnp.sin(jaxnn.apply(layer, p, (), (x, lens))[0]))

    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1))
    batched = jax.jit(jax.vmap(value_and_grad, in_axes=(None, 0, 0)))(params, xs, lengths)
    one_example = jax.jit(value_and_grad)
    for i in range(3):
        one = one_example(params, xs[i], lengths[i])
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], batched), one,
                                    rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_the_training_step_is_traced_once_under_jit(make):
    layer = make(3, return_sequences=False)
    _, params, _ = layer.init(jax.random.key(0), (2, 6, 4))
    chex.clear_trace_counter()  # the counter is keyed by the code, shared across parameters

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, x):
        g = jax.grad(lambda p: jnp.sum(jaxnn.apply(layer, p, (), x)[0] ** 2))(p)
        return jax.tree.map(lambda a, b: a - 0.1 * b, p, g)

    for seed in range(3):
        params = step(params, _sequence((2, 6, 4), seed).astype(jnp.float32))
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(params))



def _every_gradient(layer, params, inputs, run=jaxnn.apply):
    """``(y, (dparams, dinputs))`` for ``Σ v·y`` with a fixed ``v``, through ``run``;
    ``dinputs`` holds the gradients of the input tuple's float entries (``x``, ``h0``, ``c0``)."""
    lengths = inputs[1]
    y = run(layer, params, (), inputs)[0]
    v = _sequence(y.shape, seed=7)

    def loss(p, floats):
        return jnp.sum(v * run(layer, p, (), (floats[0], lengths, *floats[1:]))[0])

    floats = (inputs[0], *tuple(inputs[2:]))
    return y, jax.grad(loss, argnums=(0, 1))(params, floats)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("run", [jaxnn.apply, jaxnn.reference_apply], ids=["by_hand", "autodiff"])
@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_non_finite_padding_reaches_no_output_and_no_gradient(make, run, sequences, fill):
    """Issue 20 item 3: NaN/inf in padded steps changes nothing: the output and every gradient
    leaf (W, U, b, x, h0, c0) are finite and equal to those of the same sequences padded with
    zeros, by the hand-derived backward and by autodiff of the forward."""
    states = 2 if make is jaxnn.lstm else 1
    layer = make(4, lengths=True, initial_state=True, return_sequences=sequences)
    lengths = [5, 2, 0, 3]
    clean = _with_lengths((4, 5, 3), lengths, hidden=4, states=states)
    x = clean[0]
    for n, length in enumerate(lengths):
        x = x.at[n, length:].set(0.0)
    zero_padded = (x, *clean[1:])
    poisoned = (x.at[1, 2:].set(fill).at[2].set(fill).at[3, 4, 1].set(fill), *clean[1:])
    params = _params(layer, tuple(jnp.shape(a) for a in clean))
    y, grads = _every_gradient(layer, params, poisoned, run)
    y_zero, grads_zero = _every_gradient(layer, params, zero_padded, run)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves((y, grads)))
    chex.assert_trees_all_close((y, grads), (y_zero, grads_zero), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("half", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_half_inputs_with_float32_parameters_follow_dense_dtype_rule(make, half):
    """Issue 20 item 8: half-precision x, h0 (, c0) with float32 parameters run as ``dense``
    does: the output in the promoted dtype (float32), the parameters' gradients in float32, the
    inputs' in their own half dtype; all finite and equal to the float32 run on the same
    (rounded) values up to the final rounding of the input gradients."""
    states = 2 if make is jaxnn.lstm else 1
    layer = make(4, lengths=True, initial_state=True)
    rounded = tuple(a.astype(half).astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating)
                    else a for a in _with_lengths((3, 6, 5), [6, 4, 1], hidden=4, states=states))
    as_half = tuple(a.astype(half) if jnp.issubdtype(a.dtype, jnp.floating) else a
                    for a in rounded)
    _, params, _ = layer.init(jax.random.key(0), tuple(a.shape for a in rounded))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    step = jax.jit(_every_gradient, static_argnums=0)
    y, (dparams, dinputs) = step(layer, params, as_half)
    y32, (dparams32, dinputs32) = step(layer, params, rounded)

    dense_y, _ = jaxnn.apply(jaxnn.dense(4), {"W": params["U"][:, :4], "b": params["b"][:4]},
                             (), as_half[2])
    assert y.dtype == dense_y.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(dparams))
    assert [d.dtype for d in dinputs] == [half] * len(dinputs)
    assert all(np.all(np.isfinite(np.asarray(a, np.float32)))
               for a in jax.tree.leaves((y, dparams, dinputs)))
    chex.assert_trees_all_close((y, dparams), (y32, dparams32), rtol=1e-5, atol=1e-6)
    for d, d32 in zip(dinputs, dinputs32, strict=True):
        # one rounding to the half dtype: 2⁻⁸ (bfloat16), 2⁻¹¹ (float16) relative
        np.testing.assert_allclose(np.asarray(d, np.float32), d32, rtol=2.0 ** -7, atol=1e-6)


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_public_docstring_states_every_input_form_with_shapes(make):
    """Issue 20 item 16: ``help(jaxnn.lstm)`` / ``help(jaxnn.gru)`` state the input forms, their
    shapes and dtypes, and show them in an example, without sending the reader to a private
    module."""
    doc = make.__doc__
    states = "h0, c0" if make is jaxnn.lstm else "h0"
    for form in ("``x``", "``(x, lengths)``", f"``(x, {states})``",
                 f"``(x, lengths, {states})``"):
        assert form in doc, form
    for fact in ("``(N, T, C)``", "integer array ``(N,)``", "``[0, T]``", "``(N, H)``",
                 "floating-point", "bfloat16", "``(x, mask)``", "``(N, T, H)``"):
        assert fact in doc, fact
    assert "module doc" not in doc
    assert "_recurrent" not in doc
    examples = [line for line in doc.splitlines() if line.strip().startswith(">>>")]
    assert any("lengths" in line and "jaxnn.apply" in line for line in examples)

# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
@pytest.mark.parametrize("hidden", [0, -2, 2.0, True])
def test_hidden_must_be_a_positive_int(make, hidden):
    with pytest.raises(ValueError, match=r"(lstm|gru): hidden must be a positive int"):
        make(hidden)


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_integer_sequences_are_rejected(make, key):
    layer = make(3)
    _, params, _ = layer.init(key, (2, 4, 5))
    with pytest.raises(TypeError, match=rf"{layer.name}: expected a floating-point input x .* "
                                        r"got dtype int32"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 4, 5), jnp.int32))


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
@pytest.mark.parametrize(("lengths", "message"), [
    (jnp.array([[3], [2]]), r"lengths must have shape \(2,\) .* got shape \(2, 1\)"),
    (jnp.array([3, 2, 1]), r"lengths must have shape \(2,\) .* got shape \(3,\)"),
    (jnp.array([5, 2]), r"lengths must be in \[0, T\] = \[0, 4\], got lengths from 2 to 5"),
    (jnp.array([-1, 2]), r"lengths must be in \[0, T\] = \[0, 4\], got lengths from -1 to 2"),
])
def test_bad_lengths_are_an_error_naming_the_layer_and_argument(make, lengths, message, key):
    layer = make(3, lengths=True)
    _, params, _ = layer.init(key, ((2, 4, 5), (2,)))
    with pytest.raises(ValueError, match=rf"{layer.name}: {message}"):
        jaxnn.apply(layer, params, (), (jnp.ones((2, 4, 5)), lengths))


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_float_lengths_are_rejected(make, key):
    layer = make(3, lengths=True)
    _, params, _ = layer.init(key, ((2, 4, 5), (2,)))
    with pytest.raises(TypeError, match=rf"{layer.name}: lengths must be an integer array"):
        jaxnn.apply(layer, params, (), (jnp.ones((2, 4, 5)), jnp.array([2.0, 3.0])))


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_lengths_beyond_T_under_jit_give_nan_never_a_clamped_output(make, key):
    layer = make(3, lengths=True, return_sequences=False)
    _, params, _ = layer.init(key, ((3, 4, 5), (3,)))
    fn = jax.jit(lambda x, lens: jaxnn.apply(layer, params, (), (x, lens))[0])
    y = np.asarray(fn(jnp.ones((3, 4, 5)), jnp.array([4, 9, 2])))
    assert np.all(np.isnan(y[1]))
    assert np.all(np.isfinite(y[[0, 2]]))


def test_input_form_must_match_the_layer(key):
    plain = jaxnn.lstm(3)
    _, params, _ = plain.init(key, (2, 4, 5))
    with pytest.raises(TypeError, match="lstm: got a tuple input of 2 entries; build the layer "
                                        "with lengths=True"):
        jaxnn.apply(plain, params, (), (jnp.ones((2, 4, 5)), jnp.array([4, 4])))
    with_state = jaxnn.lstm(3, initial_state=True)
    with pytest.raises(TypeError, match=r"lstm: expected the input tuple \(x, h0, c0\)"):
        jaxnn.apply(with_state, params, (), jnp.ones((2, 4, 5)))
    with pytest.raises(ValueError, match=r"lstm: initial state c0 must have shape \(2, 3\)"):
        jaxnn.apply(with_state, params, (), (jnp.ones((2, 4, 5)), jnp.ones((2, 3)),
                                             jnp.ones((2, 4))))


@pytest.mark.parametrize("make", [jaxnn.lstm, jaxnn.gru])
def test_wrong_rank_or_features_are_an_error(make, key):
    layer = make(3)
    _, params, _ = layer.init(key, (2, 4, 5))
    with pytest.raises(ValueError, match=rf"{layer.name}: expected input x of shape \(N, T, 5\)"):
        jaxnn.apply(layer, params, (), jnp.ones((4, 5)))
    with pytest.raises(ValueError, match=rf"{layer.name}: expected input with 5 features"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 4, 6)))
    with pytest.raises(ValueError, match=rf"{layer.name}: the shape of x must be \(N, T, C\)"):
        layer.init(key, (4, 5))


# --- the benchmark's quick mode -------------------------------------------------------------------


def test_the_benchmark_quick_mode_prints_every_result_key(capsys):
    import importlib.util
    import math
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "recurrent.py"
    spec = importlib.util.spec_from_file_location("recurrent_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = dict(item.split("=", 1) for item in last.split()[1:])
    assert result.keys() == {"lstm_vs_autodiff", "lstm_temp_memory_vs_autodiff",
                             "gru_vs_autodiff", "gru_temp_memory_vs_autodiff"}
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in result.values())
