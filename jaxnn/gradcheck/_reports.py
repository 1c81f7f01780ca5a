"""A check's results: its tolerances, one [`Comparison`][jaxnn.gradcheck.Comparison] per
(leaf, reference), and the [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport] that gathers and
renders them."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from jaxnn.gradcheck import _render

__all__ = ["DEFAULT_TOLERANCES", "Comparison", "GradcheckReport", "Tolerances"]


class Tolerances(NamedTuple):
    r"""The pass thresholds of a check and its finite-difference settings.

    Attributes:
      rtol_autodiff: the largest relative error against ``jax.grad``.
      rtol_fd: the largest relative error against finite differences.
      fd_eps: the finite-difference step $\varepsilon$ of a function computing in float64; one
        computing in a lower precision $c$ (float32 inside, or run in its own dtype) takes
        $\varepsilon\,(\epsilon_c / \epsilon_{64})^{1/5}$ rounded to a power of two (0.0625
        for float32 at the default).
      max_fd_entries: entries per array estimated by finite differences (sampled beyond it).
      noise_factor: $\nu$, the rounding allowed per value, in units of the machine epsilon
        $\epsilon_c$ of the lowest precision the function computes in: the tolerance against
        autodiff is $\max(\text{rtol\_autodiff}, \nu\,\epsilon_c)$, and each
        finite-difference estimate has the noise floor $1.5\,\nu\,\epsilon_c A / \varepsilon$
        ($A = \sum_k \lvert v_k f_k \rvert$, the size of the terms of $S$), below which an
        error is not counted (module doc).

    Examples:
        The defaults, and looser ones for a check that compares fewer entries:

        >>> from jaxnn.gradcheck import Tolerances
        >>> Tolerances()
        Tolerances(rtol_autodiff=1e-09, rtol_fd=1e-06, fd_eps=0.001, max_fd_entries=1024,
                   noise_factor=32.0)
        >>> Tolerances(rtol_fd=1e-5, max_fd_entries=64).rtol_fd
        1e-05

        Every check takes them as ``tolerances=``; a
        [`LayerCase`][jaxnn.gradcheck.LayerCase] sets fields of them in its ``options``.
    """

    rtol_autodiff: float = 1e-9
    rtol_fd: float = 1e-6
    fd_eps: float = 1e-3
    max_fd_entries: int = 1024
    noise_factor: float = 32.0


DEFAULT_TOLERANCES = Tolerances()


@dataclasses.dataclass(frozen=True)
class Comparison:
    r"""One array's hand-derived gradient against one reference: one row of a
    [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport].

    ``max_relative_error`` is the $\text{rel}(a, b)$ of the [module doc][jaxnn.gradcheck], with
    $a$ the hand-derived gradient and $b$ the reference; the comparison passes when it is at
    most ``tolerance``. A comparison that compared no entry (``compared == 0``: every entry at a
    kink, or not finite in the reference) has the status ``"unverified"``: it neither passes
    nor fails, and a leaf none of whose comparisons verified an entry makes the report fail
    (see [`GradcheckReport.unverified`][jaxnn.gradcheck.GradcheckReport.unverified]).

    Examples:
        Checks make them; here is one by hand:

        >>> from jaxnn.gradcheck import Comparison
        >>> c = Comparison("dense", "W", "jax.grad", max_abs_error=3e-12,
        ...                max_relative_error=2e-10, tolerance=1e-9, in_shape=(4, 2))
        >>> c.passed
        True
        >>> c.layer, c.parameter, c.reference
        ('dense', 'W', 'jax.grad')
        >>> import dataclasses
        >>> dataclasses.replace(c, max_relative_error=1e-6).passed
        False
    """

    layer: str
    """The layer (or function) checked; ``"serial/2:dense"`` inside a model."""
    parameter: str
    """The parameter or input leaf: ``"W"``, ``"b"``, ``"input"``, ``"params.W"``, ``"x"``."""
    reference: str
    """What the hand-derived gradient is compared with: ``"jax.grad"`` or
    ``"finite differences"``."""
    max_abs_error: float
    r"""The largest absolute difference $\max_i \lvert a_i - b_i \rvert$."""
    max_relative_error: float
    """The largest relative difference (module doc), the number judged."""
    tolerance: float
    """The threshold ``max_relative_error`` is judged against (``rtol_autodiff`` or
    ``rtol_fd`` of [`Tolerances`][jaxnn.gradcheck.Tolerances])."""
    in_shape: tuple = ()
    """The input's shape at which the gradient was checked (``()`` for a function check)."""
    skipped: int = 0
    """Entries left out of this comparison: against finite differences those at a kink
    (non-smooth within the step) or where a stencil value is NaN/inf; against ``jax.grad``
    those where autodiff is NaN/inf."""
    worst_index: tuple[int, ...] | None = None
    """The index of the entry with the largest relative error (``None`` when nothing was
    compared)."""
    errors: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    """Per-entry relative errors (NaN where not compared), for plots; not part of equality."""
    compared: int | None = None
    """Entries compared (``None``: not counted, a comparison made by hand)."""
    kinks: int = 0
    """Entries at a kink: left out of the finite differences; against ``jax.grad``, those
    where the two differ but the hand-derived value lies between the one-sided slopes."""
    noisy: int = 0
    """Finite-difference entries whose rounding-noise floor exceeds the tolerance (the
    function computes in a lower precision inside, or its output is large): judged on the
    error beyond the floor."""
    not_finite: int = 0
    """Entries where the reference is NaN or infinite, not compared."""
    computes_in: str = "float64"
    """The lowest precision the checked function computes in."""

    @property
    def passed(self) -> bool:
        """``max_relative_error <= tolerance``: the comparison did not fail (it may still have
        compared nothing; see [`status`][jaxnn.gradcheck.Comparison.status])."""
        return bool(self.max_relative_error <= self.tolerance)

    @property
    def verified(self) -> bool:
        """Whether some entry was compared."""
        return self.compared is None or self.compared > 0

    @property
    def status(self) -> str:
        """``"FAIL"``, ``"unverified"`` (nothing compared) or ``"pass"``."""
        if not self.passed:
            return "FAIL"
        return "pass" if self.verified else "unverified"


