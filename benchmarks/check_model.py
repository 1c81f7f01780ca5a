"""Wall time of ``jaxnn.gradcheck.check_model`` on a ReLU network of about 4.5k parameters.

Each check evaluates its gradients and all finite-difference points in one compiled, vmapped
function, cached per (layer, structure, mode) with the cotangents, keys and directions as
arguments: the first run is dominated by compilation, the second (another seed) compiles
nothing::

    python benchmarks/check_model.py
"""

import sys
import time

import jax

import jaxnn


def main(argv: list[str] | None = None) -> int:
    del argv
    jax.config.update("jax_enable_x64", True)
    model = jaxnn.serial(jaxnn.dense(64), jaxnn.relu(), jaxnn.dense(32), jaxnn.relu(),
                         jaxnn.dense(10))
    _, params, _ = model.init(jax.random.key(0), (-1, 32))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    x = jax.random.normal(jax.random.key(1), (64, 32))
    y = jax.random.randint(jax.random.key(2), (64,), 0, 10)
    for run in range(2):
        start = time.perf_counter()
        report = jaxnn.gradcheck.check_model(model, jaxnn.softmax_cross_entropy, params, x, y,
                                             seed=run)
        seconds = time.perf_counter() - start
        print(f"check_model, {n_params} parameters, batch 64, run {run + 1}: {seconds:.1f} s, "
              f"{'passed' if report.passed else 'FAILED'}, "
              f"{sum(c.skipped for c in report.comparisons)} non-smooth entries skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
