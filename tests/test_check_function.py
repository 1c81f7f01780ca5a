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
    assert a.shape == (5, 2) and a.dtype == np.float64
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
    assert "dense&lt;tanh&gt;" in html and "<caption>gradient check FAILED</caption>" in html
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
    assert plot.stat().st_size > 1000 and f"wrote {plot}" in out


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
