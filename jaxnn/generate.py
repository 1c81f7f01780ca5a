r"""Decoding a language model with an explicit KV cache, the whole loop in one compiled function.

A causal language model ``serial(embedding, …, transformer_block…, layer_norm, dense(V))``
maps ids ``(N, T)`` to next-token logits ``(N, T, V)``. Re-running it on the whole window for
every new token costs ``O(T²)`` per token. With a cache, each attention layer keeps the keys
and values of the positions already seen, so one new position costs ``O(T)``:

* [`init_cache`][jaxnn.init_cache] turns the model's state into a *decode state*: every
  [`multi_head_attention`][jaxnn.multi_head_attention] gets an empty KV cache
  ``{"keys", "values": (N·c, max_length, d), "length": 0}`` (``c`` key/value heads of
  width ``d``; row ``i·c + j`` is sequence ``i``'s head ``j``), every position table a counter
  ``{"length": 0}``; everything else keeps its state. Each of these layers declares its decode
  state with the [`Layer`][jaxnn.Layer]'s ``init_cache`` hook. It is a plain pytree, passed in
  and returned like any state (no hidden mutation).
* ``model.forward(params, cache, ids)`` with that state is the decode form: the ids are the
  positions after the ``length`` already cached (a whole prompt, then one id at a time); it
  returns their logits and the advanced cache. Prefill followed by single steps equals the
  full forward at every position.
* [`generate`][jaxnn.generate] runs prefill and ``steps`` sampling steps in one ``jax.jit``,
  batched over prompts: a few ``lax.scan`` segments over caches that grow with the sequence
  (each step reads every cached position, so a cache only as long as the segment needs keeps
  the steps short). The compiled loops update each cache in place (no copy of a cache per
  step) and every step's sampling noise is drawn before them.

Sampling from the last logits $z$: $p = \operatorname{softmax}(z / \tau)$ with temperature
$\tau > 0$, restricted to the ``top_k`` largest logits and then to the smallest set of the
most likely tokens whose probabilities sum to at least ``top_p`` (nucleus sampling).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnn.core import Layer, children
from jaxnn.layers._attention import is_cache

__all__ = ["generate", "init_cache"]


def init_cache(model: Layer, params: Any, state: Any, batch_size: int, max_length: int,
               dtype: Any = None) -> Any:
    """The decode state of ``model``: ``state`` with an empty KV cache in every attention layer.

    Args:
      model: a network whose attention layers are causal self-attention.
      params: its parameters (the caches' widths and dtypes are read from them).
      state: its state (``()`` for a network without state).
      batch_size: the number of sequences decoded together.
      max_length: the most positions the caches hold (prompt and generated tokens).
      dtype: the caches' dtype (default: each attention layer's parameter dtype).

    Returns:
      A pytree shaped like the state of a network with state in those layers: pass it as the
      state to ``model.forward`` (the decode form) or to [`generate`][jaxnn.generate].

    Examples:
      >>> import jax, jaxnn
      >>> lm = jaxnn.serial(jaxnn.embedding(11, 8),
      ...                   jaxnn.transformer_block(2, causal=True, rope=True),
      ...                   jaxnn.dense(11))
      >>> _, params, state = lm.init(jax.random.key(0), (-1, 5))
      >>> cache = jaxnn.init_cache(lm, params, state, batch_size=3, max_length=16)
      >>> block_cache = cache[1][0][0][1]   # serial → block → residual → serial → attention
      >>> block_cache["keys"].shape, int(block_cache["length"])  # (N · heads, max_length, d)
      ((6, 16, 4), 0)
    """
    for arg, value in (("batch_size", batch_size), ("max_length", max_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"init_cache: {arg} must be a positive int, got {value!r}")
    return _decode_state(model, params, state, batch_size, max_length, dtype)


def _decode_state(layer: Layer, params, state, batch_size: int, max_length: int, dtype):
    if not layer.sublayers:
        if layer.init_cache is not None:  # a leaf with a decode form
            return layer.init_cache(params, batch_size, max_length, dtype)
        return state
    entries = zip(children(layer, params, "params"), children(layer, state, "state"),
                  strict=True)
    states = [_decode_state(sub, p, s, batch_size, max_length, dtype)
              for (_, sub, p), (_, _, s) in entries]
    if all(isinstance(s, tuple) and not s for s in states):
        return ()
    return dict(zip(layer.names, states, strict=True)) if layer.names else tuple(states)


def _check_sampling(temperature, top_k, top_p, steps) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"generate: steps must be a positive int, got {steps!r}")
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) \
            or not temperature > 0:
        raise ValueError(f"generate: temperature must be a number > 0, got {temperature!r} "
                         f"(for the most likely token at every step use top_k=1)")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)
                              or top_k < 1):
        raise ValueError(f"generate: top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, int | float) or isinstance(top_p, bool)
                              or not 0 < top_p <= 1):
        raise ValueError(f"generate: top_p must be a number in (0, 1] or None, got {top_p!r}")


def _filter_logits(logits, temperature: float, top_k: int | None, top_p: float | None):
    """``z / τ`` with the tokens outside the top ``k`` and outside the nucleus ``top_p`` set to
    ``−∞``."""
    logits = logits / jnp.asarray(temperature, logits.dtype)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probabilities = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probabilities, axis=-1) - probabilities  # mass of the likelier ones
        kept = jnp.where(before < top_p, ordered, jnp.inf)
        logits = jnp.where(logits < jnp.min(kept, axis=-1, keepdims=True), -jnp.inf, logits)
    return logits


def generate(model: Layer, params: Any, state: Any, prompt_ids: jax.Array, steps: int,
             key: jax.Array, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None) -> jax.Array:
    r"""Samples ``steps`` tokens after each prompt, the whole loop one compiled function.

    The prompts ``(N, T_p)`` are run once (prefill, filling each attention layer's KV cache),
    then each step samples a token from the last logits, $t \sim
    \operatorname{softmax}(z / \tau)$ restricted by ``top_k`` and ``top_p``, and runs the model
    on that one position. The caches end holding ``T_p + steps`` positions; the steps run as a
    few ``lax.scan`` segments over caches that grow between them (by a quarter, at least 64
    positions), since each step reads every position its caches hold. Each segment is a loop
    of its own to compile, ``O(log steps)`` of them (5 for 300 steps, 15 for 3 000); the
    compiled function is kept for the next call with the same model, shapes and settings.

    Args:
      model: a causal language model: integer ids ``(N, T)`` to logits ``(N, T, V)``; its
        attention layers causal self-attention (``rope=True`` or a position table).
      params: its parameters.
      state: its state (``()`` for a network without state).
      prompt_ids: ``(N, T_p)`` integer ids, one prompt per row (all of length ``T_p``).
      steps: the number of tokens to generate.
      key: a PRNG key.
      temperature: $\tau > 0$; lower is greedier.
      top_k: sample only among the ``top_k`` most likely tokens (``None``: all).
      top_p: sample only among the most likely tokens whose probabilities sum to at least
        ``top_p`` (``None`` or 1: all).

    Returns:
      The generated ids, ``(N, steps)`` (the prompts not included).

    Raises:
      ValueError: a bad ``steps``, ``temperature``, ``top_k`` or ``top_p``; prompts that are
        not ``(N, T_p)`` integers; ``T_p + steps`` past a position table's length (the context
        limit; a model with ``rope=True`` has none).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxnn
      >>> lm = jaxnn.serial(jaxnn.embedding(11, 8),
      ...                   jaxnn.transformer_block(2, causal=True, rope=True),
      ...                   jaxnn.layer_norm(), jaxnn.dense(11))
      >>> _, params, state = lm.init(jax.random.key(0), (-1, 4))
      >>> prompts = jnp.array([[1, 2, 3], [4, 5, 6]])
      >>> tokens = jaxnn.generate(lm, params, state, prompts, 5, jax.random.key(1),
      ...                         temperature=0.8, top_k=5)
      >>> tokens.shape, tokens.dtype
      ((2, 5), dtype('int32'))
    """
    _check_sampling(temperature, top_k, top_p, steps)
    if not isinstance(prompt_ids, jax.Array):  # (asarray of an Array dispatches an op)
        prompt_ids = jnp.asarray(prompt_ids)
    if prompt_ids.ndim != 2 or not jnp.issubdtype(prompt_ids.dtype, jnp.integer) \
            or prompt_ids.shape[1] < 1:
        raise ValueError(f"generate: prompt_ids must be integer ids of shape (prompts, length) "
                         f"with length ≥ 1, got dtype {prompt_ids.dtype} and shape "
                         f"{tuple(prompt_ids.shape)}")
    return _generate(model, steps, float(temperature), top_k,
                     None if top_p is None else float(top_p))(params, state, prompt_ids, key)


# Each step reads every cached position of every layer, so a decode step's time grows with the
# caches' length (on the 2-core CPU, 0.18 µs per position in benchmarks/generate.py's model,
# against 73 µs for the rest of the step). The caches therefore grow as the sequence does:
# the loop runs in segments, each a ``lax.scan`` over caches just long enough for its steps,
# padded with empty positions between segments (one copy per segment, not per step).
_GROWTH_MIN = 64  # positions added per segment, at least …
_GROWTH_FRACTION = 4  # … and at least a quarter of the length so far (few segments)


def cache_lengths(prompt_length: int, steps: int) -> tuple[int, ...]:
    """The caches' length in each of generate's segments: ``prompt_length + steps`` at the
    end, each segment at least ``_GROWTH_MIN`` positions and a quarter longer than the one
    before (so ``O(log steps)`` segments, each a compiled loop of its own)."""
    total, length, lengths = prompt_length + steps, prompt_length, []
    while length < total:
        length = min(total, length + max(_GROWTH_MIN, length // _GROWTH_FRACTION))
        lengths.append(length)
    return tuple(lengths)


def _resized(state, length: int):
    """``state`` with every attention KV cache's keys and values cut, or padded with empty
    positions, to ``length`` positions (axis 1); its ``length`` counter and everything else
    unchanged."""
    def resize(node):
        if not is_cache(node):
            return node
        def fit(a):
            if a.shape[1] >= length:
                return a[:, :length]
            return jnp.pad(a, ((0, 0), (0, length - a.shape[1]), (0, 0)))
        return {**node, "keys": fit(node["keys"]), "values": fit(node["values"])}

    return jax.tree.map(resize, state, is_leaf=is_cache)


_COMPILED: dict[tuple, tuple[Layer, Any]] = {}  # (id(model), settings) -> (model, jitted)
_COMPILED_MAX = 32


def _generate(model: Layer, steps: int, temperature: float, top_k, top_p):
    """The compiled loop for one model and sampling setting, kept for the next call (so a
    second call with the same shapes does not trace again). Looked up by the model's identity:
    hashing a whole model's tree of layers took longer than the lookup should."""
    settings = (id(model), steps, temperature, top_k, top_p)
    kept = _COMPILED.get(settings)
    if kept is not None and kept[0] is model:
        return kept[1]
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.pop(next(iter(_COMPILED)))  # the oldest
    compiled = _compile(model, steps, temperature, top_k, top_p)
    _COMPILED[settings] = (model, compiled)
    return compiled


