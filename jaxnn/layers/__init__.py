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
from jaxnn.layers.conv import conv
from jaxnn.layers.dense import dense
from jaxnn.layers.pool import avg_pool, global_avg_pool, max_pool
from jaxnn.layers.shape import flatten, reshape
from jaxnn.remat import remat

__all__ = [
    "avg_pool",
    "conv",
    "dense",
    "elu",
    "flatten",
    "gelu",
    "global_avg_pool",
    "identity",
    "leaky_relu",
    "max_pool",
    "relu",
    "remat",
    "reshape",
    "serial",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]
