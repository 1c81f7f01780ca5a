"""One training step of a character-level transformer LM: jaxnn against Flax NNX and plain JAX.

The architecture is ``examples/char_transformer.py``'s::

    embedding(V, D), learned positions (T, D), L × pre-norm transformer block (causal attention
    with h heads, MLP D → 4D → D with exact GELU), final layer norm, dense(V);
    softmax cross-entropy on the next character, Adam (optax.adam(1e-3))

with V = 103 (the example's character set), D = 128, L = 3, h = 4, layer-norm epsilon 1e-5, at
(B, T) = (32, 64), (8, 512) and (2, 2048). Variants, all jitted and donating their parameters
and optimizer state, on the same weights and data:

* ``jaxnn``: ``jaxnn.make_train_step`` (every backward hand-derived; blockwise attention);
* ``flax_nnx``: the same model of Flax NNX modules (``nnx.Embed``, ``nnx.LayerNorm``,
  ``nnx.MultiHeadAttention`` with a causal mask, ``nnx.Linear``), ``jax.grad``, the same epsilon
  and exact GELU;
* ``plain_jax``: the same math written directly with ``jnp`` (the ``T × T`` scores masked and
  softmaxed whole), ``jax.grad``.

Before timing, the three variants' losses and gradients are computed on the same weights and
batch and must agree (float32 rounding); the script stops otherwise.

Measurement: one process; variants interleaved round by round (the first variant rotates),
after an untimed warm-up; every timing ends in ``jax.block_until_ready``; the figure is the
median over rounds. A large jitted ``jnp.dot`` (2048 × 2048, float32) runs in the same rounds;
the matmul peak is its fastest round. The FLOPs counted are those the math needs: every matrix
product forward and twice over backward (``dW`` and ``dx``), causal attention counted once
(``QKᵀ`` and ``PV`` over the ``T(T+1)/2`` visible pairs), nothing for the embedding, norms,
GELU, softmax or Adam.

``--profile`` also traces the jaxnn step with ``jax.profiler`` (every leaf layer's forward and
backward, the loss and Adam inside ``jax.named_scope``s) and prints the XLA op time of each
piece: where the step's time goes. A fusion counts under the piece of its root instruction.

The last line is ``RESULT key=value ...``: ``lm_T{T}_vs_flax`` and ``lm_T{T}_vs_plain_jax``
are speed ratios (> 1: jaxnn faster), ``lm_T{T}_peak_fraction`` jaxnn's FLOP rate over the peak.

    python benchmarks/transformer_lm.py                # the three sizes
    python benchmarks/transformer_lm.py --profile      # and where jaxnn's step spends its time
    python benchmarks/transformer_lm.py --quick        # tiny sizes: a smoke run in seconds
"""

import argparse
import dataclasses
import functools
import glob
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import jaxnn


@dataclasses.dataclass(frozen=True)
class Sizes:
    vocab: int = 103
    width: int = 128
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 4
    shapes: tuple[tuple[int, int], ...] = ((32, 64), (8, 512), (2, 2048))  # (B, T)
    rounds: int = 7
    peak_n: int = 2048
    epsilon: float = 1e-5


FULL = Sizes()
QUICK = Sizes(vocab=11, width=16, depth=1, heads=2, shapes=((4, 16), (2, 32), (1, 64)),
              rounds=3, peak_n=256)


# --- measurement ----------------------------------------------------------------------------


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int
                ) -> tuple[dict[str, float], dict[str, float]]:
    """``(median, best)`` seconds per call of each ``run``, rounds interleaved across them."""
    for run in runs.values():
        jax.block_until_ready(run())
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            jax.block_until_ready(runs[name]())
            times[name].append(time.perf_counter() - start)
    return ({n: statistics.median(ts) for n, ts in times.items()},
            {n: min(ts) for n, ts in times.items()})


def stepper(step: Callable, carry: tuple, data: tuple) -> Callable[[], Any]:
    """``run()`` that applies a donating ``step(*carry, *data) -> (*carry, loss)`` once."""
    holder = [carry]

    def run():
        *new, loss = step(*holder[0], *data)
        holder[0] = tuple(new)
        return loss

    return run


