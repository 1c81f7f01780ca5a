"""check_function, assert_gradients_match and the report's renderings.

Two kinds of evidence: functions nobody in this project wrote (jax.nn, jax.numpy.linalg) pass,
and deliberately broken custom rules fail at every seed with the failing row on the broken leaf.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jaxnn
from jaxnn.gradcheck import check_function
from jaxnn.testing import (
    arrays_away_from_kinks,
    assert_gradients_match,
    inputs_away_from_kinks,
)
from tests.helpers import pallas_tanh_dense

SEEDS = range(4)


def failing_rows(report):
    return sorted({c.parameter for c in report.failures})


def normal(seed, *shapes):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, s, jnp.float64) for k, s in zip(keys, shapes, strict=True)]


# --- broken rules (fixtures) ------------------------------------------------------------------


def dense_tanh(bug=None):
    """``tanh(x·W + b)`` as a custom_vjp; ``bug`` breaks its backward on purpose:

    * ``"scaled"``: dW is 1% too large;
    * ``"transposed"``: dW is transposed (W square, so the shapes still fit);
    * ``"batch1"``: a fast path for a single example forgets tanh's derivative.
    """

    @jax.custom_vjp
    def layer(x, W, b):
        return jnp.tanh(x @ W + b[None, :])

    def forward(x, W, b):
        y = layer(x, W, b)
        return y, (x, W, y)

    def backward(residuals, dy):
        x, W, y = residuals
        dz = dy * (1 - y ** 2)
        if bug == "batch1" and x.shape[0] == 1:
            dz = dy
        dW = x.T @ dz
        if bug == "scaled":
            dW = 1.01 * dW
        if bug == "transposed":
            dW = dW.T
        return dz @ W.T, dW, dz.sum(axis=0)

    layer.defvjp(forward, backward)
    return layer


def gaussian_bump(bug=None):
    """``height · x · exp(−(x/width)²)`` with pytree parameters, as a custom_vjp; with
    ``bug="missing term"`` dx drops the ``−2x²/width²`` term of the product rule."""

    @jax.custom_vjp
    def bump(x, params):
        return params["height"] * x * jnp.exp(-(x / params["width"]) ** 2)

    def forward(x, params):
        return bump(x, params), (x, params)

    def backward(residuals, dy):
        x, params = residuals
        h, w = params["height"], params["width"]
        e = jnp.exp(-(x / w) ** 2)
        slope = 1.0 if bug == "missing term" else 1 - 2 * x ** 2 / w ** 2
        dx = dy * h * e * slope
        dh = jnp.sum(dy * x * e)
        dw = jnp.sum(dy * h * x * e * 2 * x ** 2 / w ** 3)
        return dx, {"height": dh, "width": dw}

    bump.defvjp(forward, backward)
    return bump


def bump_params():
    return {"height": jnp.asarray(1.5), "width": jnp.asarray(0.8)}


@jax.custom_vjp
def scaled_tanh(x):
    """``2·tanh(x)``, a module-level rule for ``jaxnn gradcheck --target``."""
    return 2 * jnp.tanh(x)


scaled_tanh.defvjp(lambda x: (scaled_tanh(x), x), lambda x, g: (2 * g / jnp.cosh(x) ** 2,))


@jax.custom_vjp
def scaled_tanh_wrong_last_column(x):
    """``2·tanh(x)`` whose rule is wrong in the last column of ``x`` only."""
    return 2 * jnp.tanh(x)


scaled_tanh_wrong_last_column.defvjp(
    lambda x: (scaled_tanh_wrong_last_column(x), x),
    lambda x, g: ((2 * g / jnp.cosh(x) ** 2).at[:, -1].multiply(1.1),))


# --- correct rules pass, broken ones fail on the broken leaf ------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_correct_rules_pass(seed):
    x, W, b = normal(seed, (4, 3), (3, 3), (3,))
    assert_gradients_match(dense_tanh(), x, W, b, seed=seed)
    assert_gradients_match(gaussian_bump(), x, bump_params(), seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bug", ["scaled", "transposed"])
def test_wrong_weight_gradient_fails_on_W_only(bug, seed):
    x, W, b = normal(seed, (4, 3), (3, 3), (3,))
    report = check_function(dense_tanh(bug), x, W, b, seed=seed)
    assert failing_rows(report) == ["W"]
    assert {c.reference for c in report.failures} == {"jax.grad", "finite differences"}


@pytest.mark.parametrize("seed", SEEDS)
def test_missing_term_fails_on_its_leaf_of_a_pytree(seed):
    (x,) = normal(seed, (5, 2))
    report = check_function(gaussian_bump("missing term"), x, bump_params(), seed=seed)
    assert failing_rows(report) == ["x"]
    assert {c.parameter for c in report.comparisons} == {"x", "params.height", "params.width"}


@pytest.mark.parametrize("seed", SEEDS)
def test_rule_wrong_only_at_batch_1_fails_at_batch_1(seed):
    rule = dense_tanh("batch1")
    x, W, b = normal(seed, (4, 3), (3, 3), (3,))
    assert check_function(rule, x, W, b, seed=seed).passed
    report = check_function(rule, x[:1], W, b, seed=seed)
    assert failing_rows(report) == ["W", "b", "x"]


def test_worst_entry_points_at_the_broken_entry():
    """A rule wrong in one entry of dW: the report's worst index is that entry."""

    @jax.custom_vjp
    def product(x, W):
        return x @ W

    product.defvjp(lambda x, W: (x @ W, (x, W)),
                   lambda res, g: (g @ res[1].T, (res[0].T @ g).at[2, 1].multiply(1.5)))
    x, W = normal(0, (4, 3), (3, 2))
    report = check_function(product, x, W)
    (wrong,) = {c.worst_index for c in report.failures}
    assert wrong == (2, 1)
    assert "(2, 1)" in report.table()


