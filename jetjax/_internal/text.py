"""Plain-text tables whose columns never run together, whatever the values (the demo's and the
studies' printed tables)."""

from __future__ import annotations

from typing import Sequence

__all__ = ["number_cell", "text_table"]


def number_cell(value, width: int, decimals: int) -> str:
    """``value`` right-aligned in ``width`` characters: fixed-point with ``decimals`` when it fits, else
    scientific notation with as many digits as fit (at least two significant ones, never cut). Join cells
    with a space: a value too wide even then widens its own cell and never runs into its neighbour.

    >>> number_cell(0.1849, 7, 3), number_cell(17634891.64, 9, 2), number_cell(float("nan"), 6, 2)
    ('  0.185', ' 1.76e+07', '   nan')
    """
    text = f"{value:.{decimals}f}"
    for digits in range(max(decimals, 2), 0, -1):
        if len(text) <= width:
            break
        text = f"{value:.{digits}e}"
    return text.rjust(width)


def text_table(header: Sequence[str], rows: Sequence[Sequence], widths: Sequence[int],
               decimals: Sequence[int | None], *, left: Sequence[int] = ()) -> list[str]:
    """Lines of a plain-text table whose columns are separated by at least one space whatever the values:
    each number goes through :func:`number_cell` (``decimals[i]`` ``None``, or a str value: the cell is
    text, right-aligned unless its column is in ``left``).

    >>> text_table(["", "cos", "KL"], [["h0", -0.1849, 17634891.64]], [5, 7, 9], [None, 3, 2])
    ['          cos        KL', '   h0  -0.185  1.76e+07']
    """
    def text(value, width, i):
        return str(value).ljust(width) if i in left else str(value).rjust(width)

    def cell(value, width, dec, i):
        return text(value, width, i) if dec is None or isinstance(value, str) else number_cell(value, width, dec)

    lines = [" ".join(text(h, w, i) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += [" ".join(cell(v, w, d, i) for i, (v, w, d) in enumerate(zip(row, widths, decimals))) for row in rows]
    return [line.rstrip() for line in lines]
