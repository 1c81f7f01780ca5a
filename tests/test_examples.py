"""The examples run end to end and reach their targets."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_classic_l_layer_binary_classifier_reaches_90_percent(capsys):
    acc = load_example("binary_classifier").main(["--steps", "3000", "--print-every", "1000"])
    out = capsys.readouterr().out
    assert "cost after step 0:" in out and "cost after step 1000:" in out
    assert acc >= 0.90


@pytest.mark.slow
def test_lstm_reading_digits_row_by_row_reaches_95_percent(capsys):
    acc = load_example("sequence_digits").main([])
    out = capsys.readouterr().out
    assert f"test accuracy: {acc:.4f}" in out.splitlines()[-1]
    assert acc >= 0.95
