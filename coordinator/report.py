"""report.json: the result of a tune and its checkpoint. Written atomically after every result,
so a killed run resumes from it without re-evaluating finished candidates.

Keys documented in README.md ("Report schema"); later versions add keys, never rename them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from shared.atomic import atomic_write_text
from shared.errors import DataError, NotFound

SCHEMA_VERSION = 1


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


def read_report(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"report {path} does not exist", step="report")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"report {path} is not valid JSON: {exc}", step="report") from exc
    if not isinstance(report, dict) or "candidates" not in report or "model" not in report:
        raise DataError(f"{path} is not a qfarm report (no 'model'/'candidates')", step="report")
    return report


def find_candidate(report: Mapping[str, Any], candidate_id: str) -> dict[str, Any]:
    for cand in report["candidates"]:
        if cand["id"] == candidate_id:
            return cand
    known = ", ".join(c["id"] for c in report["candidates"][:8])
    raise NotFound(f"candidate {candidate_id!r} is not in the report (candidates: {known}"
                   f"{', ...' if len(report['candidates']) > 8 else ''})", step="report")


def identity_mismatch(existing: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    """Fields of a resumed report that differ from this run's; a resume must match exactly."""
    old = existing.get("identity", {})
    return sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
