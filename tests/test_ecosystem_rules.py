"""The verified-ecosystem table: custom derivative rules nobody in this project wrote, from JAX
(jax.nn, jax.scipy.special, jnp.linalg, Pallas), optax, Equinox, lineax, optimistix and diffrax,
each checked by ``jaxnn.gradcheck.check_function`` and expected to verify; and planted bugs
(scaled, transposed, a missing term, wrong on one sign, wrong in one output leaf, wrong inside a
``scan`` body) that must FAIL at every seed.

``docs/verification.md`` shows the table this file produces. A target the checker cannot verify
today is marked ``xfail(strict=True)`` with the limitation, never left out. Equinox, lineax,
optimistix and diffrax come with the ``ecosystem`` extra; their cases are skipped with a reason
when it is absent.
"""

import pathlib

import jax
import jax.numpy as jnp
import pytest

from jaxnn.gradcheck import check_function
from tests.helpers import pallas_tanh_dense
from tests.test_docs import shown_and_printed

pytestmark = pytest.mark.slow  # third-party rules: the full run's, not the quick loop's

SEEDS = range(4)


def normal(seed, *shapes):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, s, jnp.float64) for k, s in zip(keys, shapes, strict=True)]


def uniform(seed, low, high, *shapes):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.uniform(k, s, jnp.float64, low, high)
            for k, s in zip(keys, shapes, strict=True)]


def spd(seed, n):
    """A well-conditioned symmetric positive definite matrix."""
    (a,) = normal(seed, (n, n))
    return a @ a.T / n + jnp.eye(n)


# --- the real rules ------------------------------------------------------------------------------
# A case is a function of a random seed returning (fn, args, check_function's keyword arguments).


def _normal_args(fn, *shapes):
    return lambda seed: (fn, normal(seed, *shapes), {})


def _eqx():
    return pytest.importorskip("equinox", reason="Equinox is in the ecosystem extra")


def _lineax():
    return pytest.importorskip("lineax", reason="lineax is in the ecosystem extra")


def _optimistix():
    return pytest.importorskip("optimistix", reason="optimistix is in the ecosystem extra")


def _diffrax():
    return pytest.importorskip("diffrax", reason="diffrax is in the ecosystem extra")


def _symmetric_eigh_sum(a):
    """A smooth spectral function of the symmetric part: Σ λ_i² + Σ_ij V_ij² λ_j (eigh's
    custom_jvp; eigenvalues of a random matrix are distinct)."""
    w, v = jnp.linalg.eigh((a + a.T) / 2)
    return jnp.sum(w ** 2) + jnp.sum(v ** 2 * w[None, :])


def _cholesky_logdet(a):
    return 2 * jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(a))))


def _case_slogdet(seed):
    return (lambda a: jnp.linalg.slogdet(a)[1]), [spd(seed, 3)], {}


def _case_eigh(seed):
    return _symmetric_eigh_sum, normal(seed, (3, 3)), {}


def _case_cholesky(seed):
    return _cholesky_logdet, [spd(seed, 3)], {}


def _case_solve(seed):
    b, = normal(seed + 10, (3, 2))
    return jnp.linalg.solve, [spd(seed, 3), b], {}


def _case_xlogy(seed):
    x, = normal(seed, (4,))
    y, = uniform(seed + 1, 0.2, 2.0, (4,))
    return jax.scipy.special.xlogy, [x, y], {}


def _case_xlog1py(seed):
    x, = normal(seed, (4,))
    y, = uniform(seed + 1, -0.5, 2.0, (4,))
    return jax.scipy.special.xlog1py, [x, y], {}


def _positive(fn, low=0.2, high=2.0):
    return lambda seed: (fn, uniform(seed, low, high, (5,)), {})


def _case_attention(seed):
    return jax.nn.dot_product_attention, normal(seed, (1, 3, 2, 2), (1, 3, 2, 2), (1, 3, 2, 2)), {}


def _case_safe_norm(seed):
    import optax

    return (lambda x: optax.safe_norm(x, 1e-3)), normal(seed, (4,)), {}


def _case_projection_simplex(seed):
    import optax

    return optax.projections.projection_simplex, normal(seed, (5,)), {}


def _case_softmax_cross_entropy(seed):
    import optax

    logits, = normal(seed, (2, 4))
    labels = jax.nn.softmax(normal(seed + 1, (2, 4))[0])
    return optax.losses.softmax_cross_entropy, [logits, labels], {}


