"""Tables as text (terminal), Markdown (docs) and HTML (Jupyter), from one list of rows.

Numbers are shown with as many digits as they deserve: counts with thousands separators, large
values without decimals, small ones (a KL divergence) with four significant digits.
"""
from __future__ import annotations

import html
from collections.abc import Sequence


def format_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "count" or (abs(value) >= 10_000 and float(value).is_integer()):
        return f"{value:,.0f}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.4g}"


def format_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def verdict(ratio: float | None, lower_is_better: bool | None, tolerance: float = 0.005) -> str:
    """'better', 'worse' or 'same' for a ratio model/reference, given which direction is good."""
    if ratio is None or lower_is_better is None:
        return ""
    if abs(ratio - 1.0) <= tolerance:
        return "same"
    improved = ratio < 1.0 if lower_is_better else ratio > 1.0
    return "better" if improved else "worse"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    """A plain aligned table: columns from ``right_from`` on are right-aligned (numbers)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for index, (cell, width) in enumerate(zip(cells, widths)):
            out.append(str(cell).rjust(width) if index >= right_from else str(cell).ljust(width))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    def escape(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    align = ["---" if i < right_from else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(escape(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1, caption: str = "") -> str:
    def cell(tag: str, value: str, index: int) -> str:
        style = ' style="text-align:right"' if index >= right_from else ' style="text-align:left"'
        return f"<{tag}{style}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", c, i) for i, c in enumerate(row)) + "</tr>" for row in rows)
    caption_html = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{caption_html}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
