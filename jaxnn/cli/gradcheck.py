"""``jaxnn gradcheck``: every built-in layer and loss, a model given by ``--layers``, or a
user's own layer or function given by ``--target``, checked in float64."""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

import jaxnn
from jaxnn.cli.common import ACTIVATIONS, CommandError, build_model, loss_for, parse_layers, require
from jaxnn.gradcheck import LAYER_CASES, LOSS_CASES, NOT_LAYERS_OR_LOSSES, plot_errors

# --- gradcheck --------------------------------------------------------------------------------


def _first_case(cases: dict[str, tuple], name: str) -> Callable[[], Any]:
    return lambda: cases[name][0]


def _default_layer_checks() -> dict[str, Callable[[], Any]]:
    """The first configuration of each layer in ``jaxnn.gradcheck.LAYER_CASES``."""
    return {name: _first_case(LAYER_CASES, name) for name in LAYER_CASES}


def _default_loss_checks() -> dict[str, Callable[[], Any]]:
    """The first configuration of each loss in ``jaxnn.gradcheck.LOSS_CASES``."""
    return {name: _first_case(LOSS_CASES, name) for name in LOSS_CASES}


def gradcheck_table(layer_names: Sequence[str] | None = None,
                    loss_names: Sequence[str] | None = None,
                    layer_checks: dict[str, Callable[[], Any]] | None = None,
                    loss_checks: dict[str, Callable[[], Any]] | None = None) -> list:
    """The checks to run: one per exported layer and loss (``jaxnn.layers.__all__``,
    ``jaxnn.losses.__all__`` by default), the first of its registered cases.

    Raises:
      CommandError: an exported name has no registered case (listing all of them).
    """

    if layer_names is None:
        layer_names = [n for n in jaxnn.layers.__all__ if n not in NOT_LAYERS_OR_LOSSES]
    if loss_names is None:
        loss_names = [n for n in jaxnn.losses.__all__ if n not in NOT_LAYERS_OR_LOSSES]
    layer_checks = _default_layer_checks() if layer_checks is None else layer_checks
    loss_checks = _default_loss_checks() if loss_checks is None else loss_checks
    missing = [n for n in layer_names if n not in layer_checks]
    missing += [n for n in loss_names if n not in loss_checks]
    if missing:
        raise CommandError(f"no default gradient-check configuration for the exported "
                           f"{', '.join(missing)}: register one in LAYER_CASES / LOSS_CASES "
                           f"(jaxnn/gradcheck/_cases.py)")
    return [layer_checks[n]() for n in layer_names] + [loss_checks[n]() for n in loss_names]


def run_gradchecks(checks: Sequence, workers: int | None = None) -> Any:
    """Runs each case in float64 and gathers one
    [`jaxnn.gradcheck.GradcheckReport`][jaxnn.gradcheck.GradcheckReport],
    its rows named by the case's label, in the order of ``checks``.

    The cases run on ``workers`` threads (default: one per CPU core, at most 4): a check's time
    is nearly all XLA's compilation, which releases the GIL, so two cores check about 1.3×
    as many cases per second as one thread (measured while other jobs loaded the machine)."""
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        parts = list(pool.map(jaxnn.gradcheck.check_case, checks))
    report = jaxnn.gradcheck.GradcheckReport()
    for case, part in zip(checks, parts, strict=True):
        report.comparisons.extend(dataclasses.replace(c, layer=repr(case))
                                  for c in part.comparisons)
    return report


def _gradcheck_model(args: argparse.Namespace) -> Any:


    sizes = parse_layers(args.layers)
    model = build_model(sizes, args.activation or "relu")
    _, params, state = model.init(jax.random.key(args.seed), (-1, sizes[0]))
    kx, ky = jax.random.split(jax.random.key(args.seed + 1))
    x = jax.random.normal(kx, (8, sizes[0]))
    if sizes[-1] == 1:
        y = (jax.random.uniform(ky, (8, 1)) > 0.5).astype(x.dtype)
    else:
        y = jax.random.randint(ky, (8,), 0, sizes[-1])
    return jaxnn.gradcheck.check_model(model, loss_for(sizes), params, x, y, state=state)


