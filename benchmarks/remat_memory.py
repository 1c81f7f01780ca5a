"""Memory saved by rematerialization (``jaxnn.remat``) on a deep MLP.

A deep MLP (``depth`` blocks of ``dense(width) → relu``) compiled three ways: no remat,
``jaxnn.remat`` around groups of ``√depth`` blocks, and ``jaxnn.remat`` around every block.
Two figures per variant:

* **residuals kept**: the bytes the forward keeps for the backward (every residual array of
  ``model.forward``, each buffer counted once — a relu's output is the next dense's input), plus
  the largest block's own residuals, recomputed during the backward: the activation memory the
  hand-derived chain needs at its peak;
* **XLA temp**: ``jax.jit(step).lower(...).compile().memory_analysis().temp_size_in_bytes`` of
  the whole train step, XLA's estimate of its temporary buffers. It reflects the scheduling of
  the backend that compiles it (on CPU the figure does not change with remat, not even for
  ``jax.checkpoint`` on a plain-JAX MLP; run this on a GPU for the accelerator's figure).

    python benchmarks/remat_memory.py [--depth 16] [--width 512] [--batch 1024]
"""

import argparse
import math

import jax
import jax.numpy as jnp
import optax

import jaxnn


def deep_mlp(depth: int, width: int, group: int | None) -> jaxnn.Layer:
    blocks = [jaxnn.serial(jaxnn.dense(width), jaxnn.relu()) for _ in range(depth)]
    if group is not None:
        blocks = [jaxnn.remat(jaxnn.serial(*blocks[i:i + group]))
                  for i in range(0, depth, group)]
    return jaxnn.serial(*blocks, jaxnn.dense(1))


def _buffers(tree) -> dict[int, int]:
    """``{id: nbytes}`` of the arrays in ``tree`` (the same array twice counts once)."""
    return {id(leaf): leaf.nbytes for leaf in jax.tree.leaves(tree) if isinstance(leaf, jax.Array)}


def residual_bytes(model: jaxnn.Layer, params, x) -> int:
    """Residuals kept by the forward, plus the largest recomputed block's residuals."""
    _, _, residuals = model.forward(params, (), x, key=None, train=True)
    kept = _buffers(residuals)
    recomputed = 0
    for block, p in zip(model.sublayers, params, strict=True):
        if block.name == "remat":
            # the recomputation: the wrapped block's own residuals, less what is kept anyway
            inner_residuals = block.sublayers[0].forward(p[0], (), x, key=None, train=True)[2]
            extra = {k: v for k, v in _buffers(inner_residuals).items() if k not in kept}
            recomputed = max(recomputed, sum(extra.values()))
        x, _, _ = block.forward(p, (), x, key=None, train=True)
    return sum(kept.values()) + recomputed


def temp_bytes(model: jaxnn.Layer, params, x, y) -> int:
    optimizer = optax.sgd(0.01)
    step = jaxnn.make_train_step(model, jaxnn.mean_squared_error, optimizer, jit=False)
    compiled = jax.jit(step).lower(params, (), optimizer.init(params), x, y).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main(argv=None) -> dict[str, tuple[int, int]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args(argv)
    group = max(1, round(math.sqrt(args.depth)))
    variants = {"no remat": None, f"remat every {group} blocks": group, "remat every block": 1}
    x = jnp.ones((args.batch, args.width), jnp.float32)
    y = jnp.zeros((args.batch, 1), jnp.float32)
    activation = x.nbytes
    print(f"deep MLP: {args.depth} x (dense({args.width}) -> relu), batch {args.batch}, float32, "
          f"{jax.devices()[0].platform}; one activation = {activation / 2**20:.1f} MiB")
    results = {}
    for name, g in variants.items():
        model = deep_mlp(args.depth, args.width, g)
        _, params, _ = model.init(jax.random.key(0), (-1, args.width))
        kept, temp = residual_bytes(model, params, x), temp_bytes(model, params, x, y)
        results[name] = (kept, temp)
        print(f"{name:>22}: residuals kept {kept / 2**20:7.1f} MiB "
              f"({kept / activation:4.1f} activations)   XLA temp {temp / 2**20:7.1f} MiB")
    return results


if __name__ == "__main__":
    main()
