"""How much of the machine's second core XLA:CPU uses: attention's tile products, the attention
layer's step and the LM step, on every core and on one.

The same measurements run twice, each in a fresh child process: once with the CPU affinity the
parent has (every core), once pinned to the first of them (the child calls
``os.sched_setaffinity`` before it imports jax, so XLA's thread pool sees one core). The ratio
of the two times is what the second core buys each piece. The all-core child also traces the
attention layer's and the LM's steps with ``jax.profiler`` and reports how long both of XLA's
worker threads ran an operation at the same time ("both busy"), as a share of their wall time.

Measured (float32, medians of interleaved rounds):

* ``product b×M×N``: the batched product ``S = Q Kᵀ`` over ``b`` heads of ``M`` query rows and
  ``N`` keys, 32 features (``Kᵀ`` stored as ``(b, 32, N)``, as attention's tiles read it): the
  shape of attention's tiles (``128 × 128``), of a row strip and of a whole ``512 × 512`` score
  matrix;
* ``attention jaxnn B·T`` and ``attention autodiff B·T``: the causal attention layer's gradient
  step (width 128, 4 heads, block size 128) with its hand-derived backward and with ``jax.grad``
  of the same blockwise forward (``attention.py``'s variants);
* ``lm jaxnn B·T``, ``lm flax_nnx B·T``, ``lm plain_jax B·T``: one training step of
  ``transformer_lm.py``'s char LM (3 blocks, width 128, Adam, donated) in its three
  implementations (Flax NNX when installed).

The last line is ``RESULT`` with ``<piece>_cores_speedup`` (one-core time over all-core time),
``<piece>_both_busy`` for jaxnn's steps (the fraction of the traced steps' wall time during
which at least two threads ran an operation), and jaxnn against autodiff and Flax NNX on every
core and on one (``attention_<B>x<T>_vs_autodiff``, ``..._one_core``,
``lm_<B>x<T>_vs_flax_nnx``, ...).

    python benchmarks/cpu_threads.py             # full sizes, about 2 minutes
    python benchmarks/cpu_threads.py --quick     # tiny sizes (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent

FULL = {"products": [(32, 128, 128), (128, 128, 128), (32, 128, 1024), (32, 512, 512)],
        "attention": [(8, 512), (1, 2048)], "lm": [(32, 64), (8, 512)], "rounds": 9}
QUICK = {"products": [(4, 16, 16)], "attention": [(2, 32)], "lm": [(2, 16)], "rounds": 2}


def _timed(fn: Callable[[], Any], calls: int) -> float:
    """Milliseconds per call of ``fn``, over ``calls`` calls in a row."""
    import jax

    start = time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(fn())
    return 1e3 * (time.perf_counter() - start) / calls


def both_busy(fn: Callable[[], Any], steps: int = 3) -> float:
    """The fraction of the wall time of ``steps`` traced calls of ``fn`` during which at least
    two of XLA's CPU worker threads ran an operation (``jax.profiler``)."""
    import transformer_lm

    data, seconds = transformer_lm.traced(fn, steps)
    skip = ("ThreadpoolListener", "ThunkExecutor", "while", "call", "conditional", "end:")
    edges = []  # +1 where a thread starts an operation, -1 where it ends one
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" in line.name:
                for start, end in _merged(sorted((e.start_ns, e.start_ns + e.duration_ns)
                                                 for e in line.events
                                                 if not e.name.startswith(skip))):
                    edges += [(start, 1), (end, -1)]
    busy, both, since = 0, 0, 0
    for at, step in sorted(edges):
        if busy >= 2:
            both += at - since
        busy, since = busy + step, at
    return both / 1e9 / seconds


def _merged(intervals: list[tuple[int, int]]) -> list[list[int]]:
    """One thread's operations as disjoint ``[start, end]`` intervals."""
    out: list[list[int]] = []
    for start, end in intervals:
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def _has_flax() -> bool:
    import importlib.util

    return importlib.util.find_spec("flax") is not None


