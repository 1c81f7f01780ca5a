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
from jaxnn.combinators import concatenate, parallel, residual, serial
from jaxnn.layers.conv import conv
from jaxnn.layers.dense import dense
from jaxnn.layers.dropout import dropout
from jaxnn.layers.embed import embedding
from jaxnn.layers.norm import batch_norm, layer_norm, rms_norm
from jaxnn.layers.pool import avg_pool, global_avg_pool, max_pool
from jaxnn.layers.shape import flatten, reshape
from jaxnn.remat import remat

__all__ = [
    "avg_pool",
    "batch_norm",
    "concatenate",
    "conv",
    "dense",
    "dropout",
    "elu",
    "embedding",
    "flatten",
    "gelu",
    "global_avg_pool",
    "identity",
    "layer_norm",
    "leaky_relu",
    "max_pool",
    "parallel",
    "relu",
    "remat",
    "reshape",
    "residual",
    "rms_norm",
    "serial",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]