def step_flops(sz: Sizes, batch: int, t: int) -> float:
    """Matrix-product FLOPs of one training step: 3 × the forward's (forward, ``dW``, ``dx``).

    Per token and block: Q, K, V and the output projection ``4·2D²``, the MLP ``2·2·rD²``,
    causal attention ``QKᵀ`` and ``PV`` over the visible keys, ``2·2·D·(T+1)/2`` on average;
    the head ``2DV``.
    """
    d, r = sz.width, sz.mlp_ratio
    per_block = 8 * d * d + 4 * r * d * d + 2 * d * (t + 1)
    return 3.0 * batch * t * (sz.depth * per_block + 2 * d * sz.vocab)


# --- the three models -----------------------------------------------------------------------


def jaxnn_model(sz: Sizes, t: int) -> jaxnn.Layer:
    blocks = [jaxnn.transformer_block(sz.heads, sz.mlp_ratio, causal=True)
              for _ in range(sz.depth)]
    return jaxnn.serial(jaxnn.embedding(sz.vocab, sz.width), jaxnn.positional_embedding(t),
                        *blocks, jaxnn.layer_norm(epsilon=sz.epsilon), jaxnn.dense(sz.vocab))


def plain_params(params) -> dict:
    """jaxnn's parameters as the flat dict the plain-JAX model reads (the same arrays)."""
    embed, positions, *blocks, final_norm, head = params
    out = {"embedding": embed["embedding"], "positions": positions["positions"],
           "final_norm": final_norm, "head": head, "blocks": []}
    for block in blocks:
        (norm1, attention), = block[0]
        (norm2, up, _, down), = block[1]
        out["blocks"].append({"norm1": norm1, "attention": attention, "norm2": norm2,
                              "up": up, "down": down})
    return out


def _layer_norm(p, x, epsilon):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + epsilon) * p["scale"] + p["offset"]


def plain_logits(p, ids, heads: int, epsilon: float):
    """The LM written directly: ``T × T`` causal scores, softmax, exact GELU."""
    n, t = ids.shape
    h = p["embedding"][ids] + p["positions"][None, :t]
    mask = jnp.tril(jnp.ones((t, t), bool))
    for b in p["blocks"]:
        a = b["attention"]
        u = _layer_norm(b["norm1"], h, epsilon)
        d = u.shape[-1] // heads

        def split(w, bias, u=u, a=a, d=d):
            return (u @ a[w] + a[bias]).reshape(n, t, heads, d)

        q, k, v = split("Wq", "bq"), split("Wk", "bk"), split("Wv", "bv")
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(d)
        probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
        o = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, t, heads * d)
        h = h + o @ a["Wo"] + a["bo"]
        u = _layer_norm(b["norm2"], h, epsilon)
        g = jax.nn.gelu(u @ b["up"]["W"] + b["up"]["b"], approximate=False)
        h = h + g @ b["down"]["W"] + b["down"]["b"]
    h = _layer_norm(p["final_norm"], h, epsilon)
    return h @ p["head"]["W"] + p["head"]["b"]


