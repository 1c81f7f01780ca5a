r"""Recurrent layers (LSTM, GRU): a forward ``lax.scan`` beside its hand-derived backward, a
reverse ``lax.scan`` (back-propagation through time, BPTT).

Sequences are ``(N, T, C)`` (examples, time, features); the layers run time-major inside.

**Inputs.** The input is the array ``x``, or, when the layer is built with ``lengths=True`` and/or
``initial_state=True``, a tuple in this fixed order::

    (x, lengths, h0, c0)   # lstm(..., lengths=True, initial_state=True)
    (x, h0, c0)            # lstm(..., initial_state=True)
    (x, lengths)           # lstm(..., lengths=True) or gru(..., lengths=True)
    (x, lengths, h0)       # gru(..., lengths=True, initial_state=True)

``lengths`` is an integer array ``(N,)`` with entries in ``[0, T]``: steps ``t ≥ lengths[n]`` are
padding; they leave the state unchanged, output zeros, and ``x`` there gets a zero gradient.
Whatever the padding holds (NaN, inf) reaches nothing: ``x`` is replaced by zeros there before
the first product, and every masked quantity, forward and backward, is *selected*
(``jnp.where``), never multiplied by a 0/1 mask (``NaN · 0`` is NaN).
``h0`` and ``c0`` are ``(N, H)`` and get their gradient like ``x``; ``lengths`` gets none.
Without ``initial_state`` the state starts at zero.

**Dtypes** follow ``dense``: the recurrence runs in the promoted dtype of ``x`` and the
parameters (``bfloat16`` or ``float16`` inputs with ``float32`` parameters run, and output,
``float32``); the parameters' gradients come back in each parameter's dtype, ``dx``, ``dh0`` and
``dc0`` in the dtype of ``x``, ``h0`` and ``c0``.

**Output.** ``(N, T, H)``, every hidden state (zeros at padded steps), or, with
``return_sequences=False``, ``(N, H)``: the last valid hidden state (at ``lengths − 1``; ``h0``
for a length of 0).

**The sum over time of the weight gradients** (``dW = Σ_t x_tᵀ dz_t``, and the same for ``dU``,
``db``, ``dx_t = dz_t Wᵀ``) does not depend on the recurrence: the reverse scan carries only
``(dh, dc)`` and emits each step's ``dz_t``; the sums are then one matrix product each over all
``N·T`` rows rather than ``T`` small products accumulated inside the loop:

$$
dW = \sum_{t=1}^{T} x_t^\top dz_t \qquad dU = \sum_{t=1}^{T} h_{t-1}^\top dz_t \qquad
db = \sum_{t=1}^{T} \sum_{n=1}^{N} dz_{t,n} \qquad dx_t = dz_t W^\top
$$

where $x_t$ is $(N, C)$, $h_{t-1}$ and the gate gradients $dz_t$ are $(N, G H)$ with $G$ gates
(4 for the LSTM, 3 for the GRU). With padding, a mask $m_{t,n}$, true at the valid steps of
example $n$ and false at its padding, selects per example the new state or the old one
(forward, $h_t = \tilde{h}_t$ if $m_{t,n}$ else $h_{t-1}$, with $\tilde{h}_t$ the step's
result) and selects $dz_t = 0$ at the padding (backward).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import initializers
from jaxnn.core import Layer, check_features, check_float, check_params

# --- shared input handling -----------------------------------------------------------------------


def _check_hidden(name: str, hidden) -> None:
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
        raise ValueError(f"{name}: hidden must be a positive int, got {hidden!r}")


def _input_names(with_lengths: bool, state_names: tuple[str, ...]) -> tuple[str, ...]:
    """The names of the entries of the input, in order (``("x",)`` for a plain array)."""
    return ("x",) + (("lengths",) if with_lengths else ()) + state_names


def _split_input(name: str, x, names: tuple[str, ...]) -> dict:
    """``{"x": …, "lengths": …, "h0": …}`` from the input, checked against the layer's form."""
    if len(names) == 1:
        if isinstance(x, tuple | list):
            raise TypeError(f"{name}: got a tuple input of {len(x)} entries; build the layer "
                            f"with lengths=True and/or initial_state=True to pass "
                            f"lengths or an initial state")
        return {"x": x}
    if not isinstance(x, tuple | list) or len(x) != len(names):
        raise TypeError(f"{name}: expected the input tuple ({', '.join(names)}), got "
                        f"{type(x).__name__}" + (f" of {len(x)} entries"
                                                 if isinstance(x, tuple | list) else ""))
    return dict(zip(names, x, strict=True))