def test_broken_custom_jvp_fails():
    @jax.custom_jvp
    def softsign(x):
        return x / (1 + jnp.abs(x))

    softsign.defjvp(lambda primals, tangents: (
        softsign(primals[0]), tangents[0] / (1 + jnp.abs(primals[0]))))  # correct: (1+|x|)⁻²
    (x,) = normal(1, (6,))
    report = check_function(softsign, x)
    assert failing_rows(report) == ["x"]


def test_jit_of_a_custom_vjp_is_unwrapped():
    x, W, b = normal(2, (4, 3), (3, 3), (3,))
    assert check_function(jax.jit(dense_tanh()), x, W, b).passed
    assert failing_rows(check_function(jax.jit(dense_tanh("scaled")), x, W, b)) == ["W"]


# --- code nobody here wrote ---------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(inputs_away_from_kinks((3, 4)))
def test_jax_nn_relu_passes_away_from_its_kink(args):
    report = assert_gradients_match(jax.nn.relu, *args)
    assert [c.reference for c in report.comparisons] == ["jax.grad", "finite differences"]


@pytest.mark.parametrize("fn", [jax.nn.softplus, jnp.linalg.det, jnp.linalg.slogdet,
                                jnp.linalg.pinv], ids=lambda f: f.__name__)
def test_library_functions_with_custom_rules_pass(fn):
    (a,) = normal(3, (4, 4))
    report = assert_gradients_match(fn, a)
    assert {c.reference for c in report.comparisons} == {"jax.grad", "finite differences"}
    assert not report.notes


def test_logsumexp_without_a_rule_is_checked_by_finite_differences_and_a_reference():
    (a,) = normal(4, (3, 5))
    alone = assert_gradients_match(jax.nn.logsumexp, a)
    assert {c.reference for c in alone.comparisons} == {"finite differences"}
    assert "no custom_vjp/custom_jvp rule found" in alone.table()
    naive = assert_gradients_match(jax.nn.logsumexp, a,
                                   reference=lambda a: jnp.log(jnp.sum(jnp.exp(a))))
    assert {c.reference for c in naive.comparisons} == {"jax.grad", "finite differences"}


