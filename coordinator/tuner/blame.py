"""Crash blame: when a candidate crashes on a device class, find the node(s) whose quantization
makes that device crash, by bisection over the candidate's quantized nodes in ranking order.

`g(S)` = "the device crashes when only the nodes in S are quantized (the rest in float)". The
observed crash says g(all quantized nodes) is true; g(nothing) is probed once (a crash with every
node in float is not a quantization problem: nothing is blamed). Then, repeatedly, a binary
search over prefixes of the ranking finds the shortest prefix that crashes; its last node is
blamed and kept in float, until the remaining quantized set no longer crashes. One culprit costs
about log2(n) + 1 probes; the last probe is the retried candidate (blamed nodes excluded), so its
result comes for free. Probes go through a callable, so the same code drives the farm (jobs on one
device class) and local runs. `blame_phase` is the tuner's use of it, after the search."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from coordinator.tuner.run import TuneRun
from shared.results import CrashCause, CrashKind, DeviceResult, ResultStatus
from shared.settings import QuantSettings

log = logging.getLogger(__name__)

MAX_CULPRITS = 8


@dataclass(frozen=True)
class Blame:
    device: str
    candidate_id: str                      # the candidate that crashed
    blamed: tuple[str, ...]                # nodes whose quantization makes the device crash, in blame order
    probes: int                            # candidates measured to find them
    retried_excluded: tuple[str, ...] = ()  # the crashing candidate's exclusions plus the blamed nodes
    retried_result: DeviceResult | None = field(default=None, compare=False)   # its result on the device
    note: str = ""

    def to_report(self) -> dict:
        """The report's entry under blame[<device>]."""
        entry = {"candidate": self.candidate_id, "blamed_nodes": list(self.blamed), "probes": self.probes,
                 "retried_excluded": list(self.retried_excluded)}
        if self.retried_result is not None:
            entry["retried_status"] = self.retried_result.status.value
        if self.note:
            entry["note"] = self.note
        return entry


@dataclass(frozen=True)
class CandidateResults:
    """A measured candidate as blame sees it: its float nodes and its result per device class."""

    id: str
    excluded_nodes: tuple[str, ...]
    results: Mapping[str, DeviceResult]


def find_culprits(quantized: Sequence[str], crashes: Callable[[frozenset[str]], bool],
                  max_culprits: int = MAX_CULPRITS) -> tuple[tuple[str, ...], int, str]:
    """(blamed nodes, probes used, note). `quantized` is in ranking order and is known to crash."""
    probes = 0

    def g(nodes: Sequence[str]) -> bool:
        nonlocal probes
        probes += 1
        return crashes(frozenset(nodes))

    if not quantized:
        return (), 0, "no quantized node to blame"
    if g(()):
        return (), probes, "crashes with every node in float: not caused by quantization"
    remaining = list(quantized)
    blamed: list[str] = []
    while len(blamed) < max_culprits:
        lo, hi = 0, len(remaining)          # g(prefix lo) is false, g(prefix hi) is true
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if g(remaining[:mid]):
                hi = mid
            else:
                lo = mid
        culprit = remaining.pop(hi - 1)
        blamed.append(culprit)
        log.info("blamed %s after %d probes", culprit, probes)
        if not remaining or not g(remaining):
            return tuple(blamed), probes, ""
    return tuple(blamed), probes, f"still crashing after blaming {max_culprits} nodes; gave up"


def blame_candidate(candidate_id: str, device: str, excluded: Sequence[str], quantizable: Sequence[str],
                    ranking: Sequence[str], probe: Callable[[tuple[str, ...]], DeviceResult],
                    max_culprits: int = MAX_CULPRITS) -> Blame:
    """Blame the crash of one candidate on one device class.

    `excluded`: the candidate's float nodes; `quantizable`: every node the settings quantize;
    `ranking`: sensitivity order (most sensitive first: searched first); `probe(excluded)` builds
    the candidate excluding those nodes, measures it on `device` and returns its result."""
    fixed = set(excluded)
    order = [n for n in ranking if n in set(quantizable)] + [n for n in quantizable if n not in set(ranking)]
    quantized = [n for n in dict.fromkeys(order) if n not in fixed]
    results: dict[tuple[str, ...], DeviceResult] = {}

    def exclusions(kept_quantized: frozenset[str]) -> tuple[str, ...]:
        return tuple(sorted(fixed | (set(quantized) - kept_quantized)))

    def crashes(kept_quantized: frozenset[str]) -> bool:
        key = exclusions(kept_quantized)
        if key not in results:
            results[key] = probe(key)
        return not results[key].ok

    blamed, probes, note = find_culprits(quantized, crashes, max_culprits)
    if not blamed:
        return Blame(device, candidate_id, (), probes, note=note)
    retried = tuple(sorted(fixed | set(blamed)))
    return Blame(device, candidate_id, blamed, probes, retried, results.get(retried), note)


