"""Short text and HTML summaries for reprs (``PruneResult``, ``PruneReport``): arrays show
as ``dtype[shape]``, never their values, so a notebook cell stays a few lines long."""

from __future__ import annotations

import html
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["html_table", "jsonable", "short"]


def short(value: Any, depth: int = 0) -> str:
    """A one-line summary of ``value``: arrays (and compressed tensors) as ``dtype[AxB]``,
    floats to 4 significant digits, mappings and sequences recursively (at most 8 items)."""
    if isinstance(value, np.ndarray) or (
        hasattr(value, "shape") and hasattr(value, "dtype") and not np.isscalar(value)
    ):
        shape = "x".join(str(int(s)) for s in value.shape)
        kind = "" if isinstance(value, np.ndarray) else type(value).__name__ + " "
        return f"{kind}{np.dtype(value.dtype).name}[{shape}]"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if depth >= 2:
        return "..."
    if isinstance(value, Mapping):
        items = [f"{k}: {short(v, depth + 1)}" for k, v in list(value.items())[:8]]
        more = ", ..." if len(value) > 8 else ""
        return "{" + ", ".join(items) + more + "}"
    if isinstance(value, Sequence):
        items = [short(v, depth + 1) for v in list(value)[:8]]
        more = ", ..." if len(value) > 8 else ""
        return "[" + ", ".join(items) + more + "]"
    return f"<{type(value).__name__}>"


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, tuples as lists, and anything JSON
    cannot hold (arrays, objects) as its :func:`short` summary string."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return f if np.isfinite(f) else str(f)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return short(value)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain HTML table (cells escaped; numbers right-aligned)."""

    def cell(v: Any, tag: str) -> str:
        align = ' style="text-align:right"' if isinstance(v, numbers.Number) else ""
        text = short(v) if not isinstance(v, str) else v
        return f"<{tag}{align}>{html.escape(text)}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(v, "td") for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