def _case_filter_checkpoint(seed):
    eqx = _eqx()
    w, x = normal(seed, (3, 3), (3,))
    fn = eqx.filter_checkpoint(lambda w, x: jax.nn.softplus(w @ jax.nn.gelu(x)))
    return fn, [w, x], {}


def _case_filter_custom_jvp(seed):
    eqx = _eqx()

    @eqx.filter_custom_jvp
    def softsign(x):
        return x / (1 + jnp.abs(x))

    @softsign.def_jvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return softsign(x), t / (1 + jnp.abs(x)) ** 2

    return softsign, normal(seed, (5,)), {}


def _case_linear_solve(seed):
    lx = _lineax()
    b, = normal(seed + 10, (3,))

    def solve(a, b):
        return lx.linear_solve(lx.MatrixLinearOperator(a), b, lx.LU()).value

    return solve, [spd(seed, 3) + normal(seed + 20, (3, 3))[0] / 4, b], {}


def _case_root_find(seed):
    optx = _optimistix()

    def cube_root(a):
        solver = optx.Newton(rtol=1e-12, atol=1e-12)
        return optx.root_find(lambda y, a: y ** 3 - a, solver, jnp.ones_like(a), args=a).value

    return cube_root, uniform(seed, 0.5, 3.0, (3,)), {}


def _case_least_squares(seed):
    optx = _optimistix()

    def fit(t, y):
        """Least-squares amplitude and rate of y ≈ p0 exp(-p1 t)."""
        def residuals(p, data):
            t, y = data
            return p[0] * jnp.exp(-p[1] * t) - y

        # tolerances at float64's noise floor: whether the stopping test ever holds depends on
        # the last bit of rounding (it did not at LLVM's -O0), so the last iterate is returned
        # rather than raised on; it is converged to rounding either way
        solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)
        return optx.least_squares(residuals, solver, jnp.array([1.0, 1.0]), args=(t, y),
                                  throw=False).value

    t = jnp.linspace(0.0, 2.0, 6)
    y = 1.5 * jnp.exp(-0.7 * t) + 0.05 * normal(seed, (6,))[0]
    return fit, [t, y], {}


def _case_minimise(seed):
    """``argmin_y Σ (y − c)² + 0.1 y⁴`` by BFGS, whose implicit-function rule is checked against
    the same minimum by Newton's method on ``2 (y − c) + 0.4 y³ = 0``, unrolled: autodiff of
    BFGS's own iterations converges in value but not in derivative (its Hessian update divides
    vanishing steps: 7e-7 relative at one seed), Newton's derivative converges with its value."""
    optx = _optimistix()

    def loss(y, c):
        return jnp.sum((y - c) ** 2) + 0.1 * jnp.sum(y ** 4)

    def argmin(c):
        solver = optx.BFGS(rtol=1e-12, atol=1e-12)  # throw=False: as in least_squares above
        return optx.minimise(loss, solver, jnp.zeros_like(c), args=c, throw=False).value

    def newton(c):
        def step(_, y):
            return y - (2 * (y - c) + 0.4 * y ** 3) / (2 + 1.2 * y ** 2)

        return jax.lax.fori_loop(0, 40, step, c)

    return argmin, normal(seed, (3,)), {"reference": newton}


def _ode(adjoint_name, dt0=0.025):
    """A small linear ODE solved with Tsit5 at a fixed step. BacksolveAdjoint's gradient solves
    the continuous adjoint ODE, which differs from the derivative of the discrete solution by
    the solver's truncation error: 8.6e-10 relative at a step of 0.05, 2.1e-11 at 0.025."""

    def case(seed):
        dfx = _diffrax()

        def solve(y0, rate):
            term = dfx.ODETerm(lambda t, y, rate: -rate * y + jnp.sin(t))
            adjoint = getattr(dfx, adjoint_name)()
            return dfx.diffeqsolve(term, dfx.Tsit5(), 0.0, 1.0, dt0, y0, args=rate,
                                   adjoint=adjoint).ys

        y0, = normal(seed, (2,))
        rate, = uniform(seed + 1, 0.5, 1.5, (2,))
        return solve, [y0, rate], {}

    return case


PALLAS_TANH_DENSE = pallas_tanh_dense()
PALLAS_TANH_DENSE_WRONG = pallas_tanh_dense(1.01)


def _reference_tanh_dense(x, w):
    return jnp.tanh(x @ w)


def _case_pallas(seed):
    return PALLAS_TANH_DENSE, normal(seed, (4, 3), (3, 2)), {"reference": _reference_tanh_dense}


