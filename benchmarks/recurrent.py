"""Recurrent layers: hand-derived back-propagation through time beside ``jax.grad`` of the scan.

Run from a source checkout::

    python benchmarks/recurrent.py            # LSTM and GRU at T = 100, H = 256 (a minute or so)
    python benchmarks/recurrent.py --quick    # tiny sizes, a smoke run

Workload (float32, whatever ``jax_enable_x64`` says elsewhere): the gradient of a scalar loss
``Σ v ⊙ y`` with respect to the parameters and the input of one ``jaxnn.lstm(256)`` (and
``jaxnn.gru(256)``) layer on ``(N, T, C) = (32, 100, 64)``, every hidden state returned. Two
variants, jitted, on the same parameters and data: jaxnn's hand-derived BPTT (``jaxnn.apply``,
the reverse ``lax.scan``) and ``jax.grad`` through the very same forward scan
(``jaxnn.reference_apply``).

Measurement: one process; the variants run interleaved, round by round (the starting variant
alternates), after an untimed warm-up; every timing ends with ``jax.block_until_ready``; the
figure is the median over rounds. Temporary memory is
``compiled.memory_analysis().temp_size_in_bytes`` of each compiled gradient.

The last line printed is ``RESULT key=value ...``: ``lstm_vs_autodiff`` is autodiff's median
time over jaxnn's (> 1: jaxnn is faster); ``lstm_temp_memory_vs_autodiff`` is jaxnn's temporary
memory over autodiff's (< 1: jaxnn needs less); the same for ``gru_*``.
"""

import argparse
import dataclasses
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import jaxnn


@dataclasses.dataclass(frozen=True)
class Sizes:
    batch: int
    steps: int
    features: int
    hidden: int
    rounds: int
    repeats: int  # calls per timed round


FULL = Sizes(batch=32, steps=100, features=64, hidden=256, rounds=15, repeats=5)
QUICK = Sizes(batch=4, steps=10, features=8, hidden=16, rounds=5, repeats=2)


def gradient_functions(make, sizes: Sizes):
    """``{variant: (compiled gradient, arguments)}`` for one recurrent layer."""
    layer = make(sizes.hidden)
    k_init, k_x, k_v = jax.random.split(jax.random.key(0), 3)
    shape = (sizes.batch, sizes.steps, sizes.features)
    _, params, _ = layer.init(k_init, shape)
    x = jax.random.normal(k_x, shape, jnp.float32)
    v = jax.random.normal(k_v, (sizes.batch, sizes.steps, sizes.hidden), jnp.float32)

    def gradient(path):
        def loss(p, inp):
            return jnp.sum(v * path(layer, p, (), inp)[0])

        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    variants = {}
    paths = (("jaxnn BPTT", jaxnn.apply), ("jax.grad of the scan", jaxnn.reference_apply))
    for name, path in paths:
        compiled = gradient(path).lower(params, x).compile()
        variants[name] = (compiled, (params, x))
    return variants


def measure(variants, sizes: Sizes) -> dict[str, dict[str, float]]:
    """Median seconds per call (interleaved rounds) and temporary bytes of each variant."""
    for fn, args in variants.values():  # warm-up, untimed
        jax.block_until_ready(fn(*args))
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(sizes.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            fn, args = variants[name]
            start = time.perf_counter()
            for _ in range(sizes.repeats):
                out = fn(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / sizes.repeats)
    return {n: {"seconds": statistics.median(times[n]),
                "temp_bytes": float(variants[n][0].memory_analysis().temp_size_in_bytes)}
            for n in names}


def report(cell: str, figures: dict[str, dict[str, float]]) -> dict[str, float]:
    """Prints a table for one cell and returns its RESULT entries."""
    print(f"\n{cell}")
    print(f"  {'variant':<22} {'median ms':>10} {'temp MiB':>10}")
    for name, f in figures.items():
        print(f"  {name:<22} {1e3 * f['seconds']:>10.3f} {f['temp_bytes'] / 2**20:>10.2f}")
    hand, auto = figures["jaxnn BPTT"], figures["jax.grad of the scan"]
    return {f"{cell}_vs_autodiff": auto["seconds"] / hand["seconds"],
            f"{cell}_temp_memory_vs_autodiff": hand["temp_bytes"] / auto["temp_bytes"]}


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints the tables and a last line ``RESULT key=value ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and rounds")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    print(f"jax {jax.__version__} on {jax.default_backend()} ({platform.processor() or '?'}), "
          f"N={sizes.batch} T={sizes.steps} C={sizes.features} H={sizes.hidden}, "
          f"{sizes.rounds} rounds × {sizes.repeats} calls")
    result: dict[str, float] = {}
    with jax.enable_x64(False):
        for cell, make in (("lstm", jaxnn.lstm), ("gru", jaxnn.gru)):
            result.update(report(cell, measure(gradient_functions(make, sizes), sizes)))
    print("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
