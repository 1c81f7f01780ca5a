r"""Activations as functions on arrays, like ``jax.nn``: ``jaxnn.activations.relu(x)``.

Each is the forward of the matching layer (``jaxnn.relu()``, defined with its hand-derived
derivative in ``jaxnn/layers/_activations.py``) applied with [`jaxnn.apply`][jaxnn.apply], so
``jax.grad`` of a function of the result runs the hand-derived

$$
dZ = dA \odot g'(Z)
$$

(the formulas of each $g$ and $g'$ are with the activation layers, from
[`jaxnn.relu`][jaxnn.relu] on).
"""

from jaxnn.layers._activations import elu as elu
from jaxnn.layers._activations import gelu as gelu
from jaxnn.layers._activations import identity as identity
from jaxnn.layers._activations import leaky_relu as leaky_relu
from jaxnn.layers._activations import relu as relu
from jaxnn.layers._activations import sigmoid as sigmoid
from jaxnn.layers._activations import silu as silu
from jaxnn.layers._activations import softmax as softmax
from jaxnn.layers._activations import softplus as softplus
from jaxnn.layers._activations import tanh as tanh

__all__ = [
    "elu",
    "gelu",
    "identity",
    "leaky_relu",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]
