"""Generating text: jaxnn.generate's KV cache in one compiled scan against re-running the window.

The model is the char-transformer example's architecture with rotary positions: embedding,
3 pre-norm blocks of width 128 (4 heads), final layer norm, head, over a vocabulary of 100.
Both variants draw ``--tokens`` tokens after a 4-token prompt, batch 1, float32:

* ``generate``: :func:`jaxnn.generate`: prefill, then one position per step against the KV
  cache, the whole loop one jitted ``lax.scan``;
* ``window``: the loop the example used before: from Python, each token re-runs the jitted
  model on the last ``--context`` tokens (padded) and samples from the logits at the end.

Reported: the median seconds over rounds (the variants interleaved, after a warm-up that
compiles both) and the ratio. The last line is ``RESULT generate_vs_window_<tokens>=<ratio>``
(> 1: generate faster; issue 21's target is ≥ 20 at 300 tokens).

    python benchmarks/generate.py               # 300 tokens, 5 rounds
    python benchmarks/generate.py --quick       # 40 tokens, 2 rounds (a smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import jaxnn


def build(vocab: int = 100, width: int = 128, depth: int = 3, heads: int = 4) -> jaxnn.Layer:
    blocks = [jaxnn.transformer_block(heads, causal=True, rope=True) for _ in range(depth)]
    return jaxnn.serial(jaxnn.embedding(vocab, width), *blocks, jaxnn.layer_norm(),
                        jaxnn.dense(vocab))


def window_sampler(model, context: int):
    """The re-run-the-window loop: one jitted forward per token on the last ``context`` ids."""
    logits_at = jax.jit(lambda p, x, i: jaxnn.predict(model, p, x)[0, i])

    def sample(params, prompt: list[int], tokens: int, key) -> list[int]:
        ids = list(prompt)
        for _ in range(tokens):
            window = ids[-context:]
            x = jnp.asarray([window + [0] * (context - len(window))])
            key, sub = jax.random.split(key)
            ids.append(int(jax.random.categorical(sub, logits_at(params, x, len(window) - 1))))
        return ids[len(prompt):]

    return sample


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="40 tokens, 2 rounds")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", False)
    tokens, rounds = (40, 2) if args.quick else (args.tokens, args.rounds)

    model = build()
    _, params, state = model.init(jax.random.key(0), (-1, args.context))
    prompt = [5, 6, 7, 8]
    window = window_sampler(model, args.context)

    def run_generate(key):
        return jax.block_until_ready(jaxnn.generate(model, params, state, jnp.asarray([prompt]),
                                                    tokens, key))

    def run_window(key):
        return window(params, prompt, tokens, key)

    variants = {"generate": run_generate, "window": run_window}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up: compile
        run(jax.random.key(0))
    names = list(variants)
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:
            start = time.perf_counter()
            variants[name](jax.random.key(r + 1))
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, seconds in medians.items():
        print(f"{name:<9} {tokens} tokens: {1e3 * seconds:9.1f} ms "
              f"({tokens / seconds:,.0f} tokens/s)")
    line = f"RESULT generate_vs_window_{tokens}={medians['window'] / medians['generate']:.4g}"
    print(line)
    return line


if __name__ == "__main__":
    main()
