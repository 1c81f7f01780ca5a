"""Replicated vs FSDP vs tensor parallel on 1, 2, 4 and 8 devices: memory per device, step time,
collectives.

Two models sized past a simulated per-device memory budget: a transformer language model
(embedding, positional embedding, causal transformer blocks, layer norm, a dense head over the
vocabulary; softmax cross-entropy on integer next tokens) and a wide MLP (mean squared error).
For each layout (``jaxnn.sharding``: ``replicated``, ``fsdp`` on a ``(n, 1)`` mesh, ``tensor``
on a ``(1, n)`` mesh) and each device count ``n``, with Adam:

* **state/dev**: the largest per-device bytes of parameters + Adam's state, summed from the
  arrays' ``addressable_shards`` after a step (``sharding.bytes_per_device_fraction`` is this
  over the whole), and whether it fits the simulated budget (``--budget-fraction`` of the
  model's parameter + Adam bytes; 0.3 by default, so one device never holds it);
* **temp/dev**: ``memory_analysis().temp_size_in_bytes`` of the compiled sharded step (XLA's
  estimate of its per-device temporary buffers: gathered weights, activations, gradients; the
  CPU backend's figure follows its own scheduling, see ``remat_memory.py``);
* **ms/step**: median over rounds of 3 steps, the layouts of one device count interleaved round
  by round after a warm-up, every timing ending in ``jax.block_until_ready``;
* **collectives**: the all-gather / reduce-scatter / all-reduce / all-to-all /
  collective-permute instructions of the compiled step (optimized HLO).

On a CPU the script asks XLA for 8 host devices (unless ``XLA_FLAGS`` is set): they share the
machine's cores, so step times show what the collectives and the partitioning cost, not a
speed-up. On GPUs or TPUs it runs unchanged over the accelerators (a device count above what
there is is skipped).

The last line is ``RESULT key=value ...``: ``fsdp_param_bytes_fraction_8`` and
``tensor_param_bytes_fraction_8`` are the transformer's per-device share of parameter + Adam
bytes on 8 devices (1 = replicated); ``fsdp_step_vs_replicated_8`` its FSDP step time over the
replicated one on 8 devices (> 1: FSDP is slower); ``mlp_*`` the same for the MLP.

    python benchmarks/scaling.py            # ~4 minutes on 2 shared cores
    python benchmarks/scaling.py --quick    # tiny sizes, 1 and 2 devices
"""

from __future__ import annotations

import os

if "XLA_FLAGS" not in os.environ:  # before JAX starts: the device count is fixed then
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import argparse
import re
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import jaxnn
from jaxnn import sharding

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
FULL = {"vocab": 2048, "width": 256, "depth": 2, "heads": 4, "context": 64, "lm_batch": 16,
        "mlp_width": 1024, "mlp_depth": 4, "mlp_batch": 256, "devices": (1, 2, 4, 8),
        "rounds": 5}
QUICK = {"vocab": 64, "width": 32, "depth": 1, "heads": 2, "context": 8, "lm_batch": 8,
         "mlp_width": 64, "mlp_depth": 2, "mlp_batch": 16, "devices": (1, 2), "rounds": 2}


class Workload(NamedTuple):
    name: str
    model: jaxnn.Layer
    loss: object
    params: object
    x: jax.Array
    y: jax.Array


def transformer_lm(size: dict) -> Workload:
    blocks = [jaxnn.transformer_block(size["heads"], causal=True, block_size=size["context"])
              for _ in range(size["depth"])]
    model = jaxnn.serial(jaxnn.embedding(size["vocab"], size["width"]),
                         jaxnn.positional_embedding(size["context"]), *blocks,
                         jaxnn.layer_norm(), jaxnn.dense(size["vocab"]))
    _, params, _ = model.init(jax.random.key(0), (-1, size["context"]))
    tokens = jax.random.randint(jax.random.key(1), (size["lm_batch"], size["context"] + 1), 0,
                                size["vocab"])
    return Workload("transformer", model, jaxnn.softmax_cross_entropy, params, tokens[:, :-1],
                    tokens[:, 1:])


def wide_mlp(size: dict) -> Workload:
    width = size["mlp_width"]
    layers = []
    for _ in range(size["mlp_depth"]):
        layers += [jaxnn.dense(width), jaxnn.relu()]
    model = jaxnn.serial(*layers, jaxnn.dense(width))
    _, params, _ = model.init(jax.random.key(0), (-1, width))
    x = jax.random.normal(jax.random.key(1), (size["mlp_batch"], width))
    return Workload("mlp", model, jaxnn.mean_squared_error, params, x, jnp.tanh(x))


def _bytes(tree) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree))


def _per_device_bytes(tree) -> int:
    per_device: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values())


class Variant(NamedTuple):
    layout: str
    devices: int
    run: object  # () -> loss, one sharded step from the current state
    state_bytes: int
    temp_bytes: int
    collectives: dict