def _pieces(sizes: dict) -> dict[str, Callable[[], Any]]:
    """The timed calls, by name."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(HERE))
    import transformer_lm

    pieces: dict[str, Callable[[], Any]] = {}
    key = jax.random.key(0)
    # the keys come transposed, ``(b, 32, N)``, as attention's tiles read them
    product = jax.jit(lambda q, k_t: jnp.einsum("bqd,bdk->bqk", q, k_t))
    for b, m, n in sizes["products"]:
        q = jax.random.normal(key, (b, m, 32))
        k_t = jax.random.normal(key, (b, 32, n))
        pieces[f"product {b}x{m}x{n}"] = lambda q=q, k_t=k_t: product(q, k_t)
    import attention

    for batch, t in sizes["attention"]:
        steps = attention.variants(t, batch, 4, 128, 128)
        for name in ("jaxnn", "autodiff"):
            step, args = steps[name]
            pieces[f"attention {name} {batch}x{t}"] = lambda s=step, a=args: s(*a)
    for batch, t in sizes["lm"]:
        variants = transformer_lm.build(transformer_lm.FULL, batch, t, with_flax=_has_flax())
        for name, run in variants["steps"].items():
            pieces[f"lm {name} {batch}x{t}"] = run
    return pieces


def child(sizes: dict, trace: bool) -> dict[str, dict[str, float]]:
    """Every piece's median time (interleaved rounds) and, when ``trace``, its both-busy time."""
    import jax

    jax.config.update("jax_enable_x64", False)
    pieces = _pieces(sizes)  # puts this folder on sys.path (transformer_lm, attention)
    times: dict[str, list[float]] = {name: [] for name in pieces}
    calls = {}
    for name, fn in pieces.items():  # warm-up; enough calls a round for ~20 ms
        jax.block_until_ready(fn())
        calls[name] = max(1, round(20.0 / _timed(fn, 1)))
    for _ in range(sizes["rounds"]):
        for name, fn in pieces.items():
            times[name].append(_timed(fn, calls[name]))
    out = {name: {"ms": statistics.median(ts)} for name, ts in times.items()}
    if trace:
        for name, fn in pieces.items():
            if " jaxnn " in name:
                out[name]["both_busy"] = both_busy(fn)
    return out


def run_child(quick: bool, core: int | None) -> dict[str, dict[str, float]]:
    """``child`` in a fresh process, pinned to ``core`` when given (the child pins itself before
    it imports jax: a ``preexec_fn`` would fork this multithreaded process)."""
    command = [sys.executable, __file__, "--child"] + (["--quick"] if quick else [])
    command += ["--trace"] if core is None else ["--pin", str(core)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _key(name: str) -> str:
    return name.replace(" ", "_")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pin", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.child:
        if args.pin is not None:
            os.sched_setaffinity(0, {args.pin})
        line = json.dumps(child(sizes, args.trace))
        print(line)
        return line

    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("cpu_threads.py pins a process to one core with os.sched_setaffinity, "
                         "which this platform lacks (Linux has it)")
    cores = sorted(os.sched_getaffinity(0))
    every = run_child(args.quick, None)
    one = run_child(args.quick, cores[0])
    print(f"{len(cores)} cores (all) against core {cores[0]} alone; medians of "
          f"{sizes['rounds']} interleaved rounds, ms")
    print(f"  {'piece':<28} {'all cores':>10} {'one core':>10} {'speedup':>8} "
          f"{'both busy':>10}")
    result = []
    for name, figures in every.items():
        speedup = one[name]["ms"] / figures["ms"]
        busy = figures.get("both_busy")
        busy_text = f"{100 * busy:8.1f} %" if busy is not None else ""
        print(f"  {name:<28} {figures['ms']:10.3f} {one[name]['ms']:10.3f} {speedup:8.2f} "
              f"{busy_text:>10}")
        result.append(f"{_key(name)}_cores_speedup={speedup:.3g}")
        if busy is not None:
            result.append(f"{_key(name)}_both_busy={busy:.3g}")
    for name in every:
        for peer in ("autodiff", "flax_nnx"):
            if " jaxnn " in name and name.replace(" jaxnn ", f" {peer} ") in every:
                other = name.replace(" jaxnn ", f" {peer} ")
                for label, figures in (("", every), ("_one_core", one)):
                    ratio = figures[other]["ms"] / figures[name]["ms"]
                    result.append(f"{_key(name.replace(' jaxnn', ''))}_vs_{peer}{label}="
                                  f"{ratio:.4g}")
    line = "RESULT " + " ".join(result)
    print(line)
    return line


if __name__ == "__main__":
    main()