def _check_sequence(name: str, x, features: int) -> tuple[int, int]:
    """Checks ``x`` is a float ``(N, T, features)`` array; returns ``(N, T)``."""
    check_float(name, x, "input x (a sequence of feature vectors)")
    if x.ndim != 3:
        raise ValueError(f"{name}: expected input x of shape (N, T, {features}), got shape "
                         f"{tuple(x.shape)}")
    check_features(name, x, features)
    return x.shape[0], x.shape[1]


def _check_lengths(name: str, lengths, n: int, t: int) -> jax.Array:
    """Checks ``lengths`` is an integer ``(N,)`` array with entries in ``[0, T]`` (the values when
    they are concrete; under ``jit`` an out-of-range example's output is NaN instead)."""
    dtype = getattr(lengths, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name}: lengths must be an integer array of shape ({n},), got "
                        f"dtype {dtype}")
    if tuple(lengths.shape) != (n,):
        raise ValueError(f"{name}: lengths must have shape ({n},) (one length per example), "
                         f"got shape {tuple(lengths.shape)}")
    if not isinstance(lengths, jax.core.Tracer) and lengths.size:
        values = np.asarray(lengths)  # concrete: checked here, on the host
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > t:
            raise ValueError(f"{name}: lengths must be in [0, T] = [0, {t}], got lengths from "
                             f"{low} to {high}")
    return lengths


def _check_gate_params(name: str, params, hidden: int, gates: int) -> None:
    """``W (C, G·H)``, ``U (H, G·H)``, ``b (G·H,)`` with ``G`` gates (``C`` from the input)."""
    check_params(name, params, {"W": (None, gates * hidden), "U": (hidden, gates * hidden),
                                "b": (gates * hidden,)})


def _check_state(name: str, arg: str, value, n: int, hidden: int) -> jax.Array:
    check_float(name, value, f"initial state {arg}")
    if tuple(value.shape) != (n, hidden):
        raise ValueError(f"{name}: initial state {arg} must have shape ({n}, {hidden}), got "
                         f"shape {tuple(value.shape)}")
    return value


def _parse(name: str, x, names: tuple[str, ...], params, hidden: int, n_states: int):
    """``(x, lengths or None, initial states)`` from the layer's input, all checked; the states
    keep their own dtype (``dh0`` returns in it), zeros of the compute dtype without
    ``initial_state``."""
    parts = _split_input(name, x, names)
    xs = parts["x"]
    n, t = _check_sequence(name, xs, params["W"].shape[0])
    lengths = parts.get("lengths")
    if lengths is not None:
        lengths = _check_lengths(name, lengths, n, t)
    state_names = [s for s in names if s not in ("x", "lengths")]
    if state_names:
        states = tuple(_check_state(name, s, parts[s], n, hidden) for s in state_names)
    else:
        dtype = _compute_dtype(xs, params)
        states = tuple(jnp.zeros((n, hidden), dtype) for _ in range(n_states))
    return xs, lengths, states


def _compute_dtype(xs, params):
    """The dtype the recurrence runs in: ``x``'s and the parameters' promoted, as in ``dense``
    (``bfloat16`` inputs and ``float32`` parameters run in ``float32``)."""
    return jnp.result_type(xs.dtype, *(params[k].dtype for k in ("W", "U", "b")))


def _time_major(xs, lengths):
    """``(x (T, N, C), mask (T, N, 1) or None)``: ``x`` time-major with its padded steps
    replaced by zeros (selected, so a NaN or inf there reaches nothing, not even through
    ``0 · NaN`` in ``dW = Σ_t x_tᵀ dz_t``)."""
    xs = jnp.swapaxes(xs, 0, 1)
    mask = _step_mask(lengths, xs.shape[0])
    if mask is not None:
        xs = jnp.where(mask, xs, jnp.zeros((), xs.dtype))
    return xs, mask


def _step_mask(lengths, t: int) -> jax.Array | None:
    """``(T, N, 1)`` booleans: true at the steps ``t < lengths[n]``, false at padding; ``None``
    without lengths."""
    if lengths is None:
        return None
    steps = jnp.arange(t).reshape(t, 1)
    return (steps < lengths.reshape(1, -1))[:, :, None]


