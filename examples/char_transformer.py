"""A causal character-level transformer on the Python documentation, every backward by hand.

The text is the help topics that ship with every CPython (``pydoc_data.topics``, about 465k
characters, about 100 distinct ones), split 90/10 by position into training and validation.
The model is one network::

    serial(embedding(V, D), transformer_block(rope=True) × L, layer_norm(), dense(V))

with rotary positions inside each attention (no position table, so no length limit when
generating), trained with softmax cross-entropy on the next character, AdamW with linear
warm-up, cosine decay and gradient clipping. It prints the validation loss in bits per
character as it trains, then generates text from a prompt with ``jaxnn.generate`` (a KV cache,
the whole loop one compiled function), prints it with the generation's tokens per second, and ends
with ``val_bits_per_char=<value>``.

    python examples/char_transformer.py --steps 1500
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnn


def load_text() -> str:
    """The pydoc help topics, in the order of their names."""
    from pydoc_data.topics import topics

    return "".join(topics[name] for name in sorted(topics))


def build(vocab: int, width: int, depth: int, heads: int) -> jaxnn.Layer:
    blocks = [jaxnn.transformer_block(heads, causal=True, rope=True) for _ in range(depth)]
    return jaxnn.serial(jaxnn.embedding(vocab, width), *blocks, jaxnn.layer_norm(),
                        jaxnn.dense(vocab))


def make_batches(data: jax.Array, context: int, batch: int):
    """A jitted ``key -> (x, y)``: ``batch`` random windows and the next character of each."""

    @jax.jit
    def sample(key):
        starts = jax.random.randint(key, (batch,), 0, data.shape[0] - context - 1)
        windows = starts[:, None] + jnp.arange(context + 1)[None, :]
        chunk = data[windows]
        return chunk[:, :-1], chunk[:, 1:]

    return sample


def validation_bits(model, params, data: np.ndarray, context: int, batch: int) -> float:
    """Mean cross-entropy in bits per character over consecutive validation windows."""
    loss = jax.jit(lambda p, x, y: jaxnn.softmax_cross_entropy.value(
        jaxnn.predict(model, p, x), y))
    n_windows = (len(data) - 1) // context
    windows = np.arange(n_windows) * context
    total, count = 0.0, 0
    for begin in range(0, n_windows - batch + 1, batch):
        idx = windows[begin:begin + batch, None] + np.arange(context + 1)[None, :]
        chunk = jnp.asarray(data[idx])
        total += float(loss(params, chunk[:, :-1], chunk[:, 1:]))
        count += 1
    return total / count / math.log(2)


def generate_text(model, params, prompt: str, lookup: dict, chars: list, length: int,
                  key, temperature: float = 0.8) -> tuple[str, float]:
    """``length`` characters after ``prompt`` from ``jaxnn.generate`` and the tokens per
    second of the generation (the second run: the first one compiles)."""
    prompt_ids = jnp.asarray([[lookup[c] for c in prompt]])

    def run():
        return jax.block_until_ready(jaxnn.generate(model, params, (), prompt_ids, length, key,
                                                    temperature=temperature))

    run()
    start = time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - start
    return prompt + "".join(chars[int(i)] for i in tokens[0]), length / seconds


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--sample-length", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    text = load_text()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lookup[c] for c in text), np.int32, len(text))
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    print(f"{len(text)} characters, {len(chars)} distinct; train {len(train)}, val {len(val)}")

    model = build(len(chars), args.width, args.depth, args.heads)
    key_init, key_data, key_sample = jax.random.split(jax.random.key(args.seed), 3)
    _, params, _ = model.init(key_init, (-1, args.context))
    warmup = min(args.warmup, args.steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, args.steps,
                                                  end_value=args.lr / 10)
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b2=0.99, weight_decay=args.weight_decay,
                    mask=jaxnn.weight_mask(model, params)))
    opt_state = optimizer.init(params)
    step = jaxnn.make_train_step(model, jaxnn.softmax_cross_entropy, optimizer)
    batches = make_batches(jnp.asarray(train), args.context, args.batch)

    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        x, y = batches(jax.random.fold_in(key_data, i))
        params, _, opt_state, loss = step(params, (), opt_state, x, y, None)
        if i % args.eval_every == 0 or i == args.steps:
            bits = validation_bits(model, params, val, args.context, args.batch)
            print(f"step {i}: train loss {float(loss) / math.log(2):.3f} bits/char, "
                  f"val {bits:.3f} bits/char ({time.perf_counter() - start:.0f} s)", flush=True)

    sample, tokens_per_second = generate_text(model, params, "def ", lookup, chars,
                                              args.sample_length, key_sample)
    print("sample:\n" + sample)
    print(f"generated {args.sample_length} characters at {tokens_per_second:,.0f} tokens/s "
          f"(jaxnn.generate: KV cache, one compiled function)")
    print(f"val_bits_per_char={bits:.4f}")
    return bits


if __name__ == "__main__":
    main()