def _compile(model: Layer, steps: int, temperature: float, top_k, top_p):
    """``jax.jit`` of the whole generation: the caches, prefill, the noise, the segments."""

    def run(params, state, prompt_ids, key):
        n, prompt_length = prompt_ids.shape
        lengths = cache_lengths(prompt_length, steps)
        # the caches made inside the compiled function (no arrays built and passed per call);
        # made for the whole length first, so a position table past its length is an error
        cache = _resized(init_cache(model, params, state, n, prompt_length + steps), lengths[0])
        logits, cache, _ = model.forward(params, cache, prompt_ids)
        last = logits[:, -1]
        # jax.random.categorical(k, z) is argmax(z + gumbel(k, z.shape)): the noise of every
        # step drawn at once, before the loop, draws the same tokens without running the
        # random-bit generator (a loop of its own on CPU) inside each step
        noise = jax.vmap(lambda k: jax.random.gumbel(k, last.shape, last.dtype))(
            jax.random.split(key, steps))

        def step(carry, step_noise):
            cache, last = carry
            token = jnp.argmax(_filter_logits(last, temperature, top_k, top_p) + step_noise,
                               axis=-1).astype(jnp.int32)
            logits, cache, _ = model.forward(params, cache, token[:, None])
            return (cache, logits[:, -1]), token

        tokens, done = [], 0
        for length in lengths:  # step k writes position prompt_length + k
            count = length - prompt_length - done
            (cache, last), segment = jax.lax.scan(step, (_resized(cache, length), last),
                                                  noise[done:done + count])
            tokens.append(segment)
            done += count
        return jnp.concatenate(tokens).T

    return jax.jit(run)
