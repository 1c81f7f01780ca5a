"""What the ``jaxnn`` commands share: the error they print, optional packages, and the classic
L-layer model that ``train``, ``gradcheck --layers`` and ``summary`` build from ``--layers``."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import optax

import jaxnn

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "elu", "gelu", "silu", "softplus")
OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.2, "momentum": 0.02, "adam": 0.01}


class CommandError(Exception):
    """A problem the user can fix (bad option, missing file): printed, exit status 1."""

def require(module: str, extra: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise CommandError(f"{what} needs the optional package {module!r}: install it with "
                           f'pip install "jaxnn[{extra}]"') from err


# --- models -----------------------------------------------------------------------------------


def parse_layers(text: str) -> list[int]:
    """``"2,20,7,5,1"`` → ``[2, 20, 7, 5, 1]`` (input size first, at least two sizes)."""
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise CommandError(f"--layers: expected comma-separated positive integers such as "
                           f"2,20,7,5,1, got {text!r}") from None
    if len(sizes) < 2 or any(n < 1 for n in sizes):
        raise CommandError(f"--layers: expected at least two positive sizes (input first, output "
                           f"last), got {text!r}")
    return sizes


def build_model(sizes: Sequence[int], activation: str = "relu", dropout: float = 0.0):
    """The classic L-layer network for ``sizes = [n_x, n_1, …, n_L]``.

    Hidden layers are ``dense(n_l)`` and ``activation`` (then ``dropout(rate)`` when
    ``dropout > 0``); the output is ``dense(1), sigmoid()`` for one unit (binary
    cross-entropy) or ``dense(n_L)`` logits for several (softmax cross-entropy).
    """

    if activation not in ACTIVATIONS:
        raise CommandError(f"unknown activation {activation!r}; choose one of "
                           f"{', '.join(ACTIVATIONS)}")
    if not 0 <= dropout < 1:
        raise CommandError(f"--dropout: the rate must lie in [0, 1), got {dropout}")
    layers = []
    for n in sizes[1:-1]:
        layers += [jaxnn.dense(n), getattr(jaxnn, activation)()]
        if dropout:
            layers.append(jaxnn.dropout(dropout))
    layers.append(jaxnn.dense(sizes[-1]))
    if sizes[-1] == 1:
        layers.append(jaxnn.sigmoid())
    return jaxnn.serial(*layers)


def loss_for(sizes: Sequence[int]):

    return jaxnn.binary_cross_entropy if sizes[-1] == 1 else jaxnn.softmax_cross_entropy


def make_optimizer(name: str, lr: float, model: Any = None, l2: float = 0.0):
    """The optax optimizer ``name``, after L2 on ``model``'s weights when ``l2 > 0``."""

    if name == "sgd":
        optimizer = optax.sgd(lr)
    elif name == "momentum":
        optimizer = optax.sgd(lr, momentum=0.9)
    elif name == "adam":
        optimizer = optax.adam(lr)
    else:
        raise CommandError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if l2:
        return optax.chain(jaxnn.l2_regularization(model, l2), optimizer)
    return optimizer

