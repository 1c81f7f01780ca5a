"""The weight gradient ``dW = xᵀ dZ`` in both operand orders, over layer shapes.

``jaxnn.layers.weight_gradient`` computes ``(dZᵀ x)ᵀ`` instead of ``xᵀ dZ`` when a layer
narrows its input four-fold or more (``4·n_out ≤ n_in``), because XLA's CPU backend runs the
product that writes a row-major ``(n_in, n_out)`` result several times slower in that case. This
script measures both orders (interleaved, median of rounds, float32) so the rule can be checked
on another machine or backend::

    python benchmarks/weight_gradient.py
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.layers import weight_gradient

SHAPES = [  # (examples m, n_in, n_out)
    (209, 12288, 7), (209, 12288, 64), (16, 12288, 7), (128, 4096, 128), (128, 1024, 256),
    (128, 1024, 10), (128, 784, 10), (128, 1024, 512), (128, 512, 256), (128, 1024, 1024),
    (128, 784, 1024), (128, 10, 1024),
]


def main(argv: list[str] | None = None) -> int:
    del argv
    plain = jax.jit(lambda x, dz: x.T @ dz)
    transposed = jax.jit(lambda x, dz: jax.lax.optimization_barrier(dz.T @ x).T)
    chosen = jax.jit(weight_gradient)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; median ms of 25 rounds")
    print(f"{'m':>5s} {'n_in':>6s} {'n_out':>6s} {'xᵀdZ':>9s} {'(dZᵀx)ᵀ':>9s} {'ratio':>6s} "
          f"{'jaxnn':>9s}  jaxnn uses")
    with jax.enable_x64(False):
        for m, n_in, n_out in SHAPES:
            x = jax.random.normal(jax.random.key(0), (m, n_in), jnp.float32)
            dz = jax.random.normal(jax.random.key(1), (m, n_out), jnp.float32)
            np.testing.assert_allclose(plain(x, dz), transposed(x, dz), rtol=1e-4, atol=1e-3)
            fns = {"plain": plain, "transposed": transposed, "jaxnn": chosen}
            times = {name: [] for name in fns}
            for fn in fns.values():
                jax.block_until_ready(fn(x, dz))
            for _ in range(25):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    jax.block_until_ready(fn(x, dz))
                    times[name].append(time.perf_counter() - start)
            med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
            uses = "(dZᵀx)ᵀ" if 4 * n_out <= n_in else "xᵀdZ"
            print(f"{m:5d} {n_in:6d} {n_out:6d} {med['plain']:9.3f} {med['transposed']:9.3f} "
                  f"{med['plain'] / med['transposed']:6.2f} {med['jaxnn']:9.3f}  {uses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