def test_a_wrong_reference_fails():
    (a,) = normal(5, (3, 5))
    report = check_function(jax.nn.logsumexp, a, reference=lambda a: jnp.sum(jnp.exp(a)))
    assert [(c.parameter, c.reference) for c in report.failures] == [("a", "jax.grad")]


# --- arguments and outputs ---------------------------------------------------------------------


def test_pytree_output_and_integer_argument():
    @jax.custom_vjp
    def scaled_pair(x, repeats):
        return {"double": 2 * x * repeats, "square": (x ** 2,)}

    scaled_pair.defvjp(
        lambda x, r: (scaled_pair(x, r), (x, r)),
        lambda res, g: (2 * g["double"] * res[1] + 2 * res[0] * g["square"][0], None))
    (x,) = normal(6, (3,))
    report = assert_gradients_match(scaled_pair, x, jnp.asarray(3, jnp.int32))
    assert {c.parameter for c in report.comparisons} == {"x"}
    assert any("repeats (int32) skipped: integer" in n for n in report.notes)
    assert "repeats (int32) skipped" in report.table()


def test_argnums_selects_rows():
    x, W, b = normal(7, (4, 3), (3, 3), (3,))
    report = check_function(dense_tanh("scaled"), x, W, b, argnums=(0, 2))
    assert report.passed
    assert {c.parameter for c in report.comparisons} == {"x", "b"}
    with pytest.raises(ValueError, match=r"argnums 3 out of range for 3 argument"):
        check_function(dense_tanh(), x, W, b, argnums=3)


def test_a_reference_of_another_shape_is_named():
    (x,) = normal(8, (3,))
    with pytest.raises(ValueError, match=r"reference returns an output of shape \(1, 3\)"):
        check_function(jax.nn.relu, x, reference=lambda x: x[None])


# --- the pytest helper and the strategies -------------------------------------------------------


def test_assert_gradients_match_message_is_the_table():
    x, W, b = normal(9, (4, 3), (3, 3), (3,))
    with pytest.raises(AssertionError) as failure:
        assert_gradients_match(dense_tanh("transposed"), x, W, b)
    message = str(failure.value)
    assert "layer  parameter" in message
    assert re.search(r"layer\s+W\s.*FAIL", message)
    assert not re.search(r"layer\s+x\s.*FAIL", message)


def test_assert_gradients_match_takes_a_layer():
    report = assert_gradients_match(jaxnn.dense(3), (4, 2))
    assert {c.parameter for c in report.comparisons} == {"W", "b", "input"}


@settings(max_examples=30, deadline=None)
@given(arrays_away_from_kinks((5, 2), kinks=(-1.0, 0.0, 1.0), margin=0.1, bound=2.0))
def test_strategy_keeps_entries_away_from_kinks(a):
    assert a.shape == (5, 2)
    assert a.dtype == np.float64
    for kink in (-1.0, 0.0, 1.0):
        assert np.all(np.abs(a - kink) >= 0.1)
    assert np.all(np.abs(a) <= 2.1)


def test_strategy_rejects_kinks_closer_than_two_margins():
    with pytest.raises(ValueError, match="closer than 2·margin"):
        arrays_away_from_kinks((3,), kinks=(0.0, 0.05), margin=0.05)


# --- renderings ---------------------------------------------------------------------------------


def test_markdown_and_html_show_every_row_and_verdict():
    x, W, b = normal(10, (4, 3), (3, 3), (3,))
    report = check_function(dense_tanh("scaled"), x, W, b, name="dense<tanh>")
    markdown = report.markdown().splitlines()
    assert markdown[0].startswith("| layer | parameter |")
    assert len([line for line in markdown if line.startswith("| dense<tanh>")]) == 3
    assert sum("**FAIL**" in line for line in markdown) == 1
    html = report._repr_html_()
    assert "dense&lt;tanh&gt;" in html
    assert "<caption>gradient check FAILED</caption>" in html
    assert html.count("<tr") == 4  # header and one row per leaf