def _load_target(spec: str) -> Any:
    """The object ``MODULE:NAME`` names (``NAME`` may be dotted), imported from the current
    folder or ``sys.path``."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise CommandError(f"--target: expected MODULE:NAME such as mypkg.layers:scaled_tanh, "
                           f"got {spec!r}")
    if os.getcwd() not in sys.path:  # as `python -m` does, so a user's package is found
        sys.path.insert(0, os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except ImportError as e:
        raise CommandError(f"--target: cannot import {module_name!r}: {e}") from e
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CommandError(f"--target: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise CommandError(f"--target: {spec} is a {type(target).__name__}, not a layer or a "
                           f"function")
    return target


def parse_shape(text: str) -> tuple[int, ...]:
    """``"4,3"`` → ``(4, 3)``; ``""`` → ``()`` (a scalar)."""
    try:
        shape = tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        shape = (-1,)
    if any(d <= 0 for d in shape):
        raise CommandError(f"--shape: expected comma-separated positive integers such as 4,3, "
                           f"got {text!r}")
    return shape


def _as_layer(target: Any) -> Any:
    """``target`` if it is a Layer, the Layer a no-argument constructor returns, else None."""
    if isinstance(target, jaxnn.Layer):
        return target
    try:
        required = [p for p in inspect.signature(target).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                           p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return None
    if required or isinstance(target, type):
        return None
    made = target()
    return made if isinstance(made, jaxnn.Layer) else None


def _gradcheck_target(args: argparse.Namespace) -> tuple[Any, str]:
    """Checks the layer or function ``--target`` names at ``--shape``."""
    target = _load_target(args.target)
    kinds = [_kind(s) for s in args.shape or []]
    shapes = [parse_shape(s.split(":", 1)[1] if kind != "float" else s)
              for s, kind in zip(args.shape or [], kinds, strict=True)]
    if not shapes:
        raise CommandError("--target needs --shape: the input shape of a layer (batch first), "
                           "or one --shape per argument of a function")
    layer = _as_layer(target)
    if layer is not None:
        in_shape = shapes[0] if len(shapes) == 1 else tuple(shapes)
        return (jaxnn.gradcheck.check_layer(layer, in_shape, seed=args.seed),  # type: ignore[arg-type]
                f"layer {args.target}")
    if _is_layer_constructor(target):
        raise CommandError(f"--target {args.target} is a layer constructor that needs "
                           f"arguments; give a Layer (e.g. a module-level my_layer = "
                           f"{getattr(target, '__name__', 'constructor')}(...)) or a constructor "
                           f"of no arguments")
    low, high = _domain(args)
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(args.seed), len(shapes))
        arrays = []
        for k, s, kind in zip(keys, shapes, kinds, strict=True):
            if kind == "int":
                arrays.append(jax.random.randint(k, s, 0, 4))
            elif kind == "bool":
                arrays.append(jax.random.bernoulli(k, 0.5, s))
            elif low is None:
                arrays.append(jax.random.normal(k, s, "float64"))
            else:
                assert high is not None  # --range gives both ends
                arrays.append(jax.random.uniform(k, s, "float64", low, high))
        try:
            report = jaxnn.gradcheck.check_function(target, *arrays, seed=args.seed)
        except Exception as e:  # the user's function: one line, not a traceback
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise CommandError(f"--target {args.target} at shapes "
                               f"{', '.join(str(s) for s in shapes)} ({_domain_text(low, high)}):"
                               f" {type(e).__name__}: {first}") from e
    return report, f"function {args.target} ({_domain_text(low, high)} arguments)"


def _kind(text: str) -> str:
    """``"int"`` / ``"bool"`` for a ``--shape`` written ``int:4,3`` / ``bool:4``, else
    ``"float"``."""
    kind, colon, _ = text.partition(":")
    if not colon:
        return "float"
    if kind not in ("int", "bool"):
        raise CommandError(f"--shape: expected N,N,... or int:N,N,... or bool:N,N,..., got "
                           f"{text!r}")
    return kind


def _is_layer_constructor(target: Any) -> bool:
    """A function documented to return a ``Layer`` (``jaxnn.dense``), by its annotation."""
    try:
        returned = inspect.signature(target).return_annotation
    except (TypeError, ValueError):
        return False
    return returned is jaxnn.Layer or returned in ("Layer", "jaxnn.Layer")


def _domain(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """``(low, high)`` of uniform arguments from ``--positive`` / ``--range``; ``(None, None)``
    for standard normal ones."""
    if args.positive and args.range:
        raise CommandError("give one of --positive and --range")
    if args.positive:
        return 0.1, 3.0
    if args.range:
        try:
            low, high = (float(v) for v in args.range.split(","))
        except ValueError:
            low = high = float("nan")
        if not low < high:
            raise CommandError(f"--range: expected LOW,HIGH with LOW < HIGH such as -1,1, got "
                               f"{args.range!r}")
        return low, high
    return None, None


def _domain_text(low: float | None, high: float | None) -> str:
    return "standard normal" if low is None else f"uniform in [{low:g}, {high:g})"


def _gradcheck_report(args: argparse.Namespace) -> tuple[Any, str]:
    """The report the flags ask for, and what it covers in words."""
    if args.target:
        return _gradcheck_target(args)
    if args.shape:
        raise CommandError("--shape goes with --target")
    if args.layers:
        return _gradcheck_model(args), f"model {args.layers} ({args.activation or 'relu'})"
    if args.only:

        names = [n.strip() for n in args.only.split(",") if n.strip()]
        exported = set(jaxnn.layers.__all__) | set(jaxnn.losses.__all__)
        unknown = [n for n in names if n not in exported or n in NOT_LAYERS_OR_LOSSES]
        if unknown or not names:
            valid = sorted(exported - NOT_LAYERS_OR_LOSSES)
            raise CommandError(f"--only: unknown {', '.join(unknown) or 'empty list'}; choose "
                               f"among {', '.join(valid)}")
        report = run_gradchecks(gradcheck_table(
            [n for n in names if n in jaxnn.layers.__all__],
            [n for n in names if n in jaxnn.losses.__all__]))
        return report, ", ".join(names)
    return run_gradchecks(gradcheck_table()), "every built-in layer and loss"


def run(args: argparse.Namespace) -> int:
    """``jaxnn gradcheck``: every built-in layer and loss, the model given by ``--layers``, or a
    user's layer or function given by ``--target``; ``--plot`` draws the errors."""
    began = time.perf_counter()
    if sum(bool(x) for x in (args.target, args.layers, args.only)) > 1:
        raise CommandError("give one of --target, --layers and --only")
    report, what = _gradcheck_report(args)
    print(report.table())
    n_failed = len(report.failing_layers)
    unverified = list(dict.fromkeys(layer for layer, _ in report.unverified))
    ok = not report.failures and (args.allow_unverified or not unverified)
    verdict = "passed" if not report.failures else f"FAILED in {n_failed}: " + ", ".join(
        report.failing_layers)
    if unverified:
        verdict += (f"; unverified in {len(unverified)}: {', '.join(unverified)}"
                    + (" (allowed)" if args.allow_unverified else ""))
    print(f"\ngradient check of {what} (float64; ≤ 1e-9 vs jax.grad, ≤ 1e-6 vs finite "
          f"differences): {verdict} ({time.perf_counter() - began:.1f} s)")
    if args.plot:
        require("matplotlib", "cli", "--plot")
        plot_errors(report, args.plot)
        print(f"wrote {args.plot}")
    return 0 if ok else 1



