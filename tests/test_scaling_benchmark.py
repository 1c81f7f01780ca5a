"""benchmarks/scaling.py's quick mode runs end to end and reports every figure it promises (a
smoke test: the figures themselves are measurements, quoted in benchmarks/README.md)."""

import math
import subprocess
import sys

import pytest

from tests import devices


@pytest.mark.slow
def test_quick_mode_prints_every_layout_and_a_complete_result_line():
    """On 2 forced devices: a row per layout and device count for both models, and RESULT
    keys for the largest device count with finite positive values."""
    proc = subprocess.run([sys.executable, str(devices.ROOT / "benchmarks" / "scaling.py"),
                           "--quick", "--rounds", "1"], capture_output=True, text=True,
                          env=devices.child_env(2), cwd=devices.ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    result = dict(item.split("=", 1) for item in last.split()[1:])
    for prefix in ("", "mlp_"):
        for key in ("fsdp_param_bytes_fraction_2", "tensor_param_bytes_fraction_2",
                    "fsdp_step_vs_replicated_2", "tensor_step_vs_replicated_2"):
            value = float(result[prefix + key])
            assert math.isfinite(value), (prefix + key, value)
            assert value > 0, (prefix + key, value)
    assert float(result["fsdp_param_bytes_fraction_2"]) == pytest.approx(0.5, abs=0.01)
    for layout in ("replicated", "fsdp", "tensor"):
        assert sum(line.split()[:1] == [layout] for line in proc.stdout.splitlines()) == (
            4 if layout == "replicated" else 2)
    assert "all-gather=" in proc.stdout
    assert "all-reduce=" in proc.stdout