def test_a_python_int_stays_static_for_nondiff_argnums():
    @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
    def power(x, n):
        return x ** n

    power.defvjp(lambda x, n: (x ** n, x), lambda n, x, g: (n * x ** (n - 1) * g,))
    (x,) = normal(11, (4,))
    report = assert_gradients_match(power, x, 3)
    assert [n for n in report.notes if n.startswith("n (int)")]
    broken = functools.partial(jax.custom_vjp, nondiff_argnums=(1,))(lambda x, n: x ** n)
    broken.defvjp(lambda x, n: (x ** n, x), lambda n, x, g: ((n - 1) * x ** (n - 1) * g,))
    assert failing_rows(check_function(broken, x, 3)) == ["x"]


# --- the command line -------------------------------------------------------------------------


def test_cli_checks_a_function_by_import_path(capsys):
    from jaxnn import cli

    target = "tests.test_check_function:scaled_tanh"
    assert cli.main(["gradcheck", "--target", target, "--shape", "4,3"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"scaled_tanh\s+x\s.*pass", out)
    assert f"function {target}" in out


def test_cli_plots_where_the_error_sits(tmp_path, capsys):
    from jaxnn import cli

    plot = tmp_path / "errors.png"
    target = "tests.test_check_function:scaled_tanh_wrong_last_column"
    assert cli.main(["gradcheck", "--target", target, "--shape", "5,3",
                     "--plot", str(plot)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"scaled_tanh_wrong_last_column\s+x\s.*\(\d, 2\)\s+FAIL", out)
    assert plot.stat().st_size > 1000
    assert f"wrote {plot}" in out


def test_plot_errors_draws_one_panel_per_parameter(tmp_path):
    from jaxnn.gradcheck import plot_errors

    x, W, b = normal(12, (4, 3), (3, 3), (3,))
    titles = plot_errors(check_function(dense_tanh("transposed"), x, W, b), tmp_path / "e.png")
    assert [t.split(" vs ")[0] for t in titles] == ["layer: x", "layer: W", "layer: b"]
    assert (tmp_path / "e.png").stat().st_size > 1000


def test_cli_checks_a_layer_constructor_by_import_path(capsys):
    from jaxnn import cli

    assert cli.main(["gradcheck", "--target", "jaxnn.layers:tanh", "--shape", "4,3"]) == 0
    assert "layer jaxnn.layers:tanh" in capsys.readouterr().out


@pytest.mark.parametrize(("target", "message"), [
    ("no_colon", "expected MODULE:NAME"),
    ("jaxnn_not_a_module:f", "cannot import 'jaxnn_not_a_module'"),
    ("jaxnn.layers:not_there", "has no attribute 'not_there'"),
    ("jaxnn:__version__", "not a layer or a function"),
])
def test_cli_names_a_bad_target(target, message, capsys):
    from jaxnn import cli

    assert cli.main(["gradcheck", "--target", target, "--shape", "3"]) == 1
    assert message in capsys.readouterr().err


def test_cli_target_needs_a_shape(capsys):
    from jaxnn import cli

    assert cli.main(["gradcheck", "--target", "jaxnn.layers:tanh"]) == 1
    assert "--target needs --shape" in capsys.readouterr().err


def test_exact_kinks_are_skipped_not_failed():
    """At relu's kink the rule says 0 and autodiff of max(x, 0) says 0.5: both are valid, so
    the entry is reported as a non-smooth point and left out of both comparisons."""
    x = jnp.asarray([[-1.0, 0.0, 2.0], [0.0, 0.5, -0.3]])
    report = assert_gradients_match(jax.nn.relu, x)
    fd = [c for c in report.comparisons if c.reference == "finite differences"]
    assert [c.skipped for c in fd] == [2]
    assert "2 finite-difference entries skipped: non-smooth point" in report.table()
    # a rule wrong away from the kink still fails
    @jax.custom_jvp
    def bad_relu(x):
        return jnp.maximum(x, 0.0)

    bad_relu.defjvp(lambda p, t: (bad_relu(p[0]), t[0] * (p[0] > 0) * 0.9))
    assert failing_rows(check_function(bad_relu, x)) == ["x"]


def test_nothing_to_differentiate_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match=r"no floating-point leaf to differentiate.*integer"):
        check_function(lambda n: jnp.sin(n * 1.0), jnp.arange(3))


@jax.custom_vjp
def _row_norms_twice_as_steep(x):
    return jnp.sqrt(jnp.sum(x * x, axis=-1))


def _row_norms_fwd(x):
    n = jnp.sqrt(jnp.sum(x * x, axis=-1))
    return n, (x, n)


def _row_norms_bwd(res, g):
    x, n = res
    safe = jnp.where(n > 0, n, 1.0)
    # wrong by a factor 2 everywhere; 0 (not autodiff's NaN) on an all-zero row
    return (jnp.where(n[..., None] > 0, 2 * x / safe[..., None], 0.0) * g[..., None],)


_row_norms_twice_as_steep.defvjp(_row_norms_fwd, _row_norms_bwd)


def test_a_nan_in_the_autodiff_reference_does_not_hide_a_wrong_rule():
    # autodiff of the norm is NaN on the zero row; that one row must not make every other
    # entry "non-smooth": the factor 2 on the other rows still fails
    x = jax.random.normal(jax.random.key(0), (4, 3), jnp.float64).at[1].set(0.0)
    report = check_function(_row_norms_twice_as_steep, x)
    assert not report.passed
    assert {c.reference for c in report.failures} == {"jax.grad", "finite differences"}
    for row in report.failures:
        assert row.max_relative_error > 0.3, row
        assert row.worst_index[0] != 1, "the rows that are wrong are the nonzero ones"
        assert row.skipped <= 3, "only the zero row's entries are non-smooth"


# --- a wrong rule never passes: the situations of issue 19 -------------------------------------


def _rule(forward, derivative):
    """A custom_vjp of the elementwise ``forward`` whose rule multiplies by ``derivative(x)``."""

    @jax.custom_vjp
    def f(x):
        return forward(x)

    f.defvjp(lambda x: (forward(x), x), lambda x, g: (derivative(x) * g,))
    return f


def _float32_sin_twice_as_steep():
    return _rule(lambda x: jnp.sin(x.astype(jnp.float32)), lambda x: 2 * jnp.cos(x))


def _sqrt_twice_as_steep():
    return _rule(jnp.sqrt, lambda x: 1 / jnp.sqrt(x))


def _offset_with_slope_two():
    return _rule(lambda x: x + 1e8, lambda x: 2.0 * jnp.ones_like(x))


def _log_ten_percent_steep():
    return _rule(jnp.log, lambda x: 1.1 / x)


WRONG_RULES = {
    # float32 arithmetic inside a float64 call: the finite differences are noisy, not kinks
    "float32 inside": (_float32_sin_twice_as_steep, lambda seed: normal(seed, (2, 3))),
    # normal inputs: sqrt is NaN at the negative ones, which must not hide the positive ones
    "NaN outputs": (_sqrt_twice_as_steep, lambda seed: normal(seed, (4, 3))),
    # a large constant offset: the rounding of S swamps the finite differences
    "large offset": (_offset_with_slope_two, lambda seed: normal(seed, (2, 3))),
    # high curvature: log near 0.01 is not smooth within the default step
    "high curvature": (_log_ten_percent_steep,
                       lambda seed: [0.01 + 0.002 * jax.random.uniform(jax.random.key(seed), (6,),
                                                                      jnp.float64)]),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("situation", sorted(WRONG_RULES))
def test_a_wrong_rule_fails_where_finite_differences_cannot_judge(situation, seed):
    """Pins: an entry the finite differences cannot judge is still compared with autodiff, so
    a wrong rule fails in each situation of issue 19, and assert_gradients_match raises."""
    make, inputs = WRONG_RULES[situation]
    fn = make()
    report = check_function(fn, *inputs(seed))
    assert not report.passed, report.table()
    assert "jax.grad" in {c.reference for c in report.failures}, report.table()
    assert max(c.max_relative_error for c in report.failures) > 0.05
    with pytest.raises(AssertionError, match="do not match"):
        assert_gradients_match(fn, *inputs(seed))


def test_float32_inside_is_reported_as_noise_not_as_a_kink():
    """Pins: the noise of a float32 computation inside a float64 call is named as such, its
    entries still compared with finite differences (at their noise floor), never 'non-smooth'."""
    report = check_function(_float32_sin_twice_as_steep(), *normal(0, (2, 3)))
    fd = [c for c in report.comparisons if c.reference == "finite differences"]
    assert fd[0].compared == 6
    assert fd[0].kinks == 0
    assert fd[0].computes_in == "float32"
    assert not fd[0].passed, "2x too steep fails against finite differences too"
    text = report.table()
    assert "noisy (float32 inside)" in text
    assert "non-smooth" not in text
    correct = check_function(_rule(lambda x: jnp.sin(x.astype(jnp.float32)), jnp.cos),
                             *normal(0, (2, 3)))
    assert correct.passed, correct.table()


def test_nan_outputs_are_reported_per_entry_and_the_others_compared():
    """Pins: NaN outputs are left out of S and counted, the finite entries compared."""
    x = jnp.asarray([[1.0, -1.0, 4.0], [-2.0, 0.25, 9.0]])
    report = check_function(_rule(jnp.sqrt, lambda x: 0.5 / jnp.sqrt(x)), x)
    assert report.passed, report.table()
    ad, fd = report.comparisons
    assert (ad.compared, ad.not_finite) == (4, 2)
    assert (fd.compared, fd.not_finite) == (4, 2)
    assert "2 output entries are NaN/inf" in report.table()
    assert not check_function(_sqrt_twice_as_steep(), x).passed


def test_cli_fails_a_wrong_rule_whose_output_has_nans(capsys):
    """Pins: ``jaxnn gradcheck --target`` on normal inputs where sqrt is NaN exits 1."""
    from jaxnn import cli

    assert cli.main(["gradcheck", "--target", "tests.test_check_function:wrong_sqrt",
                     "--shape", "4,3"]) == 1
    assert "FAIL" in capsys.readouterr().out


wrong_sqrt = _sqrt_twice_as_steep()


def _tanh_dense(x, w):
    return jnp.tanh(x @ w)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_pallas_kernel_with_a_one_percent_wrong_rule_fails_against_its_reference(seed):
    """Pins: a float32 Pallas kernel whose dx is 1% off fails against an exact reference=
    at every seed (the entries are noisy, never skipped), and its correct rule passes."""
    x, w = normal(seed, (4, 3), (3, 2))
    report = check_function(pallas_tanh_dense(1.01), x, w, reference=_tanh_dense, seed=seed)
    assert failing_rows(report) == ["x"], report.table()
    assert all(c.skipped == 0 for c in report.comparisons)
    good = check_function(pallas_tanh_dense(), x, w, reference=_tanh_dense, seed=seed)
    assert good.passed, good.table()


def test_dot_product_attention_computing_in_float32_passes_with_every_argument_compared():
    """Pins: no false accusation from float32 rounding inside, and no argument left out."""
    q, k, v = normal(1, (2, 4, 2, 3), (2, 4, 2, 3), (2, 4, 2, 3))
    report = assert_gradients_match(jax.nn.dot_product_attention, q, k, v)
    assert {c.parameter for c in report.comparisons if c.compared} == {"query", "key", "value"}
    assert "float32 inside" in report.table()


def _float32_only_cumulative_tanh(scale=1.0):
    """A float32-only function: a scan whose carry is float32 (float64 arguments break it),
    with a custom_vjp rule scaled by ``scale``."""

    def forward(x):
        def step(carry, xi):
            carry = jnp.tanh(carry + xi)
            return carry, carry

        return jax.lax.scan(step, jnp.zeros(x.shape[1:], jnp.float32), x)[1]

    @jax.custom_vjp
    def f(x):
        return forward(x)

    def bwd(x, g):
        _, vjp = jax.vjp(forward, x)
        return (scale * vjp(g)[0],)

    f.defvjp(lambda x: (forward(x), x), bwd)
    return f


def test_a_float32_only_function_runs_in_its_own_dtype_with_derived_tolerances():
    """Pins: a function that cannot run in float64 is checked in float32 (a note says why),
    a correct rule passes and a 1% wrong one fails."""
    x = jax.random.normal(jax.random.key(0), (5, 3), jnp.float32)
    report = check_function(_float32_only_cumulative_tanh(), x)
    assert report.passed, report.table()
    assert "cannot run in float64" in report.table()
    assert [c.computes_in for c in report.comparisons
            if c.reference == "finite differences"] == ["float32"]
    assert not check_function(_float32_only_cumulative_tanh(1.01), x).passed


def test_a_leaf_no_reference_could_judge_is_unverified_not_passed():
    """Pins: with finite differences only and every entry at a kink, the leaf is reported
    'unverified' in every format, the report does not pass, and assert_gradients_match raises
    unless allowed."""
    x = jnp.zeros((2, 3))
    report = check_function(jnp.abs, x)
    assert report.unverified == [("abs", "x")]
    assert not report.passed
    assert not report.failures
    assert "unverified" in report.table()
    assert "unverified" in report.markdown()
    assert "unverified" in report._repr_html_()
    with pytest.raises(AssertionError, match="unverified"):
        assert_gradients_match(jnp.abs, x)
    assert assert_gradients_match(jnp.abs, x, allow_unverified=True).unverified


def nan_everywhere(x):
    """NaN at every input: nothing any reference can judge."""
    return jnp.sqrt(-jnp.abs(x) - 1.0)


def test_cli_fails_an_unverified_target_unless_allowed(capsys):
    """Pins: the CLI exits 1 on an unverified leaf, 0 with --allow-unverified."""
    from jaxnn import cli

    args = ["gradcheck", "--target", "tests.test_check_function:nan_everywhere", "--shape", "3"]
    assert cli.main(args) == 1
    assert "unverified" in capsys.readouterr().out
    assert cli.main([*args, "--allow-unverified"]) == 0


def _cube_with_wrong_rule():
    return _rule(lambda x: x ** 3, lambda x: 2 * x ** 2)


def test_a_failing_check_inside_hypothesis_is_reported_at_once_without_shrinking():
    """Pins: inside a hypothesis test the first failing example ends the test (no shrinking:
    the property runs once), with the input's shape and the worst entry in the message."""
    from jaxnn.testing import GradientCheckFailure

    shapes = []

    @settings(max_examples=20, deadline=None, database=None, derandomize=True)
    @given(arrays_away_from_kinks((3, 2)))
    def property_test(x):
        shapes.append(x.shape)
        assert_gradients_match(_cube_with_wrong_rule(), x)

    with pytest.raises(GradientCheckFailure,
                       match=r"at \(3, 2\) float64; worst entry x\[\d, \d\] vs jax.grad"):
        property_test()
    assert shapes == [(3, 2)]


def test_a_failing_check_under_pytest_does_not_print_the_helpers_source(tmp_path):
    """Pins: pytest's report of a failing assert_gradients_match shows the message, not the
    source of jaxnn.testing."""
    import os
    import subprocess
    import sys

    (tmp_path / "test_user.py").write_text(
        "import jax, jax.numpy as jnp\n"
        "from jaxnn.testing import assert_gradients_match\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "@jax.custom_vjp\n"
        "def cube(x):\n    return x ** 3\n"
        "cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (2 * x ** 2 * g,))\n"
        "def test_cube():\n    assert_gradients_match(cube, jnp.arange(1.0, 4.0))\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path / "test_user.py")], capture_output=True, text=True,
                         cwd=tmp_path, env=os.environ.copy(), timeout=300).stdout
    assert "worst entry x[" in out, out
    assert "1 failed" in out, out
    assert "report = gradcheck.check_function" not in out
    assert "__tracebackhide__" not in out


def _sin_rule(scale):
    return _rule(jnp.sin, lambda x: scale * jnp.cos(x))


@pytest.mark.parametrize("body", ["scan", "fori_loop", "cond", "checkpoint"])
def test_a_wrong_rule_inside_a_loop_or_branch_body_fails_against_autodiff(body):
    """Pins: custom rules inside scan / fori / cond / checkpoint bodies are removed in
    the undecorated reference too, so a wrong rule there fails against jax.grad (it read
    2.3e-16 when the body kept its rule), next to a correct rule outside."""
    wrong, right = _sin_rule(2.0), _sin_rule(1.0)

    def fn(x):
        if body == "scan":
            inner = jax.lax.scan(lambda c, xi: (c + wrong(xi), None), 0.0, x)[0]
        elif body == "fori_loop":
            inner = jax.lax.fori_loop(0, 2, lambda i, s: wrong(s), x).sum()
        elif body == "cond":
            inner = jax.lax.cond(True, lambda x: wrong(x), lambda x: x, x).sum()
        else:
            inner = jax.checkpoint(lambda x: wrong(x))(x).sum()
        return inner + right(x).sum()

    report = check_function(fn, jnp.asarray([0.3, -0.4, 0.9]))
    assert "jax.grad" in {c.reference for c in report.failures}, report.table()


def _fixed_point(scale):
    """``x = a·cos(x)`` solved by a while loop with a data-dependent stop, its implicit rule
    ``dx/da = cos x / (1 + a sin x)`` scaled by ``scale``."""

    def solve(a):
        return jax.lax.while_loop(lambda s: jnp.max(jnp.abs(s[1] - s[0])) > 1e-15,
                                  lambda s: (s[1], jnp.cos(s[1]) * a), (a * 0 + 10.0, a * 0))[1]

    @jax.custom_vjp
    def fixed(a):
        return solve(a)

    def bwd(residuals, g):
        a, x = residuals
        return (scale * g * jnp.cos(x) / (1 + a * jnp.sin(x)),)

    fixed.defvjp(lambda a: (solve(a), (a, solve(a))), bwd)
    return fixed


def test_a_solver_whose_reverse_mode_is_impossible_is_checked_in_forward_mode():
    """Pins: a while loop with a dynamic stop cannot be reversed; the reference falls back to
    jax.jacfwd with a note (it raised JAX's reverse-mode error from inside the checker), a
    correct implicit rule passes and a 1% wrong one fails."""
    a = jnp.asarray([0.3, 0.5, 0.7])
    report = check_function(_fixed_point(1.0), a)
    assert report.passed, report.table()
    assert "forward mode (jax.jacfwd)" in report.table()
    assert "jax.grad" in {c.reference for c in check_function(_fixed_point(1.01), a).failures}


def scaled_sine(x, n, s):
    """``sin(x)·n·s``: a float array, an integer array and a scalar, for the CLI."""
    return jnp.sin(x) * n * s


@pytest.mark.parametrize(("argv", "expected"), [
    (["--target", "jaxnn:dense", "--shape", "4,3"], "is a layer constructor that needs arguments"),
    (["--target", "jax.numpy:log", "--shape", "3", "--range", "2,1"], "--range: expected LOW,HIGH"),
    (["--target", "jax.numpy:log", "--shape", "float:3"], "--shape: expected N,N,..."),
    (["--target", "tests.test_check_function:scaled_sine", "--shape", "3"],
     "--target tests.test_check_function:scaled_sine at shapes (3,)"),
])
def test_cli_target_mistakes_get_one_line(argv, expected, capsys):
    """Pins: a layer constructor given by mistake, a bad domain or shape, and a function that
    fails at the given shapes each get one line on stderr, never a traceback."""
    from jaxnn import cli

    assert cli.main(["gradcheck", *argv]) != 0
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_target_takes_scalar_integer_and_positive_arguments(capsys):
    """Pins: '' is a scalar, int:N an integer argument held fixed, --positive keeps log's
    arguments in its domain."""
    from jaxnn import cli

    assert cli.main(["gradcheck", "--target", "tests.test_check_function:scaled_sine",
                     "--shape", "3", "--shape", "int:3", "--shape", ""]) == 0
    out = capsys.readouterr().out
    assert "n (int" in out
    assert " s " in out
    assert cli.main(["gradcheck", "--target", "jax.numpy:log", "--shape", "4",
                     "--positive"]) == 0
    assert "uniform in [0.1, 3)" in capsys.readouterr().out
