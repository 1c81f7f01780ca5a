"""Training-step speed and memory: jaxnn's hand-derived step beside autodiff, plain JAX and peers.

Run from a source checkout::

    python benchmarks/train_step.py            # the full benchmark (a few minutes on 2 cores)
    python benchmarks/train_step.py --quick    # tiny sizes, a smoke run (< 30 s)

Workloads (float32 throughout, whatever ``jax_enable_x64`` says elsewhere):

* ``mlp``: 784-1024-1024-10, relu, softmax cross-entropy, Adam, batch 128 (compute-bound).
  Variants, all jitted, on the same data, initial shapes and optimizer: jaxnn's hand-derived
  step (``jaxnn.make_train_step``), the same jaxnn forward under ``jax.grad``
  (``gradients="autodiff"``), a plain-JAX MLP written directly with ``jax.grad``, and, when the
  ``bench`` extra is installed, Flax Linen, Flax NNX, Equinox and Haiku. Every variant donates
  its params and optimizer state (each library's own way of saying so); one extra row shows
  jaxnn without donation.
* ``small``: the classic [12288, 7, 1] network (relu hidden, sigmoid output, binary
  cross-entropy) on 209 examples, 2500 full-batch gradient-descent steps (learning rate
  0.0075): ``jaxnn.run_steps`` (one ``lax.scan``) against a Python loop of the same jitted step
  and against a plain-JAX ``lax.scan`` written with ``jax.grad``.
* ``cnn`` (when ``jaxnn.conv``, ``jaxnn.max_pool`` and ``jaxnn.flatten`` exist): two 3×3
  convolutions with 2×2 max pooling and a dense classifier on 28×28×1 images, batch 64, Adam;
  jaxnn hand-derived, jaxnn autodiff and plain JAX.

Measurement: one process; the variants of a workload run interleaved, round by round (the
starting variant rotates each round), after a warm-up that is not timed (for the small
network's ahead-of-time compiled scans the median leaves out the first round instead); every
timing ends with ``jax.block_until_ready``; the figure is the median over rounds (the ``±``
column is half the interquartile range, relative to the median: the noise of a shared machine;
``best`` is the fastest round). The matmul peak (a large ``jnp.dot``) is timed inside the MLP's
rounds; the peak is its fastest round. Thread settings (OpenBLAS, XLA flags) are left as they
are. Compile time is trace + lower + compile of a freshly built step (median of a few builds,
interleaved across variants); temporary memory is ``memory_analysis().temp_size_in_bytes`` of
the compiled step.

The last line printed is ``RESULT key=value ...``; ratios are "jaxnn is this many times as
fast" (``*_vs_*`` speed ratios, > 1 is better for jaxnn) except ``temp_memory_vs_autodiff``
and ``compile_vs_autodiff``, which are jaxnn's figure over autodiff's (< 1 is better).
"""

import argparse
import dataclasses
import importlib.util
import itertools
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnn

PEERS = ("flax_linen", "flax_nnx", "equinox", "haiku")
_PEER_MODULES = {"flax_linen": "flax", "flax_nnx": "flax", "equinox": "equinox",
                 "haiku": "haiku"}


@dataclasses.dataclass(frozen=True)
class Sizes:
    mlp: tuple[int, ...] = (784, 1024, 1024, 10)
    mlp_batch: int = 128
    mlp_steps_per_round: int = 5
    rounds: int = 21
    compile_builds: int = 3
    peak_n: int = 2048
    small_m: int = 209
    small_nx: int = 12288
    small_hidden: int = 7
    small_steps: int = 2500
    small_rounds: int = 5
    cnn_image: int = 28
    cnn_channels: tuple[int, int] = (16, 32)
    cnn_batch: int = 64
    cnn_steps_per_round: int = 5
    donation_row: bool = True  # also time jaxnn without donation (what donation buys)


FULL = Sizes()
QUICK = Sizes(mlp=(64, 128, 128, 10), mlp_batch=32, mlp_steps_per_round=3, rounds=5,
              compile_builds=1, peak_n=256, small_m=32, small_nx=256, small_steps=50,
              small_rounds=5, cnn_image=8, cnn_channels=(4, 8), cnn_batch=8,
              cnn_steps_per_round=2, donation_row=False)


# --- measurement ----------------------------------------------------------------------------


