"""A gradient-check report as a table: plain text, Markdown and HTML.

One row per (layer or function, parameter or leaf): the largest relative error against
``jax.grad`` and against finite differences, the index of the worst entry, and the verdict
(``pass``, ``FAIL``, or ``unverified`` when no entry of the leaf was compared with any reference).
Notes (entries at kinks, noisy or not finite, arguments left out) follow the table.
[`jaxnn.gradcheck.GradcheckReport`][jaxnn.gradcheck.GradcheckReport] renders itself through these
functions (``table()``,
``markdown()``, ``_repr_html_()`` for notebooks); ``plot_errors`` draws where the error sits
in each parameter.

Examples:
    Two comparisons of one parameter make one row; skipped entries become a note:

    >>> from jaxnn.gradcheck import _render
    >>> from jaxnn.gradcheck import Comparison, GradcheckReport
    >>> report = GradcheckReport([
    ...     Comparison("dense", "b", "jax.grad", 0.0, 0.0, 1e-9),
    ...     Comparison("dense", "b", "finite differences", 1e-9, 3e-8, 1e-6, skipped=2,
    ...                kinks=2),
    ... ])
    >>> _render.rows(report)
    [Row(layer='dense', parameter='b', vs_autodiff='0.00e+00', vs_finite_differences='3.00e-08',
         worst_entry='-', verdict='pass')]
    >>> print(_render.markdown(report))
    | layer | parameter | rel. err vs jax.grad | rel. err vs finite diff. | worst entry |  |
    | --- | --- | --- | --- | --- | --- |
    | dense | b | 0.00e+00 | 3.00e-08 | - | pass |
    <BLANKLINE>
    - 2 finite-difference entries skipped: non-smooth point, a kink within the step (still
      compared with jax.grad)
"""

from __future__ import annotations

import html as html_escape
from typing import Any, NamedTuple

import numpy as np

# a report is a jaxnn.gradcheck.GradcheckReport and a comparison one of its Comparison rows;
# this module sits below jaxnn.gradcheck._reports (which renders through it), so it names
# them only
GradcheckReport = Any
Comparison = Any

__all__ = ["HEADER", "Row", "html", "markdown", "notes", "plot_errors", "plotted", "rows",
           "text"]

AUTODIFF, FINITE_DIFFERENCES = "jax.grad", "finite differences"
HEADER = ("layer", "parameter", "rel. err vs jax.grad", "rel. err vs finite diff.",
          "worst entry", "")


class Row(NamedTuple):
    """One line of the table, every cell already a string."""

    layer: str
    parameter: str
    vs_autodiff: str
    vs_finite_differences: str
    worst_entry: str
    verdict: str  # "pass", "FAIL" or "unverified"


def _badness(c: Comparison) -> tuple[bool, float]:
    """Orders comparisons: failing first, then by error relative to the tolerance."""
    ratio = c.max_relative_error / c.tolerance if c.tolerance else c.max_relative_error
    return not c.passed, ratio


def rows(report: GradcheckReport) -> list[Row]:
    """The table's rows in report order; a (layer, parameter) checked several times (several
    input shapes) shows its worst comparison per reference."""
    grouped: dict[tuple[str, str], dict[str, Comparison]] = {}
    for c in report.comparisons:
        refs = grouped.setdefault((c.layer, c.parameter), {})
        if c.reference not in refs or _badness(c) > _badness(refs[c.reference]):
            refs[c.reference] = c
    unverified = set(report.unverified)
    out = []
    for (layer, parameter), refs in grouped.items():
        ad, fd = refs.get(AUTODIFF), refs.get(FINITE_DIFFERENCES)
        worst = max(refs.values(), key=_badness)
        index = worst.worst_index
        out.append(Row(
            layer, parameter,
            _cell(ad),
            _cell(fd),
            "-" if index is None else str(tuple(index)),
            "FAIL" if not all(c.passed for c in refs.values()) else
            "unverified" if (layer, parameter) in unverified else "pass",
        ))
    return out


def _cell(c: Comparison | None) -> str:
    """A comparison's error; ``-`` when there is none, ``none compared`` when it compared no
    entry."""
    if c is None:
        return "-"
    return f"{c.max_relative_error:.2e}" if c.verified else "none compared"


def notes(report: GradcheckReport) -> list[str]:
    """The report's notes, then what the counts of its comparisons say: entries at kinks,
    noisy entries, entries where a reference is not finite, and unverified leaves."""
    out = list(report.notes)
    fd = [c for c in report.comparisons if c.reference == FINITE_DIFFERENCES]
    ad = [c for c in report.comparisons if c.reference != FINITE_DIFFERENCES]
    kinks = sum(c.kinks for c in fd)
    if kinks:
        out.append(f"{kinks} finite-difference entries skipped: non-smooth point, a kink "
                   f"within the step" + (" (still compared with jax.grad)" if ad else ""))
    accepted = sum(c.kinks for c in ad)
    if accepted:
        out.append(f"{accepted} entries at a kink where the rule and jax.grad pick different "
                   f"one-sided slopes: both valid, accepted")
    for dtype in dict.fromkeys(c.computes_in for c in fd):
        noisy = sum(c.noisy for c in fd if c.computes_in == dtype)
        if noisy:
            why = "large output" if dtype == "float64" else f"{dtype} inside"
            out.append(f"{noisy} finite-difference entries noisy ({why}): judged on the "
                       f"error beyond their rounding-noise floor")
    for reference, group in ((FINITE_DIFFERENCES, fd), (AUTODIFF, ad)):
        bad = sum(c.not_finite for c in group)
        if bad:
            where = "jax.grad" if reference == AUTODIFF else "the finite differences"
            out.append(f"{bad} entries not finite (NaN/inf) in {where}: not compared")
    for layer, parameter in report.unverified:
        out.append(f"{layer} {parameter}: unverified, no entry compared with any reference")
    return out