def _invalid_to_nan(lengths, t: int, y: jax.Array) -> jax.Array:
    """Under ``jit`` lengths cannot be checked: an example whose length is outside ``[0, T]``
    gets a NaN output rather than a silently clamped one."""
    if lengths is None:
        return y
    bad = ((lengths < 0) | (lengths > t)).reshape((-1,) + (1,) * (y.ndim - 1))
    return jnp.where(bad, jnp.nan, y)


def _in_shape_of(name: str, in_shape, names: tuple[str, ...]) -> tuple[int, ...]:
    """The ``(N, T, C)`` shape of ``x`` from ``init``'s ``in_shape`` (a tuple of shapes when the
    input is a tuple)."""
    in_shape = tuple(in_shape)
    if len(names) > 1:
        if len(in_shape) != len(names) or not all(isinstance(s, tuple | list) for s in in_shape):
            raise ValueError(f"{name}: in_shape must be the tuple of the shapes of "
                             f"({', '.join(names)}), got {in_shape}")
        in_shape = tuple(in_shape[0])
    if len(in_shape) != 3 or not all(isinstance(d, int) for d in in_shape):
        raise ValueError(f"{name}: the shape of x must be (N, T, C), got {in_shape}")
    return in_shape


def _output(hs: jax.Array, mask, return_sequences: bool) -> jax.Array:
    """The layer's output from the time-major carried states ``hs`` ``(T, N, H)``."""
    if not return_sequences:
        return hs[-1]
    ys = _masked(mask, hs, jnp.zeros((), hs.dtype))
    return jnp.swapaxes(ys, 0, 1)


def _sequence_cotangent(dy: jax.Array, mask, return_sequences: bool):
    """``(dy_seq (T, N, H) or None, dh_T (N, H))``: the output's cotangent, split into the part
    that enters at every step and the part that enters the last carried state."""
    if not return_sequences:
        return None, dy
    dys = jnp.swapaxes(dy, 0, 1)
    dys = _masked(mask, dys, jnp.zeros((), dys.dtype))
    return dys, jnp.zeros_like(dys[0])


def _previous(first: jax.Array, carried: jax.Array) -> jax.Array:
    """``(T, N, H)`` of the states entering each step: ``first`` then ``carried[:-1]``."""
    return jnp.concatenate([first[None], carried[:-1]], axis=0)


def _weight_gradients(xs, h_prev, dz_x, dz_h, W, U):
    """The sums over time: ``dW = Σ_t x_tᵀ dz_t``, ``dU = Σ_t h_{t-1}ᵀ dz_t``,
    ``db = Σ_t Σ_n dz_t``, ``dx_t = dz_t Wᵀ`` (time-major in, ``dx`` examples-first out)."""
    dW = jnp.einsum("tnc,tng->cg", xs, dz_x)
    dU = jnp.einsum("tnh,tng->hg", h_prev, dz_h)
    db = jnp.sum(dz_x, axis=(0, 1))
    dx = jnp.swapaxes(dz_x @ W.T, 0, 1).astype(xs.dtype)
    return {"W": dW.astype(W.dtype), "U": dU.astype(U.dtype), "b": db}, dx


def _input_gradient(names: tuple[str, ...], dx, dstates: tuple):
    """The input's cotangent in the input's form: ``None`` for ``lengths`` (no gradient)."""
    if len(names) == 1:
        return dx
    out, rest = [dx], list(dstates)
    for n in names[1:]:
        out.append(None if n == "lengths" else rest.pop(0))
    return tuple(out)


def _masked(mask, new, old):
    """``new`` at the valid steps, ``old`` at padding, by selection (never ``m·new + (1 − m)·old``,
    which is NaN wherever the unselected side is)."""
    return new if mask is None else jnp.where(mask, new, old)


def _init_fn(name: str, names, hidden: int, gates: int, return_sequences: bool, w_init, u_init,
             b_init, dtype):
    def init(key, in_shape):
        n, t, c = _in_shape_of(name, in_shape, names)
        k_w, k_u = jax.random.split(key)
        params = {"W": w_init(k_w, (c, gates * hidden), dtype),
                  "U": u_init(k_u, (hidden, gates * hidden), dtype),
                  "b": b_init(gates * hidden, dtype)}
        return ((n, t, hidden) if return_sequences else (n, hidden)), params, ()

    return init


# --- LSTM ----------------------------------------------------------------------------------------