@dataclasses.dataclass
class Variant:
    """A timed thing: ``run()`` does one round's work and returns something to block on."""

    name: str
    run: Callable[[], Any]
    per_round: int = 1  # steps (or calls) a round runs; times are reported per step
    compile_s: float | None = None
    temp_bytes: int | None = None
    hlo_ops: dict[str, int] | None = None
    note: str = ""
    warmup: Callable[[], Any] | None = None  # untimed first call; ``run`` when None


SPREAD: dict[str, float] = {}  # half the interquartile range over the median, per variant
BEST: dict[str, float] = {}  # the fastest round, per variant


def interleaved(variants: list[Variant], rounds: int) -> dict[str, float]:
    """The median seconds per step of each variant, rounds interleaved across variants.

    Also records each variant's spread (half the interquartile range, relative) in ``SPREAD``
    and its fastest round in ``BEST``.
    """
    for v in variants:  # warm-up: compile and run once, not timed
        jax.block_until_ready((v.warmup or v.run)())
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            start = time.perf_counter()
            jax.block_until_ready(v.run())
            times[v.name].append((time.perf_counter() - start) / v.per_round)
    for name, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4)
        SPREAD[name] = (q3 - q1) / 2 / statistics.median(ts)
        BEST[name] = min(ts)
    return {name: statistics.median(ts) for name, ts in times.items()}


def compile_all(specs: dict[str, tuple[Callable[[], Any], tuple]], builds: int,
                failed: list[str] | None = None) -> dict[str, tuple]:
    """``{name: (compiled, median compile seconds, temp bytes, HLO op counts)}``.

    ``specs[name] = (build, args)``: ``build()`` makes a fresh jitted function, so every build
    traces and compiles; builds are interleaved across the variants, like the timed rounds. The
    last compiled executable is the one timed (it donates what the jitted function donates). A
    variant that fails to compile is left out and named in ``failed`` (when given).
    """
    seconds: dict[str, list[float]] = {name: [] for name in specs}
    compiled: dict[str, Any] = {}
    for _ in range(builds):
        for name, (build, args) in specs.items():
            if name not in seconds:
                continue
            try:
                fn = build()
                start = time.perf_counter()
                compiled[name] = fn.lower(*args).compile()
                seconds[name].append(time.perf_counter() - start)
            except Exception as error:  # report a path that cannot compile, go on
                if failed is None:
                    raise
                failed.append(f"{name} ({type(error).__name__}: {str(error).splitlines()[0]})")
                del seconds[name]
                compiled.pop(name, None)
    return {name: (compiled[name], statistics.median(ts), *_figures(compiled[name]))
            for name, ts in seconds.items()}


def _figures(compiled) -> tuple[int, dict[str, int]]:
    text = compiled.as_text() or ""
    ops = {
        "dot": len(re.findall(r"\bdot\(", text)),
        "narrow_dw": count_narrow_weight_gradients(text),
        "convolution": len(re.findall(r"\bconvolution\(", text)),
        "fusion": len(re.findall(r"\bfusion\(", text)),
    }
    return int(compiled.memory_analysis().temp_size_in_bytes), ops


_DOT = re.compile(r"= f32\[(\d+),(\d+)\]\{1,0\} dot\([^)]*\), lhs_contracting_dims=\{0\}, "
                  r"rhs_contracting_dims=\{0\}")


def count_narrow_weight_gradients(hlo_text: str) -> int:
    """Dots of the form ``xᵀ dZ`` writing a row-major ``(n_in, n_out)`` with ``4·n_out ≤ n_in``.

    XLA's CPU backend runs these several times slower than ``dZᵀ x`` (see
    ``benchmarks/weight_gradient.py`` and ``jaxnn.layers.weight_gradient``).
    """
    return sum(1 for a, b in _DOT.findall(hlo_text) if 4 * int(b) <= int(a))


def stepper(step: Callable, state: tuple, data: tuple, n: int) -> Callable[[], Any]:
    """``run()`` that applies ``step`` ``n`` times, carrying its own state (donation-safe)."""
    holder = [state]

    def run():
        s = holder[0]
        loss = None
        for _ in range(n):
            *s, loss = step(*s, *data)
        holder[0] = tuple(s)
        return loss

    return run


