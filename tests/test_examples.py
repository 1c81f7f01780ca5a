"""The examples run end to end and reach their targets.

Training to an accuracy target is ``slow`` (the README's test command runs it; ``-m "not slow"``
skips it); each example also has a smoke test in the default run: a few steps of the same
``main``, checking what it prints and that the figures are finite.
"""

import importlib.util
import math
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figure(line: str, prefix: str) -> float:
    assert line.startswith(prefix), line
    return float(line[len(prefix):].split()[0])


def test_classic_l_layer_binary_classifier_smoke(capsys):
    """A few steps: a finite cost line at each printed step, an accuracy in [0, 1]."""
    acc = load_example("binary_classifier").main(["--steps", "5", "--print-every", "2"])
    lines = capsys.readouterr().out.splitlines()
    costs = [line for line in lines if line.startswith("cost after step")]
    assert [c.split(":")[0] for c in costs] == [f"cost after step {i}" for i in (0, 2, 4)]
    assert all(math.isfinite(float(c.split(":")[1])) for c in costs)
    assert lines[-1].startswith("train accuracy:") and 0.0 <= acc <= 1.0


@pytest.mark.slow
def test_classic_l_layer_binary_classifier_reaches_90_percent(capsys):
    """The full run (3000 steps) reaches 90% training accuracy on the planar flower."""
    acc = load_example("binary_classifier").main(["--steps", "3000", "--print-every", "1000"])
    out = capsys.readouterr().out
    assert "cost after step 0:" in out and "cost after step 1000:" in out
    assert acc >= 0.90


def test_lstm_reading_digits_row_by_row_smoke(capsys):
    """One epoch of a narrow LSTM: a finite loss line, the accuracy line, an accuracy in [0, 1]."""
    acc = load_example("sequence_digits").main(["--epochs", "1", "--hidden", "8"])
    lines = capsys.readouterr().out.splitlines()
    assert math.isfinite(_figure(lines[0], "epoch   1: mean training loss"))
    assert lines[-1] == f"test accuracy: {acc:.4f}" and 0.0 <= acc <= 1.0


@pytest.mark.slow
def test_lstm_reading_digits_row_by_row_reaches_95_percent(capsys):
    """The full run reaches 95% on held-out digits."""
    acc = load_example("sequence_digits").main([])
    out = capsys.readouterr().out
    assert f"test accuracy: {acc:.4f}" in out.splitlines()[-1]
    assert acc >= 0.95


def test_char_transformer_smoke(capsys):
    """A few steps of a one-block, narrow model: finite training and validation figures, a
    sample of the asked length, the final bits-per-character line."""
    bits = load_example("char_transformer").main(
        ["--steps", "3", "--depth", "1", "--width", "16", "--heads", "2", "--sample-length",
         "10"])
    lines = capsys.readouterr().out.strip().splitlines()
    evals = [line for line in lines if line.startswith("step ")]
    assert [e.split(":")[0] for e in evals] == ["step 3"]  # the last step is always evaluated
    assert math.isfinite(bits) and bits > 0
    assert lines[-1] == f"val_bits_per_char={bits:.4f}"
    assert lines[-2].startswith("generated 10 characters at ")
    assert lines[-2].endswith("tokens/s (jaxnn.generate: KV cache, one compiled function)")
    sample = "\n".join(lines[lines.index("sample:") + 1:-2])
    assert sample.startswith("def ")
    assert len(sample) == len("def ") + 10


@pytest.mark.slow
@pytest.mark.extended
def test_char_transformer_reaches_1_85_bits_per_character(capsys):
    """The full run reaches 1.85 bits per character on held-out text."""
    load_example("char_transformer").main(["--sample-length", "100"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("val_bits_per_char=")
    assert float(lines[-1].split("=")[1]) <= 1.85
