"""jaxnn: functional neural networks in JAX with hand-derived, verified backward passes."""

import sys as _sys

from jaxnn import activations as activations
from jaxnn import chain as chain
from jaxnn import checkpoint as checkpoint
from jaxnn import data as data
from jaxnn import data_parallel as data_parallel
from jaxnn import debug as debug
from jaxnn import ensemble as ensemble
from jaxnn import gradcheck as gradcheck
from jaxnn import initializers as initializers
from jaxnn import layers as layers
from jaxnn import losses as losses
from jaxnn import plots as plots
from jaxnn import precision as precision
from jaxnn import privacy as privacy
from jaxnn import sharding as sharding
from jaxnn import testing as testing
from jaxnn.chain import fuse as fuse
from jaxnn.chain import l2_penalty as l2_penalty
from jaxnn.chain import l2_regularization as l2_regularization
from jaxnn.chain import per_example_grads as per_example_grads
from jaxnn.chain import value_and_grad as value_and_grad
from jaxnn.chain import weight_mask as weight_mask
from jaxnn.core import Layer as Layer
from jaxnn.core import apply as apply
from jaxnn.core import map_leaves as map_leaves
from jaxnn.core import reference_apply as reference_apply
from jaxnn.fit import FitResult as FitResult
from jaxnn.fit import fit as fit
from jaxnn.generate import generate as generate
from jaxnn.generate import init_cache as init_cache
from jaxnn.layers import avg_pool as avg_pool
from jaxnn.layers import batch_norm as batch_norm
from jaxnn.layers import concatenate as concatenate
from jaxnn.layers import conv as conv
from jaxnn.layers import dense as dense
from jaxnn.layers import dropout as dropout
from jaxnn.layers import elu as elu
from jaxnn.layers import embedding as embedding
from jaxnn.layers import flatten as flatten
from jaxnn.layers import gelu as gelu
from jaxnn.layers import global_avg_pool as global_avg_pool
from jaxnn.layers import gru as gru
from jaxnn.layers import identity as identity
from jaxnn.layers import layer_norm as layer_norm
from jaxnn.layers import leaky_relu as leaky_relu
from jaxnn.layers import lstm as lstm
from jaxnn.layers import max_pool as max_pool
from jaxnn.layers import multi_head_attention as multi_head_attention
from jaxnn.layers import parallel as parallel
from jaxnn.layers import positional_embedding as positional_embedding
from jaxnn.layers import relu as relu
from jaxnn.layers import remat as remat
from jaxnn.layers import reshape as reshape
from jaxnn.layers import residual as residual
from jaxnn.layers import rms_norm as rms_norm
from jaxnn.layers import serial as serial
from jaxnn.layers import sigmoid as sigmoid
from jaxnn.layers import silu as silu
from jaxnn.layers import sinusoidal_positional_embedding as sinusoidal_positional_embedding
from jaxnn.layers import softmax as softmax
from jaxnn.layers import softplus as softplus
from jaxnn.layers import tanh as tanh
from jaxnn.layers import transformer_block as transformer_block
from jaxnn.losses import Loss as Loss
from jaxnn.losses import binary_cross_entropy as binary_cross_entropy
from jaxnn.losses import binary_cross_entropy_with_logits as binary_cross_entropy_with_logits
from jaxnn.losses import mean_squared_error as mean_squared_error
from jaxnn.losses import softmax_cross_entropy as softmax_cross_entropy
from jaxnn.precision import Policy as Policy
from jaxnn.summary import summary as summary
from jaxnn.train import accuracy as accuracy
from jaxnn.train import make_train_step as make_train_step
from jaxnn.train import predict as predict
from jaxnn.train import run_steps as run_steps

__version__ = "0.1.0"


def _names_of_shadowed_module(function, module) -> None:
    """``jaxnn.fit`` and ``jaxnn.summary`` are the functions, which hide their modules of the
    same name on the package. The module's public names are made attributes of the function
    too, so that the dotted names the documentation uses (``jaxnn.fit.epoch_batches``,
    ``jaxnn.summary.summary``) resolve from ``import jaxnn`` as written; the function itself is
    unchanged (its signature, ``help`` and type), and ``from jaxnn.fit import …`` works as
    before."""
    for name in module.__all__:
        setattr(function, name, getattr(module, name))


_names_of_shadowed_module(fit, _sys.modules["jaxnn.fit"])
_names_of_shadowed_module(summary, _sys.modules["jaxnn.summary"])

__all__ = [
    "FitResult",
    "Layer",
    "Loss",
    "Policy",
    "__version__",
    "accuracy",
    "activations",
    "apply",
    "avg_pool",
    "batch_norm",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "chain",
    "checkpoint",
    "concatenate",
    "conv",
    "data",
    "data_parallel",
    "debug",
    "dense",
    "dropout",
    "elu",
    "embedding",
    "ensemble",
    "fit",
    "flatten",
    "fuse",
    "gelu",
    "global_avg_pool",
    "gradcheck",
    "gru",
    "identity",
    "initializers",
    "l2_penalty",
    "l2_regularization",
    "layer_norm",
    "layers",
    "leaky_relu",
    "losses",
    "lstm",
    "make_train_step",
    "map_leaves",
    "max_pool",
    "mean_squared_error",
    "parallel",
    "per_example_grads",
    "plots",
    "precision",
    "predict",
    "privacy",
    "reference_apply",
    "relu",
    "remat",
    "reshape",
    "residual",
    "rms_norm",
    "run_steps",
    "serial",
    "sharding",
    "sigmoid",
    "silu",
    "softmax",
    "softmax_cross_entropy",
    "softplus",
    "summary",
    "tanh",
    "testing",
    "value_and_grad",
    "weight_mask",
]

# attention and transformers
__all__ += [
    "generate",
    "init_cache",
    "multi_head_attention",
    "positional_embedding",
    "sinusoidal_positional_embedding",
    "transformer_block",
]