def matmul_peak_variant(n: int) -> tuple[Variant, float]:
    a = jax.random.normal(jax.random.key(7), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(8), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return Variant("matmul peak", lambda: dot(a, b)), 2.0 * n ** 3


# --- the MLP --------------------------------------------------------------------------------


def mlp_flops(sizes: tuple[int, ...], batch: int) -> float:
    """Matmul FLOPs of one step: forward, dW of every layer, dx of all but the first."""
    pairs = [a * b for a, b in itertools.pairwise(sizes)]
    return 2.0 * batch * (3 * sum(pairs) - pairs[0])


def jaxnn_mlp(sizes):
    layers = []
    for n in sizes[1:-1]:
        layers += [jaxnn.dense(n), jaxnn.relu()]
    return jaxnn.serial(*layers, jaxnn.dense(sizes[-1]))


def plain_mlp_init(key, sizes):
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1),
                                itertools.pairwise(sizes), strict=True):
        w = jax.random.normal(k, (n_in, n_out), jnp.float32) / np.sqrt(n_in)
        params.append((w, jnp.zeros((n_out,), jnp.float32)))
    return params


def plain_mlp_loss(params, x, y):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b[None, :]
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    log_p = jax.nn.log_softmax(h, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=-1))


def jaxnn_carry(params, optimizer) -> tuple:
    """What a jaxnn step carries: ``(params, state, opt_state)``, the state ``()``."""
    return params, (), optimizer.init(params)


def optax_step(loss_fn: Callable, optimizer) -> Callable:
    """The plain-JAX step every functional peer shares: value_and_grad, optax, apply_updates."""

    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def _integer_ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def peer_mlps(name: str, sizes, key, x):
    """``(loss_fn(params, x, y), params)`` of one peer library's MLP (its own layers)."""
    hidden, out = sizes[1:-1], sizes[-1]
    if name == "flax_linen":
        import flax.linen as nn

        class MLP(nn.Module):
            @nn.compact
            def __call__(self, h):
                for n in hidden:
                    h = nn.relu(nn.Dense(n)(h))
                return nn.Dense(out)(h)

        model = MLP()
        params = model.init(key, x)
        return (lambda p, xb, yb: _integer_ce(model.apply(p, xb), yb)), params
    if name == "flax_nnx":
        from flax import nnx

        class MLPx(nnx.Module):
            def __init__(self, rngs):
                dims = sizes
                self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in
                                        itertools.pairwise(dims)])

            def __call__(self, h):
                for layer in self.layers[:-1]:
                    h = nnx.relu(layer(h))
                return self.layers[-1](h)

        graphdef, params = nnx.split(MLPx(nnx.Rngs(0)), nnx.Param)

        def loss(p, xb, yb):
            return _integer_ce(nnx.merge(graphdef, p)(xb), yb)

        return loss, params
    if name == "equinox":
        import equinox as eqx

        model = eqx.nn.MLP(sizes[0], out, hidden[0], len(hidden), activation=jax.nn.relu,
                           key=key)
        if any(n != hidden[0] for n in hidden):
            raise ValueError("equinox MLP: hidden layers must have one width")
        params, static = eqx.partition(model, eqx.is_array)

        def loss(p, xb, yb):
            return _integer_ce(jax.vmap(eqx.combine(p, static))(xb), yb)

        return loss, params
    if name == "haiku":
        import haiku as hk

        net = hk.without_apply_rng(hk.transform(lambda h: hk.nets.MLP([*hidden, out])(h)))
        params = net.init(key, x)
        return (lambda p, xb, yb: _integer_ce(net.apply(p, xb), yb)), params
    raise ValueError(f"unknown peer {name!r}")


def available_peers() -> tuple[list[str], list[str]]:
    present, skipped = [], []
    for name in PEERS:
        (present if importlib.util.find_spec(_PEER_MODULES[name]) else skipped).append(name)
    return present, skipped


def copy_tree(tree):
    return jax.tree.map(jnp.copy, tree)


