"""Table and fact-list values the template draws, and builders for shapes this renderer does not
know: any list of records becomes a table with the union of their keys, any mapping a list of
dotted facts. Everything is text here; the template escapes it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from coordinator.html.metrics import Metric, fmt, guess

MAX_TEXT = 2000          # longest text a cell shows (stderr tails, odd values)
MAX_ROWS = 2000          # rows of one generic table


@dataclass(frozen=True)
class Cell:
    text: str
    sort: float | str | None = None     # data-v: what the column sorts by (None: the text)
    cls: str = ""
    title: str = ""
    detail: str = ""                    # long text shown folded (stderr)
    detail_label: str = "stderr"        # what the fold is labelled
    href: str = ""                      # the text links here (a page of this tool, never data's)


@dataclass(frozen=True)
class Column:
    label: str
    key: str = ""                       # css class col-<key>: lets tests and styles find a column
    title: str = ""
    numeric: bool = False


@dataclass(frozen=True)
class Row:
    cells: Sequence[Cell]
    cls: str = ""
    cand: str = ""                      # candidate id, for chart <-> row links


@dataclass
class Table:
    id: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    groups: list[tuple[str, int]] = field(default_factory=list)   # a header row above: (label, colspan)
    caption: str = ""


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """Any JSON value as one line of text (lists joined, mappings as JSON), bounded."""
    if value is None:
        return "-"
    if isinstance(value, str):
        out = value
    elif isinstance(value, bool):
        out = "yes" if value else "no"
    elif isinstance(value, (int, float)):
        out = fmt(None, value)
    elif isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in value):
        out = ", ".join(text(v) for v in value) if value else "-"
    else:
        out = json.dumps(value, sort_keys=True, default=str)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def metric_cell(metric: Metric, value: Any, cls: str = "") -> Cell:
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return Cell(fmt(metric, value), number if number is not None else "", cls)


def facts(value: Any, prefix: str = "", depth: int = 3) -> list[tuple[str, str]]:
    """A mapping as (dotted key, text) pairs; nested mappings are flattened a few levels deep."""
    if not isinstance(value, Mapping):
        return [(prefix.rstrip(".") or "value", text(value))]
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item and depth > 0:
            out.extend(facts(item, name + ".", depth - 1))
        else:
            out.append((name, text(item)))
    return out


def records(table_id: str, items: Sequence[Any], first: Sequence[str] = ()) -> Table:
    """A list of records as a sortable table with the union of their keys (`first` ones first)."""
    every = [i for i in items if isinstance(i, Mapping)]
    dicts = every[:MAX_ROWS]
    keys: dict[str, None] = {k: None for k in first if any(k in d for d in dicts)}
    for d in dicts:
        for k in d:
            keys.setdefault(str(k))
    numeric = {k: all(isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)
                      for d in dicts if d.get(k) is not None) and any(d.get(k) is not None for d in dicts)
               for k in keys}
    columns = [Column(k.replace("_", " "), css_key(k), numeric=numeric[k]) for k in keys]
    rows = []
    for d in dicts:
        cells = []
        for k in keys:
            v = d.get(k)
            cells.append(metric_cell(guess(k), v) if numeric[k] else Cell(text(v)))
        rows.append(Row(cells))
    left = [f"{len(items) - len(every)} entries that are not records"] if len(every) < len(items) else []
    left += [f"{len(every) - len(dicts)} records past the first {MAX_ROWS}"] if len(dicts) < len(every) else []
    caption = f"left out: {'; '.join(left)}" if left else ""
    return Table(table_id, columns, rows, caption=caption)


def css_key(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in key)
