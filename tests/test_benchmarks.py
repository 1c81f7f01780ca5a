"""The benchmark's quick mode runs end to end and reports every figure it promises.

The end-to-end run is ``slow`` (it times every variant: the README's test command runs it,
``-m "not slow"`` skips it); the float32 check, the HLO count and the refused arguments run in the
default set. Its figures mean nothing in a test session (a shared machine, a warm compilation
cache): the test checks that each is there, finite and positive, never its size.
"""

import importlib.util
import math
import pathlib

import pytest

BENCHMARK = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "train_step.py"

REQUIRED = {
    "mlp_vs_autodiff", "mlp_vs_plain_jax", "mlp_peak_fraction", "small_vs_plain_scan",
    "small_vs_step_loop", "temp_memory_vs_autodiff", "compile_vs_autodiff",
}


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("train_step_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result_line(text: str) -> dict[str, str]:
    last = text.strip().splitlines()[-1]
    assert last.startswith("RESULT "), f"last line is not a RESULT line: {last!r}"
    pairs = [item.split("=", 1) for item in last.split()[1:]]
    assert all(len(p) == 2 and p[0] and p[1] for p in pairs), last
    return dict(pairs)


@pytest.mark.slow
def test_quick_mode_prints_tables_and_a_complete_result_line(benchmark, capsys):
    assert benchmark.main(["--quick", "--no-peers", "--workloads", "mlp,small"]) == 0
    out = capsys.readouterr().out
    result = _result_line(out)
    assert REQUIRED <= result.keys()
    for key in REQUIRED | {"peak_gflops", "mlp_gflops", "small_dispatch_us"}:
        value = float(result[key])
        assert math.isfinite(value) and value > 0, (key, value)
    assert result["peers_skipped"] == "flax_linen,flax_nnx,equinox,haiku"
    for name in ("jaxnn", "jaxnn autodiff", "plain JAX", "jaxnn run_steps", "jaxnn step loop",
                 "plain JAX scan", "matmul peak"):
        assert name in out


def test_runs_in_float32_even_when_x64_is_on(benchmark):
    # the test session enables x64 (conftest); the benchmark must still measure float32
    import jax
    import jax.numpy as jnp

    assert jax.config.jax_enable_x64
    with jax.enable_x64(False):
        variants, _ = benchmark.mlp_variants(benchmark.QUICK, peers=[])
        loss = variants[0].run()
    assert loss.dtype == jnp.float32


def test_narrow_weight_gradients_are_counted_in_hlo_text(benchmark):
    dims = "lhs_contracting_dims={0}, rhs_contracting_dims={0}"
    slow = f"%d = f32[12288,7]{{1,0}} dot(%x, %dz), {dims}"
    fast = f"%d = f32[7,12288]{{1,0}} dot(%dz, %x), {dims}"
    square = f"%d = f32[1024,1024]{{1,0}} dot(%a, %b), {dims}"
    assert benchmark.count_narrow_weight_gradients("\n".join([slow, fast, square])) == 1


def test_too_few_rounds_are_refused(benchmark):
    with pytest.raises(SystemExit):
        benchmark.main(["--quick", "--rounds", "3"])
