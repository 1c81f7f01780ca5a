"""Wall time of ``jaxnn gradcheck`` over every exported layer and loss, in one process.

The command checks the first registered case of each exported layer and loss (at its input
shape and at batch 1, or 2 in training mode). Each check evaluates its gradients and every
finite-difference point in one compiled function, cached per (layer or function, structure,
mode), so a second pass over the same cases compiles nothing::

    python benchmarks/gradcheck.py            # two passes
    python benchmarks/gradcheck.py --passes 1

The last line is ``RESULT first_s=… second_s=… checks=… passed=…``.
"""

import argparse
import sys
import time

import jax

from jaxnn.cli.gradcheck import gradcheck_table, run_gradchecks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    seconds, report = [], None
    for run in range(args.passes):
        start = time.perf_counter()
        report = run_gradchecks(gradcheck_table())
        seconds.append(time.perf_counter() - start)
        print(f"jaxnn gradcheck, every exported layer and loss, pass {run + 1}: "
              f"{seconds[-1]:.1f} s, {'passed' if report.passed else 'FAILED'}")
    n_checks = len({c.layer for c in report.comparisons})
    second = f"{seconds[1]:.2f}" if len(seconds) > 1 else "nan"
    print(f"RESULT first_s={seconds[0]:.2f} second_s={second} checks={n_checks} "
          f"passed={report.passed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
