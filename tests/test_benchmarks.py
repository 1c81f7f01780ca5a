"""The benchmark's quick mode runs end to end and reports every figure it promises; the
transformer-LM benchmark times the same math in each of its implementations.

The end-to-end run is ``slow`` (it times every variant: the README's test command runs it,
``-m "not slow"`` skips it); the float32 check, the HLO count and the refused arguments run in the
default set. Its figures mean nothing in a test session (a shared machine, a warm compilation
cache): the test checks that each is there, finite and positive, never its size.
"""

import importlib.util
import math
import os
import pathlib

import chex
import numpy as np
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
    assert result.keys() >= REQUIRED
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


LM_BENCHMARK = BENCHMARK.parent / "transformer_lm.py"


@pytest.fixture(scope="module")
def lm_benchmark():
    import jax

    spec = importlib.util.spec_from_file_location("transformer_lm_benchmark", LM_BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # the peers (Flax's modules, the plain-JAX model) broadcast (F,) against (N, T, F)
    with jax.numpy_rank_promotion("allow"):
        yield module


@pytest.mark.slow
def test_lm_benchmark_compares_the_same_math_in_its_three_implementations(lm_benchmark):
    """jaxnn, Flax NNX and plain JAX: the same loss (plain JAX: every gradient) in float64."""
    import jax

    sizes = lm_benchmark.QUICK
    variants = lm_benchmark.build(sizes, 2, 12, dtype=np.float64)
    x, y = variants["data"]
    (fn, params), (plain_fn, plain) = (variants["loss_fns"][n] for n in ("jaxnn", "plain_jax"))
    (value, _), grads = fn(params, x=x, y=y)
    plain_value, plain_grads = jax.value_and_grad(plain_fn)(plain, x, y)
    assert value.dtype == np.float64
    np.testing.assert_allclose(plain_value, value, rtol=1e-12)
    chex.assert_trees_all_close(plain_grads, lm_benchmark.plain_params(grads), rtol=1e-10,
                                atol=1e-14)
    # Flax NNX agrees to ~1e-9 relative in float64, not to rounding (its attention and layer
    # norm take other, equivalent routes); 1e-7 still tells the same model from another
    figures = lm_benchmark.check_agreement(variants, rtol=1e-7)
    assert set(figures) == {"jaxnn", "flax_nnx", "plain_jax"}


@pytest.mark.slow
def test_lm_benchmark_stops_when_a_peer_disagrees(lm_benchmark):
    """The agreement check refuses a peer whose weights differ (it would time other math)."""
    variants = lm_benchmark.build(lm_benchmark.QUICK, 2, 12, with_flax=False, dtype=np.float64)
    fn, plain = variants["loss_fns"]["plain_jax"]
    shifted = {**plain, "head": {**plain["head"], "W": 1.01 * plain["head"]["W"]}}
    variants["loss_fns"]["plain_jax"] = (fn, shifted)
    with pytest.raises(SystemExit, match="plain_jax disagrees with jaxnn"):
        lm_benchmark.check_agreement(variants)


THREADS_BENCHMARK = BENCHMARK.parent / "cpu_threads.py"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins processes (Linux only)")
def test_threads_benchmark_reports_each_piece_on_all_cores_and_on_one(capsys):
    """Every piece is timed in a child process on every core and in one pinned to one core;
    the traced pieces also report the share of the step when both threads ran an operation."""
    import jax.numpy as jnp

    # a backend already running in this process, as in the full suite: the children must be
    # started without forking it
    jnp.zeros(1).block_until_ready()
    spec = importlib.util.spec_from_file_location("cpu_threads_benchmark", THREADS_BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick"])
    result = _result_line(capsys.readouterr().out)
    pieces = ["product_4x16x16", "attention_jaxnn_2x32", "attention_autodiff_2x32",
              "lm_jaxnn_2x16", "lm_flax_nnx_2x16", "lm_plain_jax_2x16"]
    expected = {f"{piece}_cores_speedup" for piece in pieces}
    expected |= {"attention_jaxnn_2x32_both_busy", "lm_jaxnn_2x16_both_busy"}
    expected |= {f"{pair}{label}" for pair in ("attention_2x32_vs_autodiff",
                                               "lm_2x16_vs_flax_nnx")
                 for label in ("", "_one_core")}
    assert set(result) == expected
    for key, value in result.items():
        value = float(value)
        assert math.isfinite(value), (key, value)
        if key.endswith("_both_busy"):
            assert 0 <= value <= 1, (key, value)
        else:
            assert value > 0, (key, value)