sp = jax.scipy.special
RULE = ("finite differences", "jax.grad")  # the rule against autodiff and finite differences
FD = ("finite differences",)  # no custom rule in the traced program: finite differences only


CASES = {
    # target: (library, kind of rule, the references compared, case)
    "jax.nn.relu": ("jax.nn", "custom_jvp", RULE, _normal_args(jax.nn.relu, (4, 3))),
    "jax.nn.relu6": ("jax.nn", "custom_jvp", RULE,
                     lambda s: (jax.nn.relu6, [4 * normal(s, (5,))[0]], {})),
    "jax.nn.softplus": ("jax.nn", "custom_jvp (jnp.logaddexp)", RULE,
                        _normal_args(jax.nn.softplus, (4, 3))),
    "jax.nn.log_sigmoid": ("jax.nn", "custom_jvp (jnp.logaddexp)", RULE,
                           _normal_args(jax.nn.log_sigmoid, (5,))),
    "jax.nn.mish": ("jax.nn", "custom_jvp (softplus)", RULE, _normal_args(jax.nn.mish, (5,))),
    "jax.nn.log1mexp": ("jax.nn", "custom_jvp", RULE, _positive(jax.nn.log1mexp)),
    "jax.nn.gelu": ("jax.nn", "none (plain autodiff)", FD, _normal_args(jax.nn.gelu, (4, 3))),
    "jax.nn.silu": ("jax.nn", "none (plain autodiff)", FD, _normal_args(jax.nn.silu, (4, 3))),
    "jax.nn.softmax": ("jax.nn", "none (custom_jvp only under jax_softmax_custom_jvp)", FD,
                       _normal_args(jax.nn.softmax, (2, 4))),
    "jax.nn.log_softmax": ("jax.nn", "none (stop_gradient on the max)", FD,
                           _normal_args(jax.nn.log_softmax, (2, 4))),
    "jax.nn.logsumexp": ("jax.nn", "none (stop_gradient on the max)", FD,
                         _normal_args(jax.nn.logsumexp, (2, 4))),
    "jax.nn.dot_product_attention": ("jax.nn", "none (float32 softmax inside)", FD,
                                     _case_attention),
    "jnp.logaddexp": ("jax.numpy", "custom_jvp", RULE,
                      lambda s: (jnp.logaddexp, normal(s, (5,), (5,)), {})),
    "jnp.sinc": ("jax.numpy", "custom_jvp (Maclaurin term at 0)", RULE,
                 _normal_args(jnp.sinc, (5,))),
    "jax.scipy.special.logsumexp": ("jax.scipy.special", "none (stop_gradient on the max)", FD,
                                    _normal_args(sp.logsumexp, (3, 4))),
    "jax.scipy.special.xlogy": ("jax.scipy.special", "custom_jvp", RULE, _case_xlogy),
    "jax.scipy.special.xlog1py": ("jax.scipy.special", "custom_jvp", RULE, _case_xlog1py),
    "jax.scipy.special.entr": ("jax.scipy.special", "custom_jvp", RULE, _positive(sp.entr)),
    "jax.scipy.special.logit": ("jax.scipy.special", "custom_jvp", RULE,
                                _positive(sp.logit, 0.1, 0.9)),
    "jax.scipy.special.log_ndtr": ("jax.scipy.special", "custom_jvp", RULE,
                                   _normal_args(sp.log_ndtr, (5,))),
    "jax.scipy.special.erfcx": ("jax.scipy.special", "custom_jvp", RULE,
                                _normal_args(sp.erfcx, (5,))),
    "jax.scipy.special.dawsn": ("jax.scipy.special", "custom_jvp", RULE,
                                _normal_args(sp.dawsn, (5,))),
    "jax.scipy.special.poch": ("jax.scipy.special", "custom_jvp", RULE,
                               lambda s: (sp.poch, uniform(s, 0.5, 3.0, (5,), (5,)), {})),
    "jax.scipy.special.expi": ("jax.scipy.special", "custom_jvp (series in a while loop)", RULE,
                               _positive(sp.expi, 0.5, 3.0)),
    "jax.scipy.special.sici": ("jax.scipy.special", "custom_jvp (tuple output)", RULE,
                               _positive(sp.sici, 0.5, 3.0)),
    "jax.scipy.special.zeta": ("jax.scipy.special", "custom_jvp; its primal has no autodiff",
                               FD, lambda s: (sp.zeta, [2 + uniform(s, 0.5, 3.0, (5,))[0],
                                                        uniform(s + 1, 0.5, 3.0, (5,))[0]], {})),
    "jnp.linalg.slogdet": ("jnp.linalg", "custom_jvp", RULE, _case_slogdet),
    "jnp.linalg.det (4 × 4)": ("jnp.linalg", "custom_jvp", RULE,
                               lambda s: (jnp.linalg.det, normal(s, (4, 4)), {})),
    "jnp.linalg.pinv": ("jnp.linalg", "custom_jvp", RULE,
                        lambda s: (jnp.linalg.pinv, normal(s, (3, 2)), {})),
    "jnp.linalg.eigh (spectral function)": ("jnp.linalg", "eigh primitive's JVP", FD,
                                            _case_eigh),
    "jnp.linalg.cholesky (log det)": ("jnp.linalg", "cholesky primitive's JVP", FD,
                                      _case_cholesky),
    "jnp.linalg.solve": ("jnp.linalg", "custom_linear_solve primitive", FD, _case_solve),
    "optax.safe_norm": ("optax", "none (plain autodiff)", FD, _case_safe_norm),
    "optax.projections.projection_simplex": ("optax", "custom_jvp", RULE,
                                             _case_projection_simplex),
    "optax.losses.softmax_cross_entropy": ("optax", "none (plain autodiff)", FD,
                                           _case_softmax_cross_entropy),
    "eqx.filter_checkpoint": ("Equinox", "checkpoint around custom_jvps", RULE,
                              _case_filter_checkpoint),
    "eqx.filter_custom_jvp": ("Equinox", "filter_custom_jvp", RULE, _case_filter_custom_jvp),
    "lx.linear_solve": ("lineax", "linear_solve primitive's JVP (implicit)", RULE,
                        _case_linear_solve),
    "optx.root_find (Newton)": ("optimistix", "implicit function (custom_jvp)", RULE,
                                _case_root_find),
    "optx.least_squares (Levenberg-Marquardt)": ("optimistix", "implicit function (custom_jvp)",
                                                 RULE, _case_least_squares),
    "optx.minimise (BFGS)": ("optimistix", "implicit function (custom_jvp)", RULE,
                             _case_minimise),
    "diffrax RecursiveCheckpointAdjoint": ("diffrax", "checkpointed while loop", RULE,
                                           _ode("RecursiveCheckpointAdjoint")),
    "diffrax BacksolveAdjoint": ("diffrax", "custom_vjp (adjoint ODE)", RULE,
                                 _ode("BacksolveAdjoint")),
    "Pallas tanh(x @ w), interpret mode": ("Pallas", "custom_vjp, float32 kernel", RULE,
                                           _case_pallas),
}

