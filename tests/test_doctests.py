"""The ``>>>`` examples in the library's docstrings run and print what they say.

Every example may assume the four imports the API reference states once at its top::

    import jax
    import jax.numpy as jnp
    import numpy as np
    import jaxnn

Their cost is XLA compiling: about 1 500 small programs (eager operations at each example's
shapes, the examples' jits) for about 1 000 examples, three quarters of the time. The session's
persistent compilation cache (``tests/conftest.py``) keeps them, so a later run reads them back.
"""

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn

pytestmark = pytest.mark.slow  # about 1 000 examples compiled: the full run's, not the quick loop's

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(jaxnn.__path__, "jaxnn.")
    if not m.name.endswith("__main__")
)

EXAMPLE_GLOBALS = {"jax": jax, "jnp": jnp, "np": np, "jaxnn": jaxnn}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs=EXAMPLE_GLOBALS,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
