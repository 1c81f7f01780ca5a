"""``jaxnn.data_parallel``: a deprecated alias of ``jaxnn.sharding`` for one release.

Each of its functions warns (``DeprecationWarning``, naming the replacement) and returns what the
``jaxnn.sharding`` function it names returns. The data-parallel runs on several devices are in
tests/test_sharding.py.
"""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import jaxnn
from jaxnn import data_parallel, sharding


def _problem(m=8):
    net = jaxnn.serial(jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(1))
    _, params, _ = net.init(jax.random.key(0), (-1, 3))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(1), (m, 3), jnp.float64)
    return net, params, x, jnp.sin(x[:, :1])


@pytest.mark.parametrize(("name", "replacement"), [("data_mesh", "make_mesh"),
                                               ("replicate", "place"),
                                               ("shard_batch", "shard_batch"),
                                               ("shard_train_step", "shard_train_step"),
                                               ("DATA_AXIS", "DATA_AXIS")])
def test_every_name_warns_and_names_its_replacement(name, replacement):
    """Using any of the module's names raises a DeprecationWarning naming jaxnn.sharding's."""
    _net, params, x, _y = _problem()
    mesh = sharding.make_mesh()
    calls = {
        "data_mesh": lambda: data_parallel.data_mesh(),
        "replicate": lambda: data_parallel.replicate(params, mesh),
        "shard_batch": lambda: data_parallel.shard_batch(x, mesh),
        "shard_train_step": lambda: data_parallel.shard_train_step(lambda *a: a, mesh),
        "DATA_AXIS": lambda: data_parallel.DATA_AXIS,
    }
    with pytest.warns(DeprecationWarning, match=f"data_parallel.{name} is deprecated .* use "
                                                f"jaxnn.sharding.{replacement}"):
        calls[name]()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_alias_does_what_jaxnn_sharding_does():
    """The aliased step, mesh, placement and batch equal jaxnn.sharding's."""
    net, params, x, y = _problem()
    optimizer = optax.sgd(0.1)
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    mesh = sharding.make_mesh()
    expected = sharding.shard_train_step(step, mesh)(params, (), optimizer.init(params), x, y)
    got = data_parallel.shard_train_step(step)(params, (), optimizer.init(params), x, y)
    chex.assert_trees_all_close(got, expected, rtol=0, atol=0)
    assert data_parallel.data_mesh().shape == mesh.shape
    assert data_parallel.replicate(params, mesh)[0]["W"].sharding.is_fully_replicated
    assert data_parallel.shard_batch(x, mesh).sharding.spec == jax.sharding.PartitionSpec("data")
    assert data_parallel.DATA_AXIS == sharding.DATA_AXIS
    with pytest.raises(AttributeError, match="has no attribute 'data_mesh_2'"):
        data_parallel.data_mesh_2