# Targets the checker cannot verify today (none at present): target -> the limitation.
KNOWN_LIMITS: dict[str, str] = {}


def _params():
    for target, (_, _, compared, case) in CASES.items():
        marks = ()
        if target in KNOWN_LIMITS:
            marks = pytest.mark.xfail(strict=True, reason=KNOWN_LIMITS[target])
        yield pytest.param(target, compared, case, id=target, marks=marks)


def test_the_table_holds_at_least_25_real_custom_rules():
    """Pins: the size of the claim: 25 or more targets whose rule is compared with autodiff of
    the undecorated function (or reference=) as well as finite differences."""
    assert sum(compared == RULE for _, _, compared, _ in CASES.values()) >= 25


@pytest.mark.parametrize(("target", "compared", "case"), list(_params()))
def test_a_real_rule_verifies(target, compared, case):
    """Pins: the library's function passes, no leaf unverified, against exactly the references
    the table says: its rule against autodiff of the undecorated function (or reference=) and
    finite differences, or finite differences only where the traced program holds no custom
    rule (a note says so)."""
    fn, args, kwargs = case(0)
    report = check_function(fn, *args, name=target, **kwargs)
    assert report.passed, report.table()
    assert not report.unverified, report.table()
    assert tuple(sorted({c.reference for c in report.comparisons})) == compared, report.table()


# --- planted bugs -------------------------------------------------------------------------------
# One function of x (4, 3) and a square w (3, 3) with two output leaves, whose hand-written
# custom_vjp is broken in one way each; built once at import so every seed shares one compilation
# per bug.


