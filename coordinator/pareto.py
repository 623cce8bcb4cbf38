"""Pareto fronts over measured candidates (pymoo's non-dominated sorting) and one trade-off: the
front member closest to the ideal point after normalising each objective (optionally weighted).
Which candidate a device is recommended is the policy's call (coordinator/policy.py), which uses
these fronts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from coordinator.measures import latency_ratio, sqnr

# objective name -> value from a result dict (with the candidate's size_bytes) to minimise. A
# result that lacks the measurement counts as FP32 for latency (ratio 1) and as 0 dB for fidelity.
OBJECTIVES = {
    "accuracy_loss": lambda r: 1.0 - r["top1_agreement"],
    "top5_loss": lambda r: 1.0 - r["top5_agreement"],
    "label_loss": lambda r: 1.0 - (r["top1_accuracy"] if r.get("top1_accuracy") is not None else r["top1_agreement"]),
    "size_bytes": lambda r: float(r["size_bytes"]),
    "latency_ms": lambda r: float(r["latency_ms_p50"]),
    "latency": lambda r: _or(latency_ratio(r), 1.0),                 # time / FP32's on the same device
    "fidelity": lambda r: -_or(sqnr(r), 0.0),                         # higher output SQNR is better
}
DEFAULT_OBJECTIVES = ("accuracy_loss", "size_bytes", "latency")
#: objectives that need top-1 agreement, which only classification results have
AGREEMENT_OBJECTIVES = frozenset({"accuracy_loss", "top5_loss", "label_loss"})


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def effective_objectives(objectives: Sequence[str], results: Mapping[str, Mapping]) -> tuple[str, ...]:
    """The objectives as asked; when the measured results have no top-1 agreement (dense or
    generic outputs), agreement-based ones become `fidelity` (output SQNR vs FP32)."""
    ok = [r for r in results.values() if r.get("status") == "ok"]
    if not ok or all(r.get("top1_agreement") is not None for r in ok):
        return tuple(objectives)
    swapped = ["fidelity" if o in AGREEMENT_OBJECTIVES else o for o in objectives]
    return tuple(dict.fromkeys(swapped))


@dataclass(frozen=True)
class ParetoResult:
    fronts: list[list[str]]                 # candidate ids, best front first
    recommended: str | None
    best: dict[str, str]                    # objective -> candidate id
    points: dict[str, list[float]]          # candidate id -> objective values


def objective_matrix(results: Mapping[str, Mapping], objectives: Sequence[str]) -> tuple[list[str], np.ndarray]:
    ids = sorted(cid for cid, r in results.items() if r.get("status") == "ok")
    F = np.array([[OBJECTIVES[o](results[cid]) for o in objectives] for cid in ids], dtype=float)
    return ids, F.reshape(len(ids), len(objectives))


def _argbest(F: np.ndarray, j: int) -> int:
    """Row minimising objective j, ties broken by the other objectives in order."""
    keys = [j] + [k for k in range(F.shape[1]) if k != j]
    return int(np.lexsort(tuple(F[:, k] for k in reversed(keys)))[0])


def pareto(results: Mapping[str, Mapping], objectives: Sequence[str],
           weights: Sequence[float] | None = None) -> ParetoResult:
    """`results`: candidate id -> result dict (status, top1_agreement, size_bytes, ...) on one device;
    `weights` scale each normalised objective in the trade-off distance (default: all 1)."""
    ids, F = objective_matrix(results, objectives)
    if not ids:
        return ParetoResult([], None, {}, {})
    fronts = [[ids[i] for i in sorted(front, key=lambda i: tuple(F[i]))]
              for front in NonDominatedSorting().do(F)]
    best = {o: ids[_argbest(F, j)] for j, o in enumerate(objectives)}
    first = [ids.index(c) for c in fronts[0]]
    lo, hi = F.min(axis=0), F.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    norm = (F[first] - lo) / span * np.asarray(weights if weights is not None else [1.0] * F.shape[1])
    dist = np.linalg.norm(norm, axis=1)
    recommended = fronts[0][int(np.argmin(dist))]
    return ParetoResult(fronts, recommended, best, {cid: F[i].tolist() for i, cid in enumerate(ids)})