@dataclasses.dataclass
class GradcheckReport:
    """The comparisons of a check, one per layer, parameter and reference.

    Every check of this module returns one. It renders as a table, one row per (layer,
    parameter) with its error against each reference: ``str(report)`` and
    [`table`][jaxnn.gradcheck.GradcheckReport.table] as plain text,
    [`markdown`][jaxnn.gradcheck.GradcheckReport.markdown] for GitHub, and as HTML in notebooks.

    Examples:
        A report of two comparisons, one failing (checks fill them in; these are by hand):

        >>> from jaxnn.gradcheck import Comparison, GradcheckReport
        >>> report = GradcheckReport([
        ...     Comparison("dense", "W", "jax.grad", 1e-12, 1e-11, 1e-9, (4, 2)),
        ...     Comparison("dense", "W", "finite differences", 1e-3, 2e-4, 1e-6, (4, 2),
        ...                worst_index=(1, 0)),
        ... ])
        >>> report.passed, report.failing_layers
        (False, ['dense'])
        >>> print(report.table())
        layer  parameter  rel. err vs jax.grad  rel. err vs finite diff.  worst entry
        -----  ---------  --------------------  ------------------------  -----------  ----
        dense  W          1.00e-11              2.00e-04                  (1, 0)       FAIL
        >>> report.raise_if_failed()
        Traceback (most recent call last):
        ...
        AssertionError: gradient check failed:
        ...
    """

    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    """Every [`Comparison`][jaxnn.gradcheck.Comparison], in the order checked."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """What was left out, and why (printed below the table)."""

    @property
    def passed(self) -> bool:
        """Whether no comparison failed and every leaf had some entry compared with some
        reference (no [`unverified`][jaxnn.gradcheck.GradcheckReport.unverified] leaf)."""
        return not self.failures and not self.unverified

    @property
    def unverified(self) -> list[tuple[str, str]]:
        """``(layer, parameter)`` of each leaf none of whose comparisons compared an entry (at
        some input shape): every finite-difference entry at a kink or not finite, and no
        finite autodiff reference. Such a leaf is neither passed nor failed."""
        verified: dict[tuple, bool] = {}
        for c in self.comparisons:
            key = (c.layer, c.parameter, c.in_shape)
            verified[key] = verified.get(key, False) or c.verified
        return list(dict.fromkeys(k[:2] for k, v in verified.items() if not v))

    @property
    def failures(self) -> list[Comparison]:
        """The comparisons that failed."""
        return [c for c in self.comparisons if not c.passed]

    @property
    def failing_layers(self) -> list[str]:
        """Names of the layers with a failing comparison, in report order, without repeats."""
        return list(dict.fromkeys(c.layer for c in self.failures))

    def extend(self, other: GradcheckReport) -> None:
        """Appends ``other``'s comparisons and notes to this report."""
        self.comparisons.extend(other.comparisons)
        self.notes.extend(other.notes)

    def table(self) -> str:
        """A plain-text table: layer, parameter, error vs jax.grad, error vs finite differences,
        the worst entry's index, pass/fail; notes below.

        A row holds the largest error over the input shapes checked; finite-difference entries
        skipped at non-smooth points are counted below the table.
        """
        return _render.text(self)

    def markdown(self) -> str:
        """The table in GitHub-flavoured Markdown."""
        return _render.markdown(self)

    def _repr_html_(self) -> str:
        """The table in HTML, as notebooks show it."""
        return _render.html(self)

    def __str__(self) -> str:
        return self.table()

    def raise_if_failed(self, allow_unverified: bool = False) -> None:
        """Raises ``AssertionError`` with the table when some comparison failed, or some leaf
        is unverified (unless ``allow_unverified``)."""
        if self.failures or (self.unverified and not allow_unverified):
            raise AssertionError("gradient check failed:\n" + self.table())
