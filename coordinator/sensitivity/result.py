"""One ranked node, and the one ordering every ranker returns, so the tuner can rely on both."""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

from shared.errors import EvaluationError


@dataclass(frozen=True)
class NodeSensitivity:
    """How much quantizing one node hurts; higher score = more damaged = exclude first."""

    node: str  # node name in the float model, as nodes_to_exclude accepts it
    op_type: str
    tensor: str  # activation tensor the errors were measured on
    score: float
    details: Mapping[str, float | bool | None]  # method-specific; non-finite numbers are stored as None

    def __post_init__(self) -> None:
        if not isinstance(self.score, float) or not math.isfinite(self.score):
            raise EvaluationError(f"node {self.node}: score {self.score!r} is not a finite number",
                                  step="sensitivity")
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))


def json_number(value: float) -> float | None:
    """JSON has no inf/nan: keep finite numbers, map the rest to None."""
    return float(value) if math.isfinite(value) else None


def ordered(entries: Iterable[NodeSensitivity]) -> list[NodeSensitivity]:
    """Most damaged first; equal scores by node name so reruns give the same list."""
    return sorted(entries, key=lambda entry: (-entry.score, entry.node))