def build(work: Workload, layout: str, n: int) -> Variant:
    """One sharded step of ``work`` under ``layout`` on the first ``n`` devices, after a step."""
    optimizer = optax.adam(1e-3)
    data, model = (1, n) if layout == "tensor" else (n, 1)
    mesh = sharding.make_mesh(data, model, devices=jax.devices()[:n])
    opt_state = optimizer.init(work.params)
    specs = sharding.layout(work.model, optimizer, work.params, opt_state, mesh, layout)
    step = jaxnn.make_train_step(work.model, work.loss, optimizer, jit=False)
    sharded = sharding.shard_train_step(step, mesh, specs)
    carry = list(sharding.place((work.params, opt_state), specs, mesh))
    x, y = sharding.shard_batch((work.x, work.y), mesh)
    compiled = jax.jit(step, in_shardings=(sharding.shardings(specs[0], mesh), None,
                                           sharding.shardings(specs[1], mesh), None, None, None),
                       out_shardings=(sharding.shardings(specs[0], mesh), None,
                                      sharding.shardings(specs[1], mesh), None)
                       ).lower(carry[0], (), carry[1], x, y, None).compile()
    hlo = compiled.as_text()
    # an instruction's opcode follows its result type and a space: " all-reduce(" (operand
    # names such as "%all-reduce.7" are not counted)
    counts = {op: len(re.findall(rf" {op}(?:-start)?\(", hlo)) for op in COLLECTIVES}
    temp = compiled.memory_analysis().temp_size_in_bytes

    def run():
        carry[0], _, carry[1], loss = sharded(carry[0], (), carry[1], x, y)
        return loss

    jax.block_until_ready(run())  # compile and warm up
    return Variant(layout, n, run, _per_device_bytes(tuple(carry)), temp, counts)


def time_round(variants: list[Variant], steps: int = 3) -> dict[str, float]:
    out = {}
    for v in variants:
        start = time.perf_counter()
        for _ in range(steps):
            loss = v.run()
        jax.block_until_ready(loss)
        out[v.layout] = (time.perf_counter() - start) / steps * 1e3
    return out


def measure(work: Workload, device_counts, rounds: int, budget: int) -> dict:
    total = _bytes(work.params) * 3  # params + Adam's two moments (the count is a scalar)
    print(f"\n{work.name}: {_bytes(work.params) / 2**20:.1f} MiB of parameters, "
          f"{total / 2**20:.1f} MiB with Adam's state; simulated budget "
          f"{budget / 2**20:.1f} MiB per device")
    print(f"  {'layout':<11}{'devices':>8}{'state/dev MiB':>15}{'fraction':>10}"
          f"{'temp/dev MiB':>14}{'fits':>6}{'ms/step':>10}{'±':>7}  collectives")
    results = {}
    for n in device_counts:
        layouts = ["replicated", "fsdp", "tensor"] if n > 1 else ["replicated"]
        variants = [build(work, layout, n) for layout in layouts]
        times = {v.layout: [] for v in variants}
        for r in range(rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for layout, ms in time_round(order).items():
                times[layout].append(ms)
        for v in variants:
            ts = sorted(times[v.layout])
            median = statistics.median(ts)
            spread = (ts[(3 * len(ts)) // 4] - ts[len(ts) // 4]) / 2 if len(ts) > 1 else 0.0
            fraction = v.state_bytes / total
            fits = v.state_bytes <= budget
            ops = " ".join(f"{op}={c}" for op, c in v.collectives.items() if c)
            print(f"  {v.layout:<11}{n:>8}{v.state_bytes / 2**20:>15.2f}{fraction:>10.4f}"
                  f"{v.temp_bytes / 2**20:>14.2f}{'yes' if fits else 'no':>6}{median:>10.2f}"
                  f"{spread:>7.2f}  {ops or '-'}")
            results[(v.layout, n)] = {"fraction": fraction, "ms": median}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 and 2 devices")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--budget-fraction", type=float, default=0.3,
                        help="the simulated per-device budget, as a fraction of a model's "
                             "parameter + Adam bytes (default 0.3: replicated does not fit)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", False)
    size = QUICK if args.quick else FULL
    rounds = args.rounds or size["rounds"]
    counts = [n for n in size["devices"] if n <= jax.device_count()]
    skipped = [n for n in size["devices"] if n > jax.device_count()]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} "
          f"devices ({os.cpu_count()} CPU cores); float32; Adam"
          + (f"; skipped device counts {skipped}" if skipped else ""))
    result = {}
    for work in (transformer_lm(size), wide_mlp(size)):
        budget = int(_bytes(work.params) * 3 * args.budget_fraction)
        figures = measure(work, counts, rounds, budget)
        prefix = "" if work.name == "transformer" else f"{work.name}_"
        n = max(counts)
        if n > 1:
            result[f"{prefix}fsdp_param_bytes_fraction_{n}"] = figures[("fsdp", n)]["fraction"]
            result[f"{prefix}tensor_param_bytes_fraction_{n}"] = (
                figures[("tensor", n)]["fraction"])
            result[f"{prefix}fsdp_step_vs_replicated_{n}"] = (
                figures[("fsdp", n)]["ms"] / figures[("replicated", n)]["ms"])
            result[f"{prefix}tensor_step_vs_replicated_{n}"] = (
                figures[("tensor", n)]["ms"] / figures[("replicated", n)]["ms"])
    print("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
