"""``jaxnn.summary``: a table of a network's layers, output shapes and parameter counts.

The shapes come from the layers' own ``init`` (run under ``jax.eval_shape``, so no parameter is
allocated and no data runs). Every layer of the network is instrumented on the way down through
``sublayers`` and ``rebuild`` — the same walk as [`jaxnn.map_leaves`][jaxnn.map_leaves] — so
combinators
(``serial``, ``parallel``, ``residual``, a user's own) need nothing special.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from jaxnn.core import Layer, sublayer_labels

__all__ = ["summary"]


@dataclasses.dataclass
class _Row:
    path: str
    depth: int
    leaf: bool
    out_shape: Any = None
    params: Any = None
    state: Any = None


def _size(tree: Any) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))


def _spec(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _instrument(layer: Layer, path: str, depth: int, rows: list[_Row]) -> Layer:
    """``layer`` with every ``init`` (its own and its sublayers') recording a row, pre-order."""
    if layer.sublayers:
        if layer.rebuild is None:
            raise ValueError(f"summary: combinator {layer.name!r} has sublayers but no rebuild "
                             f"function")
        children = tuple(_instrument(sub, f"{path}/{label}:{sub.name}", depth + 1, rows)
                         for label, sub in zip(sublayer_labels(layer), layer.sublayers,
                                               strict=True))
        layer = layer.rebuild(children)
    inner, leaf = layer.init, not layer.sublayers

    def init(key, in_shape):
        row = _Row(path, depth, leaf)
        rows.append(row)  # before the sublayers' rows: a combinator heads its block
        out_shape, params, state = inner(key, in_shape)
        # keep shapes only: under eval_shape the arrays are tracers that must not leak
        row.out_shape = out_shape
        row.params, row.state = jax.tree.map(_spec, (params, state))
        return out_shape, params, state

    return layer._replace(init=init)


def _shape_text(shape: Any) -> str:
    if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
        return str(shape)
    if isinstance(shape, tuple | list):  # several outputs (parallel)
        return "[" + ", ".join(_shape_text(s) for s in shape) + "]"
    return str(shape)


def _params_text(params: Any) -> str:
    """``W (3, 3, 1, 8), b (8,)`` for a leaf's parameter dict."""
    if not isinstance(params, dict):
        return ""
    return ", ".join(f"{name} {tuple(value.shape)}" for name, value in params.items())


def summary(model: Layer, in_shape: Sequence[int], *, key: jax.Array | None = None) -> str:
    """A plain-text table of ``model``'s layers: path, output shape, parameter shapes and count.

    Args:
      model: any [`jaxnn.Layer`][jaxnn.Layer], a whole network or a single layer.
      in_shape: the input shape, batch axis first (``-1`` for any batch size).
      key: the PRNG key handed to ``init`` (only shapes are computed; default ``key(0)``).

    Returns:
      The table as a string (``print`` it). Rows are named by path as in gradient-check
        reports (``serial/3:dense``, or ``serial/head:dense`` for a named layer), combinators
        before the layers they contain; the parameter count of a combinator's row is the total
        of its block. The last lines give the total number of parameters and, if any layer
        keeps state (running statistics), of state entries.

    Raises:
      TypeError: if ``model`` is not a [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
      >>> print(jaxnn.summary(jaxnn.serial(jaxnn.dense(4), jaxnn.relu()), (-1, 3)))
      layer             output shape  parameters        count
      ----------------  ------------  ----------------  -----
      serial            (-1, 4)                            16
        serial/0:dense  (-1, 4)       W (3, 4), b (4,)     16
        serial/1:relu   (-1, 4)                             0
      ----------------  ------------  ----------------  -----
      total parameters: 16

      A layer with running statistics adds a line for its state:

      >>> print(jaxnn.summary(jaxnn.serial(jaxnn.dense(2), jaxnn.batch_norm()), (-1, 3)))
      layer                  output shape  parameters               count
      ---------------------  ------------  -----------------------  -----
      serial                 (-1, 2)                                   12
        serial/0:dense       (-1, 2)       W (3, 2), b (2,)             8
        serial/1:batch_norm  (-1, 2)       offset (2,), scale (2,)      4
      ---------------------  ------------  -----------------------  -----
      total parameters: 12
      total state entries (not trained): 4
    """
    if not isinstance(model, Layer):
        raise TypeError(f"summary: model must be a jaxnn.Layer, got {type(model).__name__}")
    in_shape = tuple(in_shape)
    rows: list[_Row] = []
    instrumented = _instrument(model, model.name, 0, rows)
    key = jax.random.key(0) if key is None else key
    jax.eval_shape(lambda k: instrumented.init(k, in_shape)[1:], key)

    header = ("layer", "output shape", "parameters", "count")
    table = [header]
    for row in rows:
        table.append((
            "  " * row.depth + row.path,
            _shape_text(row.out_shape),
            _params_text(row.params) if row.leaf else "",
            f"{_size(row.params):,}",
        ))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells):
        *left, count = cells
        text = "  ".join(c.ljust(w) for c, w in zip(left, widths, strict=False))
        return f"{text}  {count.rjust(widths[-1])}"

    rule = line(tuple("-" * w for w in widths))
    out = [line(table[0]), rule, *(line(r) for r in table[1:]), rule]
    out.append(f"total parameters: {_size(rows[0].params):,}")
    n_state = _size(rows[0].state)
    if n_state:
        out.append(f"total state entries (not trained): {n_state:,}")
    return "\n".join(out)
