"""Reading a report.json that may be old, partial or hand-edited: a value of the wrong type reads
as absent (an empty mapping or list, no number) so the pages render what is there."""
from __future__ import annotations

from typing import Any, Mapping


def as_map(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def as_number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def as_strs(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else ()
