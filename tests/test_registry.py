"""Every exported layer and loss has a gradient-check test.

Each ``tests/test_*.py`` module may declare ``GRADCHECK_CASES = {exported_name: [cases]}``. This
test fails when a name in ``jaxnn.layers.__all__`` or ``jaxnn.losses.__all__`` (other than the
helpers listed below) has no cases, so a new layer cannot land without its check.
"""

import importlib
import pathlib

import jaxnn

NOT_LAYERS_OR_LOSSES = {"Loss", "weight_gradient"}


def _registered() -> dict[str, list]:
    cases: dict[str, list] = {}
    for path in sorted(pathlib.Path(__file__).parent.glob("test_*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        for name, entries in getattr(module, "GRADCHECK_CASES", {}).items():
            cases.setdefault(name, []).extend(entries)
    return cases


def test_every_exported_layer_and_loss_has_gradient_check_cases():
    exported = (set(jaxnn.layers.__all__) | set(jaxnn.losses.__all__)) - NOT_LAYERS_OR_LOSSES
    registered = _registered()
    missing = sorted(exported - registered.keys())
    assert not missing, f"exported without a gradient-check test: {missing}"
    assert all(registered[name] for name in exported)


def test_registry_has_no_stale_names():
    exported = set(jaxnn.layers.__all__) | set(jaxnn.losses.__all__)
    stale = sorted(_registered().keys() - exported)
    assert not stale, f"gradient-check cases for names that are not exported: {stale}"


def test_layers_are_checked_at_three_or_more_shapes():
    for name, cases in _registered().items():
        assert len(cases) >= 3, f"{name} is checked at {len(cases)} shapes, want >= 3"
