"""Attention's training step: jaxnn's blockwise hand-derived backward against autodiff.

For each sequence length T (batch × heads fixed), the gradient of ``Σ y ⊙ g`` (``y`` the
causal self-attention layer's output, ``g`` a fixed cotangent) with respect to the layer's
parameters and input, computed by:

* ``jaxnn``: :func:`jaxnn.multi_head_attention` with its hand-derived blockwise backward;
* ``autodiff``: the same blockwise forward under ``jax.grad`` (:func:`jaxnn.reference_apply`),
  which keeps every block's probabilities, i.e. the whole T × T matrix;
* ``jax_dpa``: the same projections around ``jax.nn.dot_product_attention`` under ``jax.grad``;
* ``flax``: Flax Linen's ``MultiHeadDotProductAttention`` under ``jax.grad``, when installed.

Reported per T: the median time of a jitted step over rounds (variants interleaved, after a
warm-up) and XLA's ``compiled.memory_analysis().temp_size_in_bytes``. The last line printed is
``RESULT key=value ...``: ``attn_vs_*`` are speed ratios (> 1: jaxnn faster),
``attn_temp_memory_vs_autodiff_T2048`` is jaxnn's temporary memory over the smallest of the
autodiff variants' (< 1: jaxnn smaller), ``attn_memory_growth_1024_4096`` is jaxnn's temporary
memory at T = 4096 over T = 1024 (4 would be linear), ``autodiff_memory_growth_1024_4096`` the
same for the same forward under ``jax.grad``.

    python benchmarks/attention.py                 # T = 256, 1024, 2048, 4096
    python benchmarks/attention.py --quick         # T = 64, 128, 256 (a smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import jaxnn


def _projections(params, x, heads):
    n, t, width = x.shape

    def split(w, b):
        return (x @ params[w] + params[b][None, None]).reshape(n, t, heads, width // heads)

    return split("Wq", "bq"), split("Wk", "bk"), split("Wv", "bv")


def jax_dpa_forward(params, x, heads):
    """The layer's computation around ``jax.nn.dot_product_attention`` (B, T, heads, d)."""
    q, k, v = _projections(params, x, heads)
    o = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return o.reshape(x.shape) @ params["Wo"] + params["bo"][None, None]


def flax_forward(heads, width):
    """Flax Linen's attention with causal masking, or ``None`` when Flax is not installed."""
    try:
        import flax.linen as nn
    except ImportError:
        return None
    module = nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=width,
                                             out_features=width)

    def init(key, x):
        return module.init(key, x, x, mask=nn.make_causal_mask(x[..., 0]))

    def forward(params, x):
        return module.apply(params, x, x, mask=nn.make_causal_mask(x[..., 0]))

    return init, forward


def variants(t, batch, heads, width, block_size):
    """``{name: (step, args)}``: jitted gradient steps and their arguments."""
    layer = jaxnn.multi_head_attention(heads, causal=True, block_size=block_size)
    k_p, k_x, k_g = jax.random.split(jax.random.key(0), 3)
    _, params, _ = layer.init(k_p, (batch, t, width))
    x = jax.random.normal(k_x, (batch, t, width))
    g = jax.random.normal(k_g, (batch, t, width))

    def grad_of(forward):
        return jax.jit(jax.grad(lambda p, inp: jnp.sum(forward(p, inp) * g), argnums=(0, 1)))

    steps = {
        "jaxnn": (grad_of(lambda p, inp: jaxnn.apply(layer, p, (), inp)[0]), (params, x)),
        "autodiff": (grad_of(lambda p, inp: jaxnn.reference_apply(layer, p, (), inp)[0]),
                     (params, x)),
        "jax_dpa": (grad_of(lambda p, inp: jax_dpa_forward(p, inp, heads)), (params, x)),
    }
    peer = flax_forward(heads, width)
    if peer is not None:
        init, forward = peer
        steps["flax"] = (grad_of(forward), (init(k_p, x), x))
    return steps


def temp_bytes(step, args) -> int:
    return int(step.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def time_steps(steps, rounds: int) -> dict[str, float]:
    """Median seconds per step, the variants interleaved round by round after a warm-up."""
    times = {name: [] for name in steps}
    for step, args in steps.values():
        jax.block_until_ready(step(*args))
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step, args = steps[name]
            start = time.perf_counter()
            jax.block_until_ready(step(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(lengths, batch, heads, width, block_size, rounds, time_up_to):
    """``{T: {name: (seconds or None, temp bytes)}}``, printing a row per variant."""
    table = {}
    print(f"batch {batch}, heads {heads}, width {width}, block {block_size}, causal, float32")
    print(f"{'T':>6} {'variant':<9} {'ms/step':>10} {'temp MiB':>10}")
    for t in lengths:
        steps = variants(t, batch, heads, width, block_size)
        memory = {name: temp_bytes(step, args) for name, (step, args) in steps.items()}
        seconds = time_steps(steps, rounds) if t <= time_up_to else dict.fromkeys(steps)
        table[t] = {name: (seconds[name], memory[name]) for name in steps}
        for name, (s, m) in table[t].items():
            ms = "-" if s is None else f"{1e3 * s:.1f}"
            print(f"{t:>6} {name:<9} {ms:>10} {m / 2**20:>10.1f}", flush=True)
    return table


def result_line(table, t_mid: int, t_low: int, t_high: int) -> str:
    mid = table[t_mid]
    autodiff_names = [n for n in mid if n != "jaxnn"]
    result = {
        f"attn_temp_memory_vs_autodiff_T{t_mid}":
            mid["jaxnn"][1] / min(mid[n][1] for n in autodiff_names),
        f"attn_memory_growth_{t_low}_{t_high}":
            table[t_high]["jaxnn"][1] / table[t_low]["jaxnn"][1],
        f"autodiff_memory_growth_{t_low}_{t_high}":
            table[t_high]["autodiff"][1] / table[t_low]["autodiff"][1],
    }
    if mid["jaxnn"][0] is not None:
        fastest = min(mid[n][0] for n in autodiff_names)
        result[f"attn_vs_autodiff_T{t_mid}"] = fastest / mid["jaxnn"][0]
        for name in autodiff_names:
            result[f"attn_vs_{name}_T{t_mid}"] = mid[name][0] / mid["jaxnn"][0]
    return "RESULT " + " ".join(f"{k}={v:.4g}" for k, v in result.items())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 64, 128, 256, 3 rounds")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--time-up-to", type=int, default=4096,
                        help="time the steps only up to this T (memory is always measured)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", False)
    if args.quick:
        lengths, block, rounds, marks = (64, 128, 256), 32, 3, (128, 64, 256)
    else:
        lengths, block, rounds, marks = (256, 1024, 2048, 4096), args.block_size, args.rounds, (
            2048, 1024, 4096)
    table = measure(lengths, args.batch, args.heads, args.width, block, rounds, args.time_up_to)
    line = result_line(table, *marks)
    if "flax" not in table[lengths[0]]:
        print("flax not installed: its variant is skipped")
    print(line)
    return line


if __name__ == "__main__":
    main()