def mlp_variants(sz: Sizes, peers: list[str]) -> tuple[list[Variant], list[str]]:
    sizes, batch = sz.mlp, sz.mlp_batch
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])
    optimizer = optax.adam(1e-3)
    net = jaxnn_mlp(sizes)
    _, params, _ = net.init(kp, (-1, sizes[0]))
    loss = jaxnn.softmax_cross_entropy
    specs, notes, failed = {}, {}, []

    def add(name, build, carry, note=""):
        """``build()`` makes a fresh jitted ``(*carry, x, y) -> (*carry, loss)``."""
        specs[name] = (build, (*carry, x, y))
        notes[name] = note

    add("jaxnn", lambda: jaxnn.make_train_step(net, loss, optimizer, donate=True),
        jaxnn_carry(params, optimizer), "hand-derived backward")
    add("jaxnn autodiff", lambda: jaxnn.make_train_step(net, loss, optimizer, donate=True,
                                                        gradients="autodiff"),
        jaxnn_carry(params, optimizer), "same forward, jax.grad")
    plain_params = plain_mlp_init(kp, sizes)
    add("plain JAX", lambda: jax.jit(optax_step(plain_mlp_loss, optimizer),
                                     donate_argnums=(0, 1)),
        (plain_params, optimizer.init(plain_params)), "written directly, jax.grad")
    for peer in peers:
        try:
            loss_fn, peer_params = peer_mlps(peer, sizes, kp, x)
        except Exception as error:  # a peer's API change must not stop the benchmark
            failed.append(f"{peer} ({type(error).__name__}: {error})")
            continue
        add(peer, lambda f=loss_fn: jax.jit(optax_step(f, optimizer), donate_argnums=(0, 1)),
            (peer_params, optimizer.init(peer_params)), "its own layers, jax.grad")
    if sz.donation_row:
        add("jaxnn no donation", lambda: jaxnn.make_train_step(net, loss, optimizer),
            jaxnn_carry(params, optimizer), "donate=False")
    variants = []
    for name, (compiled, compile_s, temp, ops) in compile_all(specs, sz.compile_builds,
                                                               failed).items():
        carry = specs[name][1][:-2]
        run = stepper(compiled, copy_tree(carry), (x, y), sz.mlp_steps_per_round)
        variants.append(Variant(name, run, sz.mlp_steps_per_round, compile_s, temp, ops,
                                notes[name]))
    return variants, failed


# --- the classic small network ----------------------------------------------------------------


def small_problem(sz: Sizes):
    kx, ky, kp = jax.random.split(jax.random.key(1), 3)
    x = jax.random.uniform(kx, (sz.small_m, sz.small_nx), jnp.float32)
    y = (jax.random.uniform(ky, (sz.small_m, 1)) > 0.5).astype(jnp.float32)
    net = jaxnn.serial(jaxnn.dense(sz.small_hidden), jaxnn.relu(), jaxnn.dense(1),
                       jaxnn.sigmoid())
    _, params, _ = net.init(kp, (-1, sz.small_nx))
    return net, params, x, y


def plain_small_loss(params, x, y):
    (w1, b1), (w2, b2) = params
    h = jax.nn.relu(x @ w1 + b1[None, :])
    z = h @ w2 + b2[None, :]
    return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))


def small_variants(sz: Sizes) -> tuple[list[Variant], dict[str, Any]]:
    net, params, x, y = small_problem(sz)
    optimizer = optax.sgd(0.0075)
    n = sz.small_steps
    loss = jaxnn.binary_cross_entropy

    def jaxnn_scan():
        step = jaxnn.make_train_step(net, loss, optimizer)
        return jax.jit(lambda p, s, x_, y_: jaxnn.run_steps(step, p, (), s, x_, y_, n))

    plain_params = [(p["W"], p["b"]) for p in params[::2]]
    plain_step = optax_step(plain_small_loss, optimizer)

    def plain_scan():
        def run(p, s, x_, y_):
            def body(carry, _):
                p_, s_, value = plain_step(*carry, x_, y_)
                return (p_, s_), value

            (p, s), losses = jax.lax.scan(body, (p, s), None, length=n)
            return p, s, losses

        return jax.jit(run)

    loop_step = jaxnn.make_train_step(net, loss, optimizer, donate=True)

    def loop():
        p, s = copy_tree(params), optimizer.init(params)
        losses = []
        for _ in range(n):
            p, _, s, value = loop_step(p, (), s, x, y)
            losses.append(value)
        return losses

    figures = compile_all({
        "jaxnn run_steps": (jaxnn_scan, (params, optimizer.init(params), x, y)),
        "plain JAX scan": (plain_scan, (plain_params, optimizer.init(plain_params), x, y)),
    }, sz.compile_builds)
    scan_fn, plain_fn = figures["jaxnn run_steps"][0], figures["plain JAX scan"][0]

    def one_step():  # compiles the loop's jitted step
        return loop_step(copy_tree(params), (), optimizer.init(params), x, y)

    # the scans are compiled ahead of time: their warm-up would be a whole (long) run, so the
    # first timed round carries any first-run cost and the median leaves it out
    variants = [
        Variant("jaxnn run_steps", lambda: scan_fn(params, optimizer.init(params), x, y), 1,
                *figures["jaxnn run_steps"][1:], note="one lax.scan", warmup=lambda: None),
        Variant("jaxnn step loop", loop, 1, note="Python loop, jitted step", warmup=one_step),
        Variant("plain JAX scan",
                lambda: plain_fn(plain_params, optimizer.init(plain_params), x, y), 1,
                *figures["plain JAX scan"][1:], note="lax.scan of jax.grad",
                warmup=lambda: None),
    ]
    # the per-step dispatch cost, on a step with no work: the loop's floor
    noop = jax.jit(lambda p, s, x_, y_: (p, s, jnp.zeros((), jnp.float32)), donate_argnums=(0, 1))

    def noop_loop():
        p, s = copy_tree(params), optimizer.init(params)
        value = None
        for _ in range(n):
            p, s, value = noop(p, s, x, y)
        return value

    variants.append(Variant("empty step loop", noop_loop, 1, note="dispatch only",
                            warmup=lambda: noop(copy_tree(params), optimizer.init(params), x, y)))
    return variants, {"flops": mlp_flops((sz.small_nx, sz.small_hidden, 1), sz.small_m)}