def _tanh_dense_sin(bug):
    """``(tanh(x @ w) + sin(x), x * w[0])`` as a custom_vjp (two output leaves); ``bug`` breaks
    the rule."""

    @jax.custom_vjp
    def fn(x, w):
        return jnp.tanh(x @ w) + jnp.sin(x), x * w[0][None, :]

    def forward(x, w):
        return fn(x, w), (x, w)

    def backward(residuals, g):
        (x, w), (g_sum, g_product) = residuals, g
        dz = g_sum * (1 - jnp.tanh(x @ w) ** 2)
        if bug == "negative inputs only":
            dz = dz * jnp.where(x @ w < 0, 1.5, 1.0)
        dx = dz @ w.T + g_sum * jnp.cos(x)
        dw = x.T @ dz
        if bug == "scaled x1.01":
            dw = 1.01 * dw
        if bug == "scaled x2":
            dx = 2 * dx
        if bug == "transposed":
            dw = dw.T
        if bug == "missing term":
            dx = dz @ w.T  # forgets d sin(x) / dx
        dx_product = g_product * w[0][None, :]
        dw0_product = jnp.sum(g_product * x, axis=0)
        if bug == "wrong in one output leaf":
            dx_product = -dx_product
        return dx + dx_product, dw.at[0].add(dw0_product)

    fn.defvjp(forward, backward)
    return fn


BUGS = ["scaled x1.01", "scaled x2", "transposed", "missing term", "negative inputs only",
        "wrong in one output leaf"]
BROKEN = {bug: _tanh_dense_sin(bug) for bug in [None, *BUGS]}


def test_the_unbroken_rule_of_the_planted_bugs_passes():
    """Pins: the function the bugs are planted in verifies when its rule is right, so each
    failure below is the bug's."""
    for seed in SEEDS:
        report = check_function(BROKEN[None], *normal(seed, (4, 3), (3, 3)), seed=seed)
        assert report.passed, report.table()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bug", BUGS)
def test_a_planted_bug_fails_at_every_seed(bug, seed):
    """Pins: a rule broken in this way FAILs (not unverified, not pass) at every seed."""
    report = check_function(BROKEN[bug], *normal(seed, (4, 3), (3, 3)), seed=seed, name=bug)
    assert not report.passed, report.table()
    assert any(c.status == "FAIL" for c in report.comparisons), report.table()


def _scan_of_cells(bug_in_body):
    """``scan`` of a ``tanh(h + x)`` cell followed by a correct custom_vjp ``exp``-sum outside the
    loop; the cell's rule inside the scan body is 1% off when ``bug_in_body``."""

    @jax.custom_vjp
    def cell(h, x):
        return jnp.tanh(h + x)

    def cell_backward(y, g):
        dz = g * (1 - y ** 2) * (1.01 if bug_in_body else 1.0)
        return dz, dz

    cell.defvjp(lambda h, x: (cell(h, x), cell(h, x)), cell_backward)

    @jax.custom_vjp
    def log_sum_exp(h):
        return jnp.log(jnp.sum(jnp.exp(h)))

    log_sum_exp.defvjp(lambda h: (log_sum_exp(h), h),
                       lambda h, g: (g * jax.nn.softmax(h),))

    def fn(h0, xs):
        h, hs = jax.lax.scan(lambda h, x: (cell(h, x), cell(h, x)), h0, xs)
        return log_sum_exp(h), hs

    return fn


SCAN_BROKEN = _scan_of_cells(True)
SCAN_RIGHT = _scan_of_cells(False)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_wrong_rule_inside_a_scan_body_fails_against_autodiff_too(seed):
    """Pins: a 1% wrong rule inside a scan body, next to a correct rule outside it, FAILs at
    every seed, against jax.grad as well as finite differences (the body is undecorated in the
    reference); the correct version passes."""
    args = normal(seed, (3,), (5, 3))
    report = check_function(SCAN_BROKEN, *args, seed=seed)
    assert not report.passed, report.table()
    assert {c.reference for c in report.failures} == {"jax.grad", "finite differences"}, \
        report.table()
    good = check_function(SCAN_RIGHT, *args, seed=seed)
    assert good.passed, good.table()


def test_the_report_names_lineax_linear_solve_as_a_rule_left_in_the_reference():
    """Pins: a check of lx.linear_solve says, in a note, that its linear_solve primitive is the
    rule under test and stays in the jax.grad reference."""
    fn, args, _ = _case_linear_solve(0)
    report = check_function(fn, *args)
    assert any("linear_solve" in note for note in report.notes), report.table()


def test_the_verification_page_code_runs_and_shows_what_it_prints(tmp_path):
    """Pins: the Python blocks of docs/verification.md run in order (the Pallas kernel author's
    example included: a correct float32 kernel rule passes, a 1% wrong one fails), and the
    report shown under the Pallas example is the one it prints."""
    page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "verification.md"
    pairs = shown_and_printed(page, tmp_path)
    assert len(pairs) == 1
    for shown, printed in pairs:
        assert shown == printed