def lstm(
    hidden: int,
    *,
    return_sequences: bool = True,
    lengths: bool = False,
    initial_state: bool = False,
    forget_bias: float = 1.0,
    w_init: initializers.Initializer | None = None,
    u_init: initializers.Initializer | None = None,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""A long short-term memory layer, with hand-derived back-propagation through time.

    Parameters ``W (C, 4H)``, ``U (H, 4H)``, ``b (4H,)``; the gate order along the ``4H`` axis
    is ``i, f, g, o`` (input, forget, candidate, output), each a block of ``H`` columns. Forward
    ($\sigma$ the logistic sigmoid), for $t = 1, \ldots, T$:

    $$ z_t = x_t W + h_{t-1} U + b = \left[\, z_i \;\; z_f \;\; z_g \;\; z_o \,\right] $$

    $$ i = \sigma(z_i) \qquad f = \sigma(z_f) \qquad g = \tanh(z_g) \qquad o = \sigma(z_o) $$

    $$ c_t = f \odot c_{t-1} + i \odot g \qquad h_t = o \odot \tanh(c_t) $$

    Backward, step ``t`` from ``T`` down to 1, with ``dh`` (from ``y_t`` and from step ``t+1``)
    and ``dc`` (from step ``t+1``) carried. First the cell's gradient collects the path
    through $h_t$,

    $$ dc \leftarrow dc + dh \odot o \odot \left(1 - \tanh^2(c_t)\right) $$

    then each gate's gradient goes through its nonlinearity
    ($\sigma' = \sigma(1 - \sigma)$, $\tanh' = 1 - \tanh^2$):

    $$ do = dh \odot \tanh(c_t) \qquad dz_o = do \odot o \odot (1 - o) $$

    $$ di = dc \odot g \qquad dz_i = di \odot i \odot (1 - i) $$

    $$ df = dc \odot c_{t-1} \qquad dz_f = df \odot f \odot (1 - f) $$

    $$ dg = dc \odot i \qquad dz_g = dg \odot (1 - g^2) $$

    and $dz_t = [\, dz_i \;\; dz_f \;\; dz_g \;\; dz_o \,]$ gives the carries for step
    $t - 1$, the input's gradient and the sums over time:

    $$ dh_{t-1} = dz_t U^\top \qquad dc_{t-1} = dc \odot f \qquad dx_t = dz_t W^\top $$

    $$
    dW = \sum_t x_t^\top dz_t \qquad dU = \sum_t h_{t-1}^\top dz_t \qquad
    db = \sum_t \sum_n dz_{t,n}
    $$

    A padded step (``t ≥ lengths[n]``) passes ``dh`` and ``dc`` through unchanged and has
    ``dz_t = 0``. ``dh0``, ``dc0`` are the carries left after step 1.

    **Input**, in one of four forms fixed when the layer is built (``N`` examples, ``T`` steps,
    ``C`` features):

    * ``x``: a floating-point array ``(N, T, C)``;
    * ``(x, lengths)`` with ``lengths=True``: ``lengths`` an integer array ``(N,)`` with
      entries in ``[0, T]``; the steps ``t ≥ lengths[n]`` are padding: they keep the state,
      output zeros, and nothing they hold (NaN and inf included) reaches an output or a
      gradient;
    * ``(x, h0, c0)`` with ``initial_state=True``: ``h0`` and ``c0`` floating-point
      ``(N, H)``, the state before step 1 (zeros otherwise), with gradients like ``x``'s;
    * ``(x, lengths, h0, c0)`` with both.

    There is no ``(x, mask)`` form: right-padded sequences with a 0/1 mask ``(N, T)`` pass
    ``lengths = mask.sum(axis=1).astype(jnp.int32)``. ``x``, ``h0`` and ``c0`` may be
    ``bfloat16`` or ``float16`` beside ``float32`` parameters: as in ``dense``, the recurrence
    runs (and outputs) in the promoted dtype, the parameters' gradients come back in their
    dtype and the input's in the input's.

    **Output**: every hidden state ``(N, T, H)`` (zeros at padded steps) or, with
    ``return_sequences=False``, the last valid one ``(N, H)`` (``h0`` for a length of 0).

    Args:
      hidden: ``H``, the size of the hidden and cell states.
      return_sequences: output every hidden state ``(N, T, H)`` (default) or only the last
        valid one ``(N, H)``.
      lengths: the input is ``(x, lengths, …)``, per-example lengths (see Input above).
      initial_state: the input carries ``h0`` and ``c0`` last (zeros otherwise).
      forget_bias: the initial value of the forget-gate block of ``b`` (1.0 keeps the cell's
        memory open at the start of training; the other blocks start at 0).
      w_init: initializer of ``W`` (default Glorot uniform).
      u_init: initializer of ``U`` (default orthogonal).
      dtype: dtype of the parameters.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params ``{"W": (C, 4H), "U": (H, 4H), "b": (4H,)}``
      and no state.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxnn
      >>> layer = jaxnn.lstm(5)
      >>> _, params, _ = layer.init(jax.random.key(0), (2, 7, 3))
      >>> params["W"].shape, params["U"].shape, params["b"].shape
      ((3, 20), (5, 20), (20,))
      >>> jaxnn.apply(layer, params, (), jnp.ones((2, 7, 3)))[0].shape
      (2, 7, 5)

      The forget-gate block of ``b`` starts at ``forget_bias``:

      >>> params["b"].reshape(4, 5)[:, 0].tolist()   # gates i, f, g, o
      [0.0, 1.0, 0.0, 0.0]

      Variable-length sequences and the last valid hidden state only:

      >>> last = jaxnn.lstm(5, return_sequences=False, lengths=True)
      >>> shapes = ((2, 7, 3), (2,))
      >>> out_shape, params, _ = last.init(jax.random.key(0), shapes)
      >>> x, lengths = jnp.ones((2, 7, 3)), jnp.array([7, 3])
      >>> h, _ = jaxnn.apply(last, params, (), (x, lengths))
      >>> out_shape, h.shape
      ((2, 5), (2, 5))

      The fullest form, ``(x, lengths, h0, c0)``, with ``bfloat16`` sequences and states
      beside ``float32`` parameters (the output is ``float32``, as ``dense`` would give):

      >>> full = jaxnn.lstm(5, lengths=True, initial_state=True)
      >>> _, params, _ = full.init(jax.random.key(0), ((2, 7, 3), (2,), (2, 5), (2, 5)))
      >>> h0 = c0 = jnp.zeros((2, 5), jnp.bfloat16)
      >>> y, _ = jaxnn.apply(full, params, (), (x.astype(jnp.bfloat16), lengths, h0, c0))
      >>> y.shape, y.dtype
      ((2, 7, 5), dtype('float32'))
    """
    name = "lstm"
    _check_hidden(name, hidden)
    names = _input_names(lengths, ("h0", "c0") if initial_state else ())
    init = _init_fn(name, names, hidden, 4, return_sequences,
                    initializers.glorot_uniform() if w_init is None else w_init,
                    jax.nn.initializers.orthogonal() if u_init is None else u_init,
                    _forget_bias_init(hidden, forget_bias), dtype)
    forward, backward = _lstm_rule(names, hidden, return_sequences)
    return Layer(name, init, forward, backward, weights=("W", "U"))


def _forget_bias_init(hidden: int, forget_bias: float):
    """``b`` of ``4H`` entries: ``forget_bias`` in the forget-gate block, zeros elsewhere."""

    def init(size, dtype):
        return jnp.zeros((size,), dtype).at[hidden:2 * hidden].set(forget_bias)

    return init


def _lstm_rule(names: tuple[str, ...], hidden: int, return_sequences: bool):
    """The LSTM's ``forward`` and hand-derived ``backward`` for one input form."""
    name = "lstm"

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        _check_gate_params(name, params, hidden, 4)
        xs, lens, (h0, c0) = _parse(name, x, names, params, hidden, 2)
        xs, mask = _time_major(xs, lens)
        dtype = _compute_dtype(xs, params)
        hs, cs, gates = _lstm_scan(params, xs, mask, h0.astype(dtype), c0.astype(dtype))
        y = _invalid_to_nan(lens, xs.shape[0], _output(hs, mask, return_sequences))
        return y, state, (xs, mask, h0, c0, hs, cs, gates)

    def backward(params, residuals, dy):
        xs, mask, h0, c0, hs, cs, gates = residuals
        dys, dh = _sequence_cotangent(dy.astype(hs.dtype), mask, return_sequences)
        c_start, h_start = c0.astype(cs.dtype), h0.astype(hs.dtype)
        dz, dh0, dc0 = _lstm_reverse_scan(params["U"], gates, cs, _previous(c_start, cs), mask,
                                          dys, dh, jnp.zeros_like(c_start))
        grads, dx = _weight_gradients(xs, _previous(h_start, hs), dz, dz, params["W"],
                                      params["U"])
        grads["b"] = grads["b"].astype(params["b"].dtype)
        return grads, _input_gradient(names, dx, (dh0.astype(h0.dtype), dc0.astype(c0.dtype)))

    return forward, backward


def _lstm_scan(params, xs, mask, h0, c0):
    """The forward recurrence over time-major ``xs``; returns the carried ``h_t``, ``c_t``
    ``(T, N, H)`` and the activated gates ``[i, f, g, o]`` ``(T, N, 4H)``."""
    hidden = h0.shape[-1]
    xw = xs @ params["W"] + params["b"].reshape(1, 1, -1)  # all steps' input part at once

    def step(carry, inputs):
        h, c = carry
        xw_t, m = inputs
        z = xw_t + h @ params["U"]
        i = jax.nn.sigmoid(z[:, :hidden])
        f = jax.nn.sigmoid(z[:, hidden:2 * hidden])
        g = jnp.tanh(z[:, 2 * hidden:3 * hidden])
        o = jax.nn.sigmoid(z[:, 3 * hidden:])
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        h_new, c_new = _masked(m, h_new, h), _masked(m, c_new, c)
        return (h_new, c_new), (h_new, c_new, jnp.concatenate([i, f, g, o], axis=-1))

    _, (hs, cs, gates) = jax.lax.scan(step, (h0, c0), (xw, mask))
    return hs, cs, gates


def _lstm_reverse_scan(U, gates, cs, c_prev, mask, dys, dh_last, dc_last):
    """BPTT: the reverse scan of the LSTM docstring; returns every ``dz_t`` ``(T, N, 4H)`` and
    the carries ``dh0``, ``dc0`` left after step 1."""
    hidden = U.shape[0]

    def step(carry, inputs):
        dh, dc = carry
        gate, c, c_before, m, dy_t = inputs
        if dy_t is not None:
            dh = dh + dy_t
        i, f = gate[:, :hidden], gate[:, hidden:2 * hidden]
        g, o = gate[:, 2 * hidden:3 * hidden], gate[:, 3 * hidden:]
        tanh_c = jnp.tanh(c)
        dc_step = dc + dh * o * (1 - tanh_c ** 2)
        dz = jnp.concatenate([
            dc_step * g * i * (1 - i),          # dz_i
            dc_step * c_before * f * (1 - f),   # dz_f
            dc_step * i * (1 - g ** 2),         # dz_g
            dh * tanh_c * o * (1 - o),          # dz_o
        ], axis=-1)
        dz = _masked(m, dz, jnp.zeros((), dz.dtype))
        dh_prev = _masked(m, dz @ U.T, dh)
        dc_prev = _masked(m, dc_step * f, dc)
        return (dh_prev, dc_prev), dz

    (dh0, dc0), dz = jax.lax.scan(step, (dh_last, dc_last), (gates, cs, c_prev, mask, dys),
                                  reverse=True)
    return dz, dh0, dc0


# --- GRU -----------------------------------------------------------------------------------------


def gru(
    hidden: int,
    *,
    return_sequences: bool = True,
    lengths: bool = False,
    initial_state: bool = False,
    w_init: initializers.Initializer | None = None,
    u_init: initializers.Initializer | None = None,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""A gated recurrent unit layer, with hand-derived back-propagation through time.

    Parameters ``W (C, 3H)``, ``U (H, 3H)``, ``b (3H,)``; the gate order along the ``3H`` axis
    is ``r, z, n`` (reset, update, candidate). The reset gate acts on the recurrent part of the
    candidate (the "reset after" form of cuDNN and PyTorch; ``b`` is added once):

    $$
    a_t = x_t W + b = \left[\, a_r \;\; a_z \;\; a_n \,\right] \qquad
    u_t = h_{t-1} U = \left[\, u_r \;\; u_z \;\; u_n \,\right]
    $$

    $$ r = \sigma(a_r + u_r) \qquad z = \sigma(a_z + u_z) \qquad n = \tanh(a_n + r \odot u_n) $$

    $$ h_t = (1 - z) \odot n + z \odot h_{t-1} $$

    Backward, step ``t`` from ``T`` down to 1, with ``dh`` carried (from ``y_t`` and step
    ``t+1``):

    $$ dn = dh \odot (1 - z) \qquad da_n = dn \odot (1 - n^2) $$

    $$ dz = dh \odot (h_{t-1} - n) \qquad da_z = du_z = dz \odot z \odot (1 - z) $$

    $$ dr = da_n \odot u_n \qquad da_r = du_r = dr \odot r \odot (1 - r) $$

    $$ du_n = da_n \odot r $$

    $$ dh_{t-1} = dh \odot z + du_t U^\top \qquad dx_t = da_t W^\top $$

    $$
    dW = \sum_t x_t^\top da_t \qquad dU = \sum_t h_{t-1}^\top du_t \qquad
    db = \sum_t \sum_n da_{t,n}
    $$

    ($da_t = [\, da_r \;\; da_z \;\; da_n \,]$ and $du_t = [\, du_r \;\; du_z \;\; du_n \,]$
    differ only in the candidate block, where the reset gate sits on the recurrent side.)
    A padded step (``t ≥ lengths[n]``) passes ``dh`` through and has ``da_t = du_t = 0``.

    **Input**, in one of four forms fixed when the layer is built (``N`` examples, ``T`` steps,
    ``C`` features):

    * ``x``: a floating-point array ``(N, T, C)``;
    * ``(x, lengths)`` with ``lengths=True``: ``lengths`` an integer array ``(N,)`` with
      entries in ``[0, T]``; the steps ``t ≥ lengths[n]`` are padding: they keep the state,
      output zeros, and nothing they hold (NaN and inf included) reaches an output or a
      gradient;
    * ``(x, h0)`` with ``initial_state=True``: ``h0`` floating-point ``(N, H)``, the state
      before step 1 (zeros otherwise), with a gradient like ``x``'s;
    * ``(x, lengths, h0)`` with both.

    There is no ``(x, mask)`` form: right-padded sequences with a 0/1 mask ``(N, T)`` pass
    ``lengths = mask.sum(axis=1).astype(jnp.int32)``. ``x`` and ``h0`` may be
    ``bfloat16`` or ``float16`` beside ``float32`` parameters: as in ``dense``, the recurrence
    runs (and outputs) in the promoted dtype, the parameters' gradients come back in their
    dtype and the input's in the input's.

    **Output**: every hidden state ``(N, T, H)`` (zeros at padded steps) or, with
    ``return_sequences=False``, the last valid one ``(N, H)`` (``h0`` for a length of 0).

    Args:
      hidden: ``H``, the size of the hidden state.
      return_sequences: output every hidden state ``(N, T, H)`` (default) or only the last
        valid one ``(N, H)``.
      lengths: the input is ``(x, lengths, …)``, per-example lengths (see Input above).
      initial_state: the input carries ``h0`` last (zeros otherwise).
      w_init: initializer of ``W`` (default Glorot uniform).
      u_init: initializer of ``U`` (default orthogonal).
      dtype: dtype of the parameters.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params ``{"W": (C, 3H), "U": (H, 3H), "b": (3H,)}``
      and no state.

    Examples:
      >>> layer = jaxnn.gru(4)
      >>> out_shape, params, state = layer.init(jax.random.key(0), (-1, 6, 3))
      >>> out_shape, jax.tree.map(jnp.shape, params), state
      ((-1, 6, 4), {'U': (4, 12), 'W': (3, 12), 'b': (12,)}, ())
      >>> x = jax.random.normal(jax.random.key(1), (2, 6, 3))
      >>> jaxnn.apply(layer, params, (), x)[0].shape
      (2, 6, 4)

      With an initial state, whose gradient comes back beside ``x``'s:

      >>> stateful = jaxnn.gru(4, initial_state=True, return_sequences=False)
      >>> _, params, _ = stateful.init(jax.random.key(0), ((2, 6, 3), (2, 4)))
      >>> h0 = jnp.zeros((2, 4))
      >>> def last(inputs):
      ...     return jaxnn.apply(stateful, params, (), inputs)[0].sum()
      >>> dx, dh0 = jax.jit(jax.grad(last))((x, h0))
      >>> dx.shape, dh0.shape
      ((2, 6, 3), (2, 4))

      Padded sequences, ``(x, lengths)``: the padding (here NaN) changes nothing:

      >>> padded = jaxnn.gru(4, lengths=True)
      >>> _, params, _ = padded.init(jax.random.key(0), ((2, 6, 3), (2,)))
      >>> lengths = jnp.array([6, 2])
      >>> y, _ = jaxnn.apply(padded, params, (), (x.at[1, 2:].set(jnp.nan), lengths))
      >>> bool(jnp.isfinite(y).all()), y[1, 2:].tolist() == [[0.0] * 4] * 4
      (True, True)
    """
    name = "gru"
    _check_hidden(name, hidden)
    names = _input_names(lengths, ("h0",) if initial_state else ())
    init = _init_fn(name, names, hidden, 3, return_sequences,
                    initializers.glorot_uniform() if w_init is None else w_init,
                    jax.nn.initializers.orthogonal() if u_init is None else u_init,
                    lambda size, dt: jnp.zeros((size,), dt), dtype)
    forward, backward = _gru_rule(names, hidden, return_sequences)
    return Layer(name, init, forward, backward, weights=("W", "U"))


def _gru_rule(names: tuple[str, ...], hidden: int, return_sequences: bool):
    """The GRU's ``forward`` and hand-derived ``backward`` for one input form."""
    name = "gru"

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        _check_gate_params(name, params, hidden, 3)
        xs, lens, (h0,) = _parse(name, x, names, params, hidden, 1)
        xs, mask = _time_major(xs, lens)
        hs, saved = _gru_scan(params, xs, mask, h0.astype(_compute_dtype(xs, params)))
        y = _invalid_to_nan(lens, xs.shape[0], _output(hs, mask, return_sequences))
        return y, state, (xs, mask, h0, hs, saved)

    def backward(params, residuals, dy):
        xs, mask, h0, hs, saved = residuals
        dys, dh = _sequence_cotangent(dy.astype(hs.dtype), mask, return_sequences)
        h_prev = _previous(h0.astype(hs.dtype), hs)
        da, du, dh0 = _gru_reverse_scan(params["U"], saved, h_prev, mask, dys, dh)
        grads, dx = _weight_gradients(xs, h_prev, da, du, params["W"], params["U"])
        grads["b"] = grads["b"].astype(params["b"].dtype)
        return grads, _input_gradient(names, dx, (dh0.astype(h0.dtype),))

    return forward, backward


def _gru_scan(params, xs, mask, h0):
    """The forward recurrence; returns the carried ``h_t`` ``(T, N, H)`` and, per step, the
    gates ``r, z, n`` and ``u_n`` stacked as ``(T, N, 4H)``."""
    hidden = h0.shape[-1]
    xw = xs @ params["W"] + params["b"].reshape(1, 1, -1)

    def step(h, inputs):
        a, m = inputs
        u = h @ params["U"]
        r = jax.nn.sigmoid(a[:, :hidden] + u[:, :hidden])
        z = jax.nn.sigmoid(a[:, hidden:2 * hidden] + u[:, hidden:2 * hidden])
        u_n = u[:, 2 * hidden:]
        n = jnp.tanh(a[:, 2 * hidden:] + r * u_n)
        h_new = _masked(m, (1 - z) * n + z * h, h)
        return h_new, (h_new, jnp.concatenate([r, z, n, u_n], axis=-1))

    _, (hs, saved) = jax.lax.scan(step, h0, (xw, mask))
    return hs, saved


def _gru_reverse_scan(U, saved, h_prev, mask, dys, dh_last):
    """BPTT: the reverse scan of the GRU docstring; returns every ``da_t``, ``du_t``
    ``(T, N, 3H)`` and the carry ``dh0`` left after step 1."""
    hidden = U.shape[0]

    def step(dh, inputs):
        gate, h_before, m, dy_t = inputs
        if dy_t is not None:
            dh = dh + dy_t
        r, z = gate[:, :hidden], gate[:, hidden:2 * hidden]
        n, u_n = gate[:, 2 * hidden:3 * hidden], gate[:, 3 * hidden:]
        da_n = dh * (1 - z) * (1 - n ** 2)
        da_z = dh * (h_before - n) * z * (1 - z)
        da_r = da_n * u_n * r * (1 - r)
        da = jnp.concatenate([da_r, da_z, da_n], axis=-1)
        du = jnp.concatenate([da_r, da_z, da_n * r], axis=-1)
        zero = jnp.zeros((), da.dtype)
        da, du = _masked(m, da, zero), _masked(m, du, zero)
        dh_prev = _masked(m, dh * z + du @ U.T, dh)
        return dh_prev, (da, du)

    dh0, (da, du) = jax.lax.scan(step, dh_last, (saved, h_prev, mask, dys), reverse=True)
    return da, du, dh0
