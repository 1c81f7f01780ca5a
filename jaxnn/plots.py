"""The pictures the library makes: the cost curve and a 2-D decision boundary.

Both write a PNG with matplotlib (the ``cli`` extra: ``pip install -e ".[cli]"``), on the
non-interactive Agg backend, and return the path. ``jaxnn train`` draws them into its output
folder; the guides draw them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["cost_curve", "decision_boundary"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - the message is what matters
        raise ImportError(
            'jaxnn.plots needs matplotlib: pip install -e ".[cli]"'
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cost_curve(path: str, costs: Any, *, title: str = "cost") -> str:
    """Draw the cost ``J`` against the step and save it as a PNG at ``path``.

    Args:
      path: where to write the picture.
      costs: the cost after each step, any 1-D array-like.
      title: the picture's title.

    Returns:
      ``path``.

    Examples:
      >>> import tempfile, os
      >>> out = os.path.join(tempfile.mkdtemp(), "cost.png")
      >>> jaxnn.plots.cost_curve(out, [0.69, 0.5, 0.3, 0.2]) == out and os.path.getsize(out) > 0
      True
    """
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(np.arange(len(costs)), costs, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("cost")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def decision_boundary(path: str, predict: Callable[[np.ndarray], Any], x: Any, labels: Any, *,
                      title: str = "decision boundary") -> str:
    """Shade the class ``predict`` gives each point of the plane and scatter the data on top.

    ``predict`` maps a ``(k, 2)`` float32 array of points to ``(k, 1)`` probabilities (class 1
    where ``> 0.5``) or ``(k, K)`` class scores (the class is the ``argmax``).

    Args:
      path: where to write the picture.
      predict: the trained network's prediction, e.g. ``lambda g: jaxnn.predict(model, params,
        g)``.
      x: the ``(m, 2)`` inputs to scatter.
      labels: their ``m`` class ids (any shape with ``m`` entries).
      title: the picture's title.

    Returns:
      ``path``.

    Examples:
      >>> import tempfile, os
      >>> import numpy as np
      >>> out = os.path.join(tempfile.mkdtemp(), "boundary.png")
      >>> x = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
      >>> above = lambda g: (g[:, 1:] > 0.5).astype(np.float32)
      >>> jaxnn.plots.decision_boundary(out, above, x, [0, 1, 1, 0]) == out
      True
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"decision_boundary: x must have shape (m, 2), got {x.shape}")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"decision_boundary: {x.shape[0]} points but {labels.shape[0]} labels")
    lo, hi = x.min(axis=0), x.max(axis=0)
    pad = 0.1 * np.maximum(hi - lo, 1e-6)
    g0, g1 = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200),
                         np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200))
    grid = np.stack([g0.ravel(), g1.ravel()], 1).astype(np.float32)
    z = np.asarray(predict(grid))
    z = z.reshape(z.shape[0], -1)
    classes = (z[:, 0] > 0.5) if z.shape[1] == 1 else np.argmax(z, 1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    ax.contourf(g0, g1, classes.reshape(g0.shape).astype(float), alpha=0.35, cmap="coolwarm")
    ax.scatter(x[:, 0], x[:, 1], c=labels, s=10, cmap="coolwarm", edgecolors="k",
               linewidths=0.3)
    ax.set_title(title)
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
