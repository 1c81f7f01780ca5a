"""Initializers: the documented variances, fans and defaults."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import initializers as init

FAN_IN, FAN_OUT = 400, 600
SHAPE = (FAN_IN, FAN_OUT)

EXPECTED_STD = {
    "lecun_normal": np.sqrt(1 / FAN_IN),
    "lecun_uniform": np.sqrt(1 / FAN_IN),
    "glorot_normal": np.sqrt(2 / (FAN_IN + FAN_OUT)),
    "glorot_uniform": np.sqrt(2 / (FAN_IN + FAN_OUT)),
    "he_normal": np.sqrt(2 / FAN_IN),
    "he_uniform": np.sqrt(2 / FAN_IN),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_STD))
def test_variance_scaling_family_has_the_documented_std(name):
    w = np.asarray(getattr(init, name)()(jax.random.key(0), SHAPE))
    assert w.shape == SHAPE
    assert abs(w.std() / EXPECTED_STD[name] - 1) < 0.01
    assert abs(w.mean()) < 0.01 * EXPECTED_STD[name] * 10
    if name.endswith("uniform"):
        assert np.abs(w).max() <= np.sqrt(3) * EXPECTED_STD[name] + 1e-7


def test_aliases():
    assert init.xavier_normal is init.glorot_normal
    assert init.kaiming_uniform is init.he_uniform


def test_constants_normal_uniform_and_dtype():
    k = jax.random.key(1)
    np.testing.assert_array_equal(init.zeros(k, (2, 3)), 0)
    np.testing.assert_array_equal(init.ones(k, (2, 3)), 1)
    w = np.asarray(init.normal(0.5)(k, (300, 300)))
    assert abs(w.std() - 0.5) < 0.01
    u = np.asarray(init.uniform(0.2)(k, (300, 300)))
    assert u.min() >= -0.2
    assert u.max() <= 0.2
    assert abs(u.std() - 0.2 / np.sqrt(3)) < 0.005
    assert init.he_normal()(k, (3, 4), jnp.float64).dtype == jnp.float64


def test_classic_randn_over_sqrt_n_prev_is_lecun_normal():
    k = jax.random.key(7)
    w = init.lecun_normal()(k, (12288, 7))
    randn = jax.random.normal(k, (12288, 7), jnp.float32)
    np.testing.assert_allclose(w, randn / np.sqrt(12288), rtol=1e-6)


def test_convolution_fans_include_the_window():
    assert init.fans((3, 3, 16, 32)) == (3 * 3 * 16, 3 * 3 * 32)
    with pytest.raises(ValueError, match="rank >= 2"):
        init.fans((5,))
