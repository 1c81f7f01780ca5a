"""The ``jaxnn`` command: train, verify and report.

``jaxnn train`` trains the classic L-layer classifier (dense/activation … dense, sigmoid or
softmax output) with [`jaxnn.fit`][jaxnn.fit] on a built-in data set or a user's files,
prints the cost and the accuracy, draws ``cost.png`` (and ``decision_boundary.png`` for 2-D data)
and saves a checkpoint it can resume from. ``jaxnn gradcheck`` checks every built-in layer and
loss (or a model given by flags) against ``jax.grad`` and finite differences. ``jaxnn summary``
prints a model's table. (The benchmarks are scripts of a source checkout, ``benchmarks/``, not
commands: an installed package does not hold them.)

Also ``python -m jaxnn``. Run ``jaxnn COMMAND --help`` for the options.
"""

from __future__ import annotations

import argparse
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


# --- the command line -------------------------------------------------------------------------


def _add_other_commands(commands) -> None:
    p = commands.add_parser("summary", help="the model's layers, shapes and parameter counts")
    p.add_argument("--layers", required=True, help="sizes, input first, e.g. 2,20,7,5,1")
    p.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation (default relu)")
    p.add_argument("--dropout", type=float, help="drop rate after each hidden activation")
    p.set_defaults(run=summary)


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxnn`` argument parser: train, gradcheck, summary."""
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
    args = build_parser().parse_args(argv)
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