def add_command(commands) -> None:
    """Adds ``jaxnn gradcheck`` to the sub-command parser."""
    p = commands.add_parser(
        "gradcheck", help="verify every built-in layer and loss (or a model) in float64",
        description="Check hand-derived gradients against jax.grad (≤ 1e-9 relative) and "
        "finite differences (≤ 1e-6), in float64. Exit status 1 on any failure.")
    p.add_argument("--only", metavar="NAMES", help="check only these exported layers and "
                   "losses, e.g. dense,relu,binary_cross_entropy")
    p.add_argument("--layers", help="check this model instead, e.g. 2,4,1")
    p.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation of --layers")
    p.add_argument("--target", metavar="MODULE:NAME", help="check your own layer (a Layer or a "
                   "constructor of no arguments) or function, e.g. mypkg.layers:scaled_tanh; "
                   "imported from the current folder or the installed packages")
    p.add_argument("--shape", action="append", metavar="N,N,...", help="with --target: the "
                   "layer's input shape (batch first), or one --shape per function argument: "
                   "'' for a scalar, int:N,... for integers in [0, 4), bool:N,... for booleans "
                   "(held fixed)")
    p.add_argument("--positive", action="store_true", help="with --target: draw a "
                   "function's arguments uniform in [0.1, 3) instead of standard normal (for "
                   "log, sqrt...)")
    p.add_argument("--range", metavar="LOW,HIGH", help="with --target: draw a function's "
                   "arguments uniform in [LOW, HIGH)")
    p.add_argument("--plot", metavar="PNG", help="draw one heat map of the relative error per "
                   "parameter into this file")
    p.add_argument("--allow-unverified", action="store_true", help="exit 0 even when some "
                   "leaf had no entry any reference could judge (reported 'unverified')")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)

