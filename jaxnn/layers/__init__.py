"""Layer constructors. Each returns a [`jaxnn.Layer`][jaxnn.Layer]; put them in
[`jaxnn.serial`][jaxnn.serial].

One private module per family (``_dense``, ``_conv``, ``_pool``, ``_norm``, ``_dropout``,
``_shape``, ``_embedding``, ``_activations``, ``_combinators``, ``_remat``,
``_attention``, ``_transformer``); the names below are
the public ones. Layers depend only on [`jaxnn.core`][jaxnn.core] and
[`jaxnn.initializers`][jaxnn.initializers].
"""

from jaxnn.layers._activations import elu_layer as elu
from jaxnn.layers._activations import gelu_layer as gelu
from jaxnn.layers._activations import identity_layer as identity
from jaxnn.layers._activations import leaky_relu_layer as leaky_relu
from jaxnn.layers._activations import relu_layer as relu
from jaxnn.layers._activations import sigmoid_layer as sigmoid
from jaxnn.layers._activations import silu_layer as silu
from jaxnn.layers._activations import softmax_layer as softmax
from jaxnn.layers._activations import softplus_layer as softplus
from jaxnn.layers._activations import tanh_layer as tanh
from jaxnn.layers._attention import multi_head_attention
from jaxnn.layers._combinators import concatenate, parallel, residual, serial
from jaxnn.layers._conv import conv
from jaxnn.layers._dense import dense, weight_gradient
from jaxnn.layers._dropout import dropout
from jaxnn.layers._embedding import embedding
from jaxnn.layers._norm import batch_norm, layer_norm, rms_norm
from jaxnn.layers._pool import avg_pool, global_avg_pool, max_pool
from jaxnn.layers._recurrent import gru, lstm
from jaxnn.layers._remat import remat
from jaxnn.layers._shape import flatten, reshape
from jaxnn.layers._transformer import (
    positional_embedding,
    sinusoidal_positional_embedding,
    transformer_block,
)

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
    "gru",
    "identity",
    "layer_norm",
    "leaky_relu",
    "lstm",
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
    "weight_gradient",
]

# attention and transformers (jaxnn.layers._attention, jaxnn.layers._transformer)
__all__ += [
    "multi_head_attention",
    "positional_embedding",
    "sinusoidal_positional_embedding",
    "transformer_block",
]
