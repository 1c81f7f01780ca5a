"""A gradient-check report as a table: plain text, Markdown and HTML.

One row per (layer or function, parameter or leaf): the largest relative error against
``jax.grad`` and against finite differences, the index of the worst entry, and pass/fail. Notes
(finite-difference entries skipped at non-smooth points, arguments left out) follow the table.
:class:`jaxnn.gradcheck.GradcheckReport` renders itself through these functions (``table()``,
``markdown()``, ``_repr_html_()`` for notebooks).
"""

from __future__ import annotations

import html as html_escape
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from jaxnn.gradcheck import Comparison, GradcheckReport

__all__ = ["HEADER", "Row", "html", "markdown", "notes", "rows", "text"]

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
    verdict: str  # "pass" or "FAIL"


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
    out = []
    for (layer, parameter), refs in grouped.items():
        ad, fd = refs.get(AUTODIFF), refs.get(FINITE_DIFFERENCES)
        worst = max(refs.values(), key=_badness)
        index = worst.worst_index
        out.append(Row(
            layer, parameter,
            f"{ad.max_relative_error:.2e}" if ad else "-",
            f"{fd.max_relative_error:.2e}" if fd else "-",
            "-" if index is None else str(tuple(index)),
            "pass" if all(c.passed for c in refs.values()) else "FAIL",
        ))
    return out


def notes(report: GradcheckReport) -> list[str]:
    """The report's notes, and the count of finite-difference entries skipped at kinks."""
    out = list(report.notes)
    skipped = sum(c.skipped for c in report.comparisons)
    if skipped:
        out.append(f"{skipped} finite-difference entries skipped: non-smooth point, a kink "
                   f"within the step")
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
    return "\n".join(out + ([""] + note_lines if note_lines else []))


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