def flax_model(sz: Sizes, t: int, params):
    """``(graphdef, nnx params)`` of the Flax NNX model, its weights copied from jaxnn's."""
    from flax import nnx

    d = sz.width

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm1 = nnx.LayerNorm(d, epsilon=sz.epsilon, rngs=rngs)
            self.attention = nnx.MultiHeadAttention(sz.heads, d, d, d, decode=False,
                                                    rngs=rngs)
            self.norm2 = nnx.LayerNorm(d, epsilon=sz.epsilon, rngs=rngs)
            self.up = nnx.Linear(d, sz.mlp_ratio * d, rngs=rngs)
            self.down = nnx.Linear(sz.mlp_ratio * d, d, rngs=rngs)

        def __call__(self, x, mask):
            x = x + self.attention(self.norm1(x), mask=mask)
            return x + self.down(jax.nn.gelu(self.up(self.norm2(x)), approximate=False))

    class LM(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(sz.vocab, d, rngs=rngs)
            self.positions = nnx.Param(jnp.zeros((t, d)))
            self.blocks = nnx.List([Block(rngs) for _ in range(sz.depth)])
            self.norm = nnx.LayerNorm(d, epsilon=sz.epsilon, rngs=rngs)
            self.head = nnx.Linear(d, sz.vocab, rngs=rngs)

        def __call__(self, ids):
            x = self.embed(ids) + self.positions[None, :ids.shape[1]]
            mask = nnx.make_causal_mask(ids)
            for block in self.blocks:
                x = block(x, mask)
            return self.head(self.norm(x))

    model = LM(nnx.Rngs(0))
    p = plain_params(params)
    hd = d // sz.heads
    assignments = [(model.embed.embedding, p["embedding"]), (model.positions, p["positions"]),
                   (model.norm.scale, p["final_norm"]["scale"]),
                   (model.norm.bias, p["final_norm"]["offset"]),
                   (model.head.kernel, p["head"]["W"]), (model.head.bias, p["head"]["b"])]
    for block, pb in zip(model.blocks, p["blocks"], strict=True):
        a = pb["attention"]
        for norm, pn in ((block.norm1, pb["norm1"]), (block.norm2, pb["norm2"])):
            assignments += [(norm.scale, pn["scale"]), (norm.bias, pn["offset"])]
        for name, w, b in (("query", "Wq", "bq"), ("key", "Wk", "bk"), ("value", "Wv", "bv")):
            proj = getattr(block.attention, name)
            assignments += [(proj.kernel, a[w].reshape(d, sz.heads, hd)),
                            (proj.bias, a[b].reshape(sz.heads, hd))]
        assignments += [(block.attention.out.kernel, a["Wo"].reshape(sz.heads, hd, d)),
                        (block.attention.out.bias, a["bo"])]
        for lin, pl in ((block.up, pb["up"]), (block.down, pb["down"])):
            assignments += [(lin.kernel, pl["W"]), (lin.bias, pl["b"])]
    for variable, value in assignments:
        variable.set_value(value)
    return nnx.split(model, nnx.Param)


def _cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def optax_step(loss_fn: Callable, optimizer) -> Callable:
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def copy_tree(tree):
    return jax.tree.map(jnp.copy, tree)


def build(sz: Sizes, batch: int, t: int, with_flax: bool = True, dtype: Any = None
          ) -> dict[str, Any]:
    """The variants at one size: ``{"data", "params", "loss_fns", "steps"}`` (the parameters
    cast to ``dtype`` when given: the tests check the three models in float64)."""
    kp, kx = jax.random.split(jax.random.key(0))
    model = jaxnn_model(sz, t)
    _, params, state = model.init(kp, (-1, t))
    if dtype is not None:
        params = jax.tree.map(lambda a: a.astype(dtype), params)
    chunk = jax.random.randint(kx, (batch, t + 1), 0, sz.vocab)
    x, y = chunk[:, :-1], chunk[:, 1:]
    optimizer = optax.adam(1e-3)
    loss = jaxnn.softmax_cross_entropy
    pp = plain_params(params)
    loss_fns = {
        "jaxnn": (functools.partial(jaxnn.value_and_grad(model, loss), state=state), params),
        "plain_jax": (lambda p, xb, yb: _cross_entropy(plain_logits(p, xb, sz.heads,
                                                                    sz.epsilon), yb), pp),
    }
    if with_flax:
        from flax import nnx

        graphdef, fp = flax_model(sz, t, params)
        loss_fns["flax_nnx"] = (lambda p, xb, yb: _cross_entropy(nnx.merge(graphdef, p)(xb),
                                                                 yb), fp)
    steps = {"jaxnn": stepper(jaxnn.make_train_step(model, loss, optimizer, donate=True),
                              (copy_tree(params), state, optimizer.init(params)), (x, y))}
    for name in ("flax_nnx", "plain_jax"):
        if name in loss_fns:
            fn, p = loss_fns[name]
            step = jax.jit(optax_step(fn, optimizer), donate_argnums=(0, 1))
            steps[name] = stepper(step, (copy_tree(p), optimizer.init(p)), (x, y))
    return {"data": (x, y), "params": params, "loss_fns": loss_fns, "steps": steps,
            "model": model}


def check_agreement(variants: dict[str, Any], rtol: float = 2e-4) -> dict[str, float]:
    """Each variant's loss and gradient norm on the same weights and batch; raises when the
    peers disagree with jaxnn beyond float32 rounding."""
    x, y = variants["data"]
    figures = {}
    for name, (fn, p) in variants["loss_fns"].items():
        if name == "jaxnn":
            (value, _), grads = jax.jit(fn)(p, x=x, y=y)
        else:
            value, grads = jax.jit(jax.value_and_grad(fn))(p, x, y)
        norm = optax.tree.norm(grads)
        figures[name] = (float(value), float(norm))
    ref_loss, ref_norm = figures["jaxnn"]
    for name, (value, norm) in figures.items():
        if not (math.isclose(value, ref_loss, rel_tol=rtol)
                and math.isclose(norm, ref_norm, rel_tol=10 * rtol)):
            raise SystemExit(f"{name} disagrees with jaxnn: loss {value} vs {ref_loss}, "
                             f"gradient norm {norm} vs {ref_norm}")
    return figures


def matmul_peak(n: int) -> tuple[Callable[[], Any], float]:
    a = jax.random.normal(jax.random.key(7), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(8), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return (lambda: dot(a, b)), 2.0 * n ** 3


# --- where the jaxnn step's time goes -------------------------------------------------------


def _category(leaf: jaxnn.Layer, path: str) -> str:
    if leaf.name == "dense":
        return "head dense" if "transformer_block" not in path else (
            "MLP dense (up, down)")
    return {"embedding": "embedding", "positional_embedding": "positional_embedding",
            "layer_norm": "layer_norm", "multi_head_attention": "attention",
            "gelu": "gelu"}.get(leaf.name, leaf.name)


def _scoped(leaf: jaxnn.Layer, path: str) -> jaxnn.Layer:
    """The leaf with its forward and backward inside ``jax.named_scope``s naming its piece."""
    label = _category(leaf, path)

    def forward(params, state, x, *, key=None, train=False):
        with jax.named_scope(f"lm[{label} forward]"):
            return leaf.forward(params, state, x, key=key, train=train)

    def backward(params, residuals, dy):
        with jax.named_scope(f"lm[{label} backward]"):
            return leaf.backward(params, residuals, dy)

    return leaf._replace(forward=forward, backward=backward)


def _scoped_fn(label: str, fn: Callable) -> Callable:
    def scoped(*args, **kwargs):
        with jax.named_scope(f"lm[{label}]"):
            return fn(*args, **kwargs)

    return scoped


_SCOPE = re.compile(r"lm\[([^\]]+)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = .*?op_name=\"([^\"]*)\"", re.M)


def traced(fn: Callable[[], Any], steps: int) -> tuple[Any, float]:
    """``(profile, seconds)``: a ``jax.profiler`` trace of ``steps`` calls of ``fn`` (after one
    untimed call) as ``jax.profiler.ProfileData``, and the wall time of those calls."""
    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            start = time.perf_counter()
            for _ in range(steps):
                jax.block_until_ready(fn())
            seconds = time.perf_counter() - start
        trace = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0]
        return jax.profiler.ProfileData.from_file(trace), seconds


def profile(sz: Sizes, batch: int, t: int, steps: int = 3) -> dict[str, float]:
    """Milliseconds of XLA op time per step, by piece of the jaxnn step.

    The step runs with every leaf layer's forward and backward, the loss and Adam inside
    ``jax.named_scope``s; ``jax.profiler`` traces ``steps`` executions; each executed HLO
    instruction's time goes to the piece its ``op_name`` names (time on both CPU threads is
    added, so the total is CPU time, not wall time).
    """
    model = jaxnn.map_leaves(_scoped, jaxnn_model(sz, t))
    ce = jaxnn.softmax_cross_entropy
    loss = ce._replace(value=_scoped_fn("softmax cross-entropy", ce.value),
                       grad=_scoped_fn("softmax cross-entropy", ce.grad))
    adam = optax.adam(1e-3)
    optimizer = optax.GradientTransformation(_scoped_fn("Adam", adam.init),
                                             _scoped_fn("Adam", adam.update))
    kp, kx = jax.random.split(jax.random.key(0))
    _, params, state = model.init(kp, (-1, t))
    ids = jax.random.randint(kx, (batch, t), 0, sz.vocab)
    step = jaxnn.make_train_step(model, loss, optimizer)
    opt_state = optimizer.init(params)
    compiled = step.lower(params, state, opt_state, ids, ids).compile()
    scope_of = {}
    for name, op_name in _INSTRUCTION.findall(compiled.as_text()):
        found = _SCOPE.findall(op_name)
        scope_of[name] = found[-1] if found else "other (residual adds, copies)"
    data, _ = traced(lambda: compiled(params, state, opt_state, ids, ids), steps)
    totals: dict[str, float] = {}
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                name = event.name
                if name in scope_of and not name.startswith(("while", "call", "conditional")):
                    piece = scope_of[name]
                    totals[piece] = totals.get(piece, 0.0) + event.duration_ns / 1e6 / steps
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def print_profile(totals: dict[str, float], batch: int, t: int) -> None:
    whole = sum(totals.values())
    print(f"\n  where jaxnn's step goes at B{batch} T{t} (XLA op time per step, both threads; "
          f"jax.profiler)")
    print(f"  {'piece':<38} {'ms':>9} {'share':>7}")
    for piece, ms in totals.items():
        print(f"  {piece:<38} {ms:9.2f} {ms / whole:7.1%}")
    outside = sum(ms for piece, ms in totals.items() if not piece.startswith("attention"))
    print(f"  {'all but attention':<38} {outside:9.2f} {outside / whole:7.1%}\n", flush=True)


# --- main -----------------------------------------------------------------------------------


def run(sz: Sizes, with_flax: bool, do_profile: bool) -> dict[str, float]:
    result: dict[str, float] = {}
    peak_run, peak_flops = matmul_peak(sz.peak_n)
    print(f"jaxnn {jaxnn.__version__}, jax {jax.__version__}, backend {jax.default_backend()}, "
          f"V={sz.vocab} D={sz.width} L={sz.depth} heads={sz.heads} mlp={sz.mlp_ratio}D, "
          f"float32, Adam, median of {sz.rounds} interleaved rounds")
    print(f"{'B':>3} {'T':>5} {'variant':<10} {'ms/step':>9} {'best':>9} {'GFLOP/s':>8} "
          f"{'of peak':>8} {'loss':>9} {'|grad|':>9}")
    for batch, t in sz.shapes:
        variants = build(sz, batch, t, with_flax)
        agree = check_agreement(variants)
        runs = {**variants["steps"], "matmul peak": peak_run}
        med, best = interleaved(runs, sz.rounds)
        peak = peak_flops / best["matmul peak"]
        flops = step_flops(sz, batch, t)
        for name in variants["steps"]:
            gf = flops / med[name] / 1e9
            loss, norm = agree[name]
            print(f"{batch:>3} {t:>5} {name:<10} {med[name] * 1e3:9.1f} {best[name] * 1e3:9.1f} "
                  f"{gf:8.1f} {gf * 1e9 / peak:8.1%} {loss:9.5f} {norm:9.5f}")
        print(f"{batch:>3} {t:>5} matmul peak {peak / 1e9:.1f} GFLOP/s (fastest round; median "
              f"{peak_flops / med['matmul peak'] / 1e9:.1f}); step {flops / 1e9:.2f} GFLOP",
              flush=True)
        for name in ("flax_nnx", "plain_jax"):
            if name in med:
                result[f"lm_T{t}_vs_{name.removesuffix('_nnx')}"] = med[name] / med["jaxnn"]
        result[f"lm_T{t}_peak_fraction"] = flops / med["jaxnn"] / peak
        if do_profile:
            print_profile(profile(sz, batch, t), batch, t)
    return result


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 rounds (seconds)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--sizes", default=None,
                        help="comma-separated BxT, e.g. 32x64,8x512 (default: all three)")
    parser.add_argument("--no-flax", action="store_true", help="leave Flax NNX out")
    parser.add_argument("--profile", action="store_true",
                        help="also time each piece of the jaxnn step on its own")
    args = parser.parse_args(argv)
    sz = QUICK if args.quick else FULL
    if args.rounds is not None:
        sz = dataclasses.replace(sz, rounds=args.rounds)
    if args.sizes:
        shapes = tuple(tuple(int(n) for n in s.split("x")) for s in args.sizes.split(","))
        sz = dataclasses.replace(sz, shapes=shapes)
    with_flax = not args.no_flax
    if with_flax:
        try:
            import flax.nnx  # noqa: F401
        except ImportError:
            print("flax not installed: its variant is skipped")
            with_flax = False
    start = time.perf_counter()
    with jax.enable_x64(False):  # float32 throughout, even inside a test session with x64 on
        result = run(sz, with_flax, args.profile)
    print(f"wall time {time.perf_counter() - start:.1f} s")
    line = "RESULT " + " ".join(f"{k}={v:.4g}" for k, v in result.items())
    print(line)
    sys.stdout.flush()
    return line


if __name__ == "__main__":
    main()
