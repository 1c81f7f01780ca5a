"""The ``jaxnn`` command: train, verify and report.

``jaxnn train`` trains the classic L-layer classifier (dense/activation … dense, sigmoid or
softmax output) with [`jaxnn.fit`][jaxnn.fit] on a built-in data set or a user's files,
prints the cost and the accuracy, draws ``cost.png`` (and ``decision_boundary.png`` for 2-D data)
and saves a checkpoint it can resume from. ``jaxnn gradcheck`` checks every built-in layer and
loss (or a model given by flags) against ``jax.grad`` and finite differences. ``jaxnn summary``
prints a model's table; ``jaxnn bench`` runs the speed benchmark in its short mode.

Also ``python -m jaxnn``. Run ``jaxnn COMMAND --help`` for the options.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
from collections.abc import Sequence

import jaxnn
from jaxnn.checkpoint import CheckpointError
from jaxnn.cli import gradcheck as _gradcheck_command
from jaxnn.cli import train as _train_app
from jaxnn.cli.common import ACTIVATIONS, CommandError, build_model, parse_layers
from jaxnn.data import DataFileError

__all__ = ["CommandError", "build_parser", "main"]


# --- summary ----------------------------------------------------------------------------------


def summary(args: argparse.Namespace) -> int:
    """``jaxnn summary``: the model's layers, output shapes and parameter counts."""
    sizes = parse_layers(args.layers)
    model = build_model(sizes, args.activation or "relu", args.dropout or 0.0)
    print(jaxnn.summary(model, (-1, sizes[0])))
    return 0


# --- bench ------------------------------------------------------------------------------------

BENCHMARK = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"


def bench(args: argparse.Namespace) -> int:
    """``jaxnn bench``: ``benchmarks/train_step.py --quick`` (from a source checkout)."""
    if not BENCHMARK.is_file():
        raise CommandError(f"jaxnn bench runs the benchmark of a source checkout, and "
                           f"{BENCHMARK} is not there (install jaxnn with pip install -e from a "
                           f"clone of the repository)")
    name = "jaxnn_benchmark_train_step"
    spec = importlib.util.spec_from_file_location(name, BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except ImportError as err:  # a peer library of the full comparison, say
        raise CommandError(f"{BENCHMARK}: {err}") from err
    if not hasattr(module, "main"):
        raise CommandError(f"{BENCHMARK} has no main(argv) to run")
    extra = [a for a in args.bench_args if a != "--"]
    argv = extra if args.full else ["--quick", *extra]
    result = module.main(argv)
    return result if isinstance(result, int) else 0


# --- the command line -------------------------------------------------------------------------



def _add_other_commands(commands) -> None:
    p = commands.add_parser("summary", help="the model's layers, shapes and parameter counts")
    p.add_argument("--layers", required=True, help="sizes, input first, e.g. 2,20,7,5,1")
    p.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation (default relu)")
    p.add_argument("--dropout", type=float, help="drop rate after each hidden activation")
    p.set_defaults(run=summary)

    p = commands.add_parser("bench", help="the training-step speed benchmark, short mode",
                            description="Runs benchmarks/train_step.py --quick; other "
                            "arguments (e.g. --rounds 7) go to the benchmark.")
    p.add_argument("--full", action="store_true", help="the full benchmark, not --quick")
    p.set_defaults(run=bench)



def build_parser() -> argparse.ArgumentParser:
    """The ``jaxnn`` argument parser: train, gradcheck, summary, bench."""
    parser = argparse.ArgumentParser(
        prog="jaxnn", description="Train, verify and report jaxnn networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_app.add_command(commands)
    _gradcheck_command.add_command(commands)
    _add_other_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jaxnn`` and ``python -m jaxnn``; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.bench_args = extra
    try:
        return args.run(args)
    except (CommandError, CheckpointError, DataFileError) as err:
        print(f"jaxnn {args.command}: error: {err}", file=sys.stderr)
        return 1
    except ImportError as err:  # an optional package, named by the data loaders
        print(f"jaxnn {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before or after training, which saves on its own
        print(f"jaxnn {args.command}: interrupted", file=sys.stderr)
        return 130

