"""Markdown tables for the results of ``hear_eval``, ``sweep`` and ``ablate``: one writer, one cell format.

pandas' ``DataFrame.to_markdown`` would do it, but needs pandas and tabulate, neither of which the
``eval``/``sweep``/``dev`` extras install; these tables are plain pipes and dashes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def cell(value: Any, spec: str = ".4f", missing: str = "-", suffix: str = "") -> str:
    """``value`` as a table cell: a float formatted with ``spec`` (plus ``suffix``), None or NaN as
    ``missing``, anything else (ints, strings, booleans) as ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, float):
        return f"{value:{spec}}{suffix}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a GitHub markdown table: the header, the separator, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