def blame_crashes(candidates: Sequence[CandidateResults], devices: Sequence[str], quantizable: Sequence[str],
                  ranking: Sequence[str], probe: Callable[[str, tuple[str, ...]], DeviceResult],
                  max_culprits: int = MAX_CULPRITS) -> dict[str, list[dict]]:
    """The report's `blame` section: per device class, the crashes of `candidates` and the nodes
    blamed for them.

    One bisection per device explains every crashing candidate that quantizes a node already
    blamed there; only the others get their own (most-quantized first). Failures that are not the
    device's (lost leases, failed builds: `DeviceResult.blameable`) are not blamed.
    `probe(device, excluded)` measures the candidate excluding those nodes on that device."""
    out: dict[str, list[dict]] = {}
    for device in devices:
        crashes = [c for c in candidates if device in c.results and c.results[device].blameable]
        blamed_here: set[str] = set()
        entries = []
        for cand in sorted(crashes, key=lambda c: (len(c.excluded_nodes), c.id)):
            quantized = set(quantizable) - set(cand.excluded_nodes)
            explained = sorted(quantized & blamed_here)
            if explained:
                entries.append({"candidate": cand.id, "explained_by": explained})
                continue
            blame = blame_candidate(cand.id, device, cand.excluded_nodes, quantizable, ranking,
                                    lambda excluded: probe(device, excluded), max_culprits)
            blamed_here.update(blame.blamed)
            entries.append(blame.to_report())
        if entries:
            out[device] = entries
    return out


# -- the tuner's phase -------------------------------------------------------------------------
def candidates_to_blame(report: Mapping, settings: QuantSettings) -> list[CandidateResults]:
    """The report's candidates with `settings` (no int16 ladder), as blame sees them. QOperator and
    dynamic models are refused whole by QDQ-only runtimes (TVM): their `unsupported` is not a
    node's fault, so it is left out."""
    current = settings.to_dict()
    node_level = settings.is_static and settings.format == "qdq"
    out = []
    for c in report["candidates"]:
        if c.get("settings", current) != current or c.get("int16_nodes"):
            continue
        results = {d: DeviceResult.from_dict(r) for d, r in c["results"].items()}
        out.append(CandidateResults(c["id"], tuple(c["excluded_nodes"]), {
            d: r for d, r in results.items() if node_level or r.status != ResultStatus.UNSUPPORTED}))
    return out


def blame_phase(run: TuneRun, ranking: list[str]) -> None:
    """For each device class with crashing candidates, bisect (most sensitive nodes first) to the
    nodes whose quantization makes it crash, and measure the candidate without them: the retried
    candidate joins the report like any other, so the front has a working model."""
    from coordinator.quantize import quantizable_nodes

    if not run.config.blame_crashes:
        return
    candidates = candidates_to_blame(run.state.report, run.settings)
    if not any(r.blameable for c in candidates for r in c.results.values()):
        return
    if run.budget_spent():
        run.state.set_section("blame", {"skipped": f"crashes not blamed: {run.budget.stop_reason}"})
        return
    run.events.on_stage("blaming crashes")
    quantizable = quantizable_nodes(run.ws.prepared, run.settings)

    def probe(device: str, excluded: tuple[str, ...]) -> DeviceResult:
        spec = run.spec(excluded)
        if not run.state.complete(spec.id):
            if run.budget_spent():
                return DeviceResult.failure(CrashCause(CrashKind.NOT_MEASURED, run.budget.stop_reason or ""))
            fresh = run.state.entry(spec.id) is None
            run.evaluate([spec])
            if fresh:
                run.state.mark_origin(spec.id, "blame")   # a probe, not a search step
        return run.state.device_result(spec.id, device) or DeviceResult.failure(CrashCause(CrashKind.NOT_MEASURED))

    run.state.set_section("blame", blame_crashes(candidates, run.evaluator.devices, quantizable,
                                                 ranking or quantizable, probe))