def text(report: GradcheckReport) -> str:
    """Columns padded with spaces, a rule under the header, one "note:" line per note below."""
    lines = [HEADER, *rows(report)]
    widths = [max(len(r[i]) for r in lines) for i in range(len(HEADER))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
           for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.extend(f"note: {note}" for note in notes(report))
    return "\n".join(out)


def markdown(report: GradcheckReport) -> str:
    """A GitHub-flavoured Markdown table, notes as a list below it."""

    def line(cells) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(HEADER), line(["---"] * len(HEADER))]
    out.extend(line(r._replace(verdict="**FAIL**" if r.verdict == "FAIL" else r.verdict))
               for r in rows(report))
    note_lines = [f"- {note}" for note in notes(report)]
    return "\n".join(out + (["", *note_lines] if note_lines else []))


def html(report: GradcheckReport) -> str:
    """An HTML table (failing rows in red, bold) with a pass/fail caption, notes below."""
    escape = html_escape.escape
    verdict = "passed" if report.passed else "FAILED"
    head = "".join(f"<th>{escape(h)}</th>" for h in HEADER)
    body = []
    for r in rows(report):
        style = ' style="color:#b00020;font-weight:bold"' if r.verdict == "FAIL" else ""
        cells = "".join(f"<td>{escape(c)}</td>" for c in r)
        body.append(f"<tr{style}>{cells}</tr>")
    items = "".join(f"<li>{escape(n)}</li>" for n in notes(report))
    return (f"<table><caption>gradient check {verdict}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>" + (f"<ul>{items}</ul>" if items else ""))


def _as_matrix(errors) -> np.ndarray:
    """Entries as a matrix: rows of a weight stay rows; leading axes are merged."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim == 0:
        return errors.reshape(1, 1)
    if errors.ndim == 1:
        return errors.reshape(1, -1)
    return errors.reshape(-1, errors.shape[-1])


def plotted(report: GradcheckReport) -> list[Comparison]:
    """The comparisons a plot shows: per (layer, parameter) the worst one that kept its
    per-entry errors, against ``jax.grad`` where there is one, else finite differences."""
    chosen: dict[tuple[str, str], Comparison] = {}
    for c in report.comparisons:
        if c.errors is None:
            continue
        key = (c.layer, c.parameter)
        held = chosen.get(key)
        prefer = held is None or (c.reference == AUTODIFF) > (held.reference == AUTODIFF) or (
            c.reference == held.reference and _badness(c) > _badness(held))
        if prefer:
            chosen[key] = c
    return list(chosen.values())


def plot_errors(report: GradcheckReport, path: str, *, columns: int = 3) -> list[str]:
    """Draws one heat map of ``log₁₀`` relative error per parameter and saves it to ``path``.

    Each panel shows a parameter's entries (leading axes merged into rows, the last axis as
    columns), so a wrong row or column of a weight gradient stands out; entries not compared
    (unsampled or skipped finite differences) are blank. A failing parameter's title is red.

    Returns:
      The panel titles, in order.

    Raises:
      ValueError: the report kept no per-entry errors (only
        [`jaxnn.gradcheck.check_function`][jaxnn.gradcheck.check_function] and the layer
        checks keep them).

    Examples:
        Needs matplotlib (``pip install "jaxnn[cli]"``); ``jaxnn gradcheck --plot`` calls it:

        >>> import os, tempfile
        >>> from jaxnn.gradcheck import check_layer, plot_errors
        >>> report = check_layer(jaxnn.dense(2), (3, 2), batch_sizes=())
        >>> path = os.path.join(tempfile.mkdtemp(), "errors.png")
        >>> plot_errors(report, path)[0]
        'dense: W vs jax.grad, max ...'
        >>> os.path.exists(path)
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = plotted(report)
    if not panels:
        raise ValueError("plot_errors: the report kept no per-entry errors to draw")
    columns = max(1, min(columns, len(panels)))
    n_rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(4.2 * columns, 3.4 * n_rows),
                             squeeze=False)
    titles = []
    for ax, c in zip(axes.flat, panels, strict=False):
        log_error = np.log10(np.maximum(_as_matrix(c.errors), 1e-17))
        image = ax.imshow(log_error, cmap="viridis", aspect="auto", interpolation="nearest",
                          vmin=-17, vmax=max(0.0, float(np.nanmax(log_error, initial=-17))))
        fig.colorbar(image, ax=ax, label="log₁₀ relative error")
        title = f"{c.layer}: {c.parameter} vs {c.reference}\nmax {c.max_relative_error:.1e}"
        ax.set_title(title, fontsize=9, color="black" if c.passed else "#b00020")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("last axis")
        ax.set_ylabel("other axes (merged)")
        titles.append(title.replace("\n", ", "))
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return titles
