"""Layer constructors. Each returns a :class:`jaxnn.Layer`; put them in :func:`serial`."""

from jaxnn.activations import elu_layer as elu
from jaxnn.activations import gelu_layer as gelu
from jaxnn.activations import identity_layer as identity
from jaxnn.activations import leaky_relu_layer as leaky_relu
from jaxnn.activations import relu_layer as relu
from jaxnn.activations import sigmoid_layer as sigmoid
from jaxnn.activations import silu_layer as silu
from jaxnn.activations import softmax_layer as softmax
from jaxnn.activations import softplus_layer as softplus
from jaxnn.activations import tanh_layer as tanh
from jaxnn.combinators import serial
from jaxnn.layers.dense import dense

__all__ = [
    "dense",
    "elu",
    "gelu",
    "identity",
    "leaky_relu",
    "relu",
    "serial",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]