# --- the small CNN ----------------------------------------------------------------------------


def cnn_available() -> bool:
    return all(hasattr(jaxnn, name) for name in ("conv", "max_pool", "flatten"))


def cnn_variants(sz: Sizes) -> tuple[list[Variant], float, list[str]]:
    c1, c2 = sz.cnn_channels
    s = sz.cnn_image
    kx, ky, kp = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(kx, (sz.cnn_batch, s, s, 1), jnp.float32)
    y = jax.random.randint(ky, (sz.cnn_batch,), 0, 10)
    net = jaxnn.serial(
        jaxnn.conv(c1, (3, 3)), jaxnn.relu(), jaxnn.max_pool((2, 2)),
        jaxnn.conv(c2, (3, 3)), jaxnn.relu(), jaxnn.max_pool((2, 2)),
        jaxnn.flatten(), jaxnn.dense(10),
    )
    _, params, _ = net.init(kp, (-1, s, s, 1))
    optimizer = optax.adam(1e-3)
    loss = jaxnn.softmax_cross_entropy

    def plain_loss(p, xb, yb):
        (k1, b1), (k2, b2), (w, b) = p
        h = xb
        for k, bias in ((k1, b1), (k2, b2)):
            h = jax.lax.conv_general_dilated(h, k, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(h + bias.reshape(1, 1, 1, -1))
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                      "VALID")
        logits = h.reshape(h.shape[0], -1) @ w + b[None, :]
        log_p = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_p, yb[:, None], axis=-1))

    leaves = [p for p in params if p]
    plain_params = [(p["W"], p["b"]) for p in leaves]
    specs, failed = {}, []
    for name, build, carry in (
        ("jaxnn", lambda: jaxnn.make_train_step(net, loss, optimizer, donate=True),
         jaxnn_carry(params, optimizer)),
        ("jaxnn autodiff", lambda: jaxnn.make_train_step(net, loss, optimizer, donate=True,
                                                         gradients="autodiff"),
         jaxnn_carry(params, optimizer)),
        ("plain JAX", lambda: jax.jit(optax_step(plain_loss, optimizer), donate_argnums=(0, 1)),
         (plain_params, optimizer.init(plain_params))),
    ):
        specs[name] = (build, (*carry, x, y))
    variants = []
    for name, (compiled, *figures) in compile_all(specs, sz.compile_builds, failed).items():
        carry = specs[name][1][:-2]
        run = stepper(compiled, copy_tree(carry), (x, y), sz.cnn_steps_per_round)
        variants.append(Variant(name, run, sz.cnn_steps_per_round, *figures))
    # conv FLOPs (multiply-adds ×2) forward; backward twice (dW, dx) except the first dx
    h1, h2 = s, s // 2
    conv1, conv2 = 2.0 * h1 * h1 * 9 * 1 * c1, 2.0 * h2 * h2 * 9 * c1 * c2
    dense_f = 2.0 * (s // 4) ** 2 * c2 * 10
    flops = sz.cnn_batch * (3 * (conv1 + conv2 + dense_f) - conv1)
    return variants, flops, failed


# --- report -----------------------------------------------------------------------------------


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def print_table(title: str, variants: list[Variant], medians: dict[str, float],
                flops: float | None, peak: float | None, unit: str = "step") -> None:
    print(f"\n{title}")
    head = (f"  {'variant':20s} {'ms/' + unit:>10s} {'±':>5s} {'best':>9s} {unit + 's/s':>10s} "
            f"{'GFLOP/s':>9s} {'of peak':>8s} {'compile s':>9s} {'temp':>10s}  "
            f"{'dots (narrow dW)':>16s}  note")
    print(head)
    for v in variants:
        t = medians[v.name]
        gflops = flops / t / 1e9 if flops else None
        frac = f"{gflops * 1e9 / peak:8.1%}" if gflops and peak else f"{'-':>8s}"
        comp = f"{v.compile_s:9.2f}" if v.compile_s is not None else f"{'-':>9s}"
        dots = (f"{v.hlo_ops['dot'] + v.hlo_ops['convolution']} "
                f"({v.hlo_ops['narrow_dw']})" if v.hlo_ops else "-")
        gf = f"{gflops:9.1f}" if gflops else f"{'-':>9s}"
        spread = f"{SPREAD.get(v.name, 0.0):5.0%}"
        best = f"{BEST[v.name] * 1e3:9.3f}" if v.name in BEST else f"{'-':>9s}"
        print(f"  {v.name:20s} {t * 1e3:10.3f} {spread} {best} {1 / t:10.1f} {gf} {frac} {comp} "
              f"{_fmt_bytes(v.temp_bytes):>10s}  {dots:>16s}  {v.note}")


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b


def run(sz: Sizes, quick: bool, workloads: set[str], use_peers: bool) -> dict[str, Any]:
    peers, skipped = available_peers()
    why = "not installed; pip install -e '.[bench]'"
    if not use_peers:
        peers, skipped, why = [], list(PEERS), "--no-peers"
    result: dict[str, Any] = {}
    print(f"jaxnn {jaxnn.__version__}, jax {jax.__version__}, backend {jax.default_backend()}, "
          f"devices {jax.devices()}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, {'quick' if quick else 'full'} sizes")
    print("peers present: " + (", ".join(peers) or "none") + "; skipped: "
          + (f"{', '.join(skipped)} ({why})" if skipped else "none"))

    if "mlp" in workloads:
        run_mlp(sz, peers, result)
    if "small" in workloads:
        run_small(sz, result, result.get("peak_gflops", 0.0) * 1e9 or None)
    if "cnn" in workloads:
        run_cnn(sz, result, result.get("peak_gflops", 0.0) * 1e9 or None)
    result["peers"] = ",".join(p for p in peers if f"mlp_vs_{p}" in result) or "none"
    result["peers_skipped"] = ",".join(skipped) or "none"
    return result


def run_mlp(sz: Sizes, peers: list[str], result: dict[str, Any]) -> None:
    variants, failed = mlp_variants(sz, peers)
    if failed:
        print("peers that failed to build: " + "; ".join(failed))
    peak_v, peak_flops = matmul_peak_variant(sz.peak_n)
    medians = interleaved([peak_v, *variants], sz.rounds)
    # the peak is what the machine can do: its fastest round (a busy round is not the peak)
    peak = peak_flops / BEST[peak_v.name]
    flops = mlp_flops(sz.mlp, sz.mlp_batch)
    print(f"\nmatmul peak ({sz.peak_n}x{sz.peak_n} float32 jnp.dot, fastest of {sz.rounds} "
          f"rounds): {peak / 1e9:.1f} GFLOP/s "
          f"(median {peak_flops / medians[peak_v.name] / 1e9:.1f})")
    print_table(f"MLP {'-'.join(map(str, sz.mlp))}, batch {sz.mlp_batch}, Adam, softmax CE "
                f"({flops / 1e6:.0f} MFLOP/step, median of {sz.rounds} rounds x "
                f"{sz.mlp_steps_per_round} steps)", variants, medians, flops, peak)
    by = {v.name: v for v in variants}
    speed = {name: 1 / t for name, t in medians.items()}
    result["mlp_vs_autodiff"] = speed["jaxnn"] / speed["jaxnn autodiff"]
    result["mlp_vs_plain_jax"] = speed["jaxnn"] / speed["plain JAX"]
    present = [p for p in peers if p in speed]
    for p in present:
        result[f"mlp_vs_{p}"] = speed["jaxnn"] / speed[p]
    if present:
        result["mlp_vs_best_peer"] = speed["jaxnn"] / max(speed[p] for p in present)
    result["mlp_peak_fraction"] = flops * speed["jaxnn"] / peak
    result["mlp_peak_fraction_best"] = flops / BEST["jaxnn"] / peak
    result["mlp_vs_plain_jax_best"] = BEST["plain JAX"] / BEST["jaxnn"]
    result["mlp_gflops"] = flops * speed["jaxnn"] / 1e9
    result["peak_gflops"] = peak / 1e9
    if "jaxnn no donation" in speed:
        result["mlp_donation_gain"] = speed["jaxnn"] / speed["jaxnn no donation"]
    result["temp_memory_vs_autodiff"] = _ratio(by["jaxnn"].temp_bytes,
                                               by["jaxnn autodiff"].temp_bytes)
    result["compile_vs_autodiff"] = _ratio(by["jaxnn"].compile_s, by["jaxnn autodiff"].compile_s)



def run_small(sz: Sizes, result: dict[str, Any], peak: float | None) -> None:
    small, info = small_variants(sz)
    medians = interleaved(small, sz.small_rounds)
    print_table(f"classic network [{sz.small_nx}, {sz.small_hidden}, 1] on {sz.small_m} "
                f"examples, {sz.small_steps} full-batch gradient-descent steps (median of "
                f"{sz.small_rounds} rounds; ms per {sz.small_steps} steps)", small, medians,
                info["flops"] * sz.small_steps, peak, unit="run")
    scan_t = medians["jaxnn run_steps"]
    result["small_vs_plain_scan"] = medians["plain JAX scan"] / scan_t
    result["small_vs_step_loop"] = medians["jaxnn step loop"] / scan_t
    result["small_scan_s"] = scan_t
    result["small_step_us"] = scan_t / sz.small_steps * 1e6
    result["small_dispatch_us"] = medians["empty step loop"] / sz.small_steps * 1e6
    result["small_temp_memory_vs_plain_scan"] = _ratio(
        small[0].temp_bytes, small[2].temp_bytes)



def run_cnn(sz: Sizes, result: dict[str, Any], peak: float | None) -> None:
    if cnn_available():
        cnn, cnn_flops, cnn_failed = cnn_variants(sz)
        if cnn_failed:
            print("\nCNN variants that failed to compile: " + "; ".join(cnn_failed))
        medians = interleaved(cnn, sz.rounds)
        print_table(f"small CNN conv{sz.cnn_channels[0]}-pool-conv{sz.cnn_channels[1]}-pool-"
                    f"dense10 on {sz.cnn_image}x{sz.cnn_image}x1, batch {sz.cnn_batch}, Adam "
                    f"(median of {sz.rounds} rounds x {sz.cnn_steps_per_round} steps)", cnn,
                    medians, cnn_flops, peak)
        for other, key in (("jaxnn autodiff", "cnn_vs_autodiff"),
                           ("plain JAX", "cnn_vs_plain_jax")):
            if other in medians and "jaxnn" in medians:
                result[key] = medians[other] / medians["jaxnn"]
    else:
        print("\nsmall CNN: skipped (jaxnn.conv, jaxnn.max_pool or jaxnn.flatten not found)")


def format_result(result: dict[str, Any]) -> str:
    parts = []
    for key, value in result.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return "RESULT " + " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints the tables and a last line ``RESULT key=value ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and rounds (< 30 s)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per workload (at least 5)")
    parser.add_argument("--workloads", default="mlp,small,cnn",
                        help="comma-separated subset of mlp, small, cnn")
    parser.add_argument("--no-peers", action="store_true",
                        help="leave out Flax, Equinox and Haiku even when installed")
    args = parser.parse_args(argv)
    workloads = {w.strip() for w in args.workloads.split(",") if w.strip()}
    if not workloads or workloads - {"mlp", "small", "cnn"}:
        parser.error(f"--workloads: expected names among mlp, small, cnn, got {args.workloads!r}")
    sz = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 5:
            parser.error("--rounds must be at least 5 (the figures are medians)")
        sz = dataclasses.replace(sz, rounds=args.rounds, small_rounds=args.rounds)
    start = time.perf_counter()
    with jax.enable_x64(False):  # float32 throughout, even inside a test session with x64 on
        result = run(sz, args.quick, workloads, not args.no_peers)
    print(f"\nwall time {time.perf_counter() - start:.1f} s")
    print(format_result(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
