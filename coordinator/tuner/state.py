"""The tune's state: report.json, kept as one typed object, plus its journal.

Every change is one line appended to `report.journal.jsonl` beside report.json (a write, no
rewrite: O(1) per result however large the campaign). report.json itself is materialised (whole,
atomically, fsynced) on a throttle (at most every `ReportPolicy.every_s` seconds, or after
`every_changes` changes), at every phase boundary (a new section, the FP32 reference), at the end,
and on request (`materialise()`: GetReport, `coordinator report`); after each materialisation the
journal starts empty again.

The checkpoint is report.json plus its journal: a rerun of the same tune loads report.json,
replays the journal over it (replay is idempotent: each line sets values by key), and skips what
is measured. A process killed with SIGKILL loses nothing it recorded: each journal line is
written (one write call) before `record` returns. A torn last line (killed mid-write) is ignored.

Pareto fronts are recomputed only when a result that can change them arrived (an `ok` result, or
a new FP32 reference), and only when someone needs them: a materialisation, or a read of
`report`. Schema in README.md ("Report schema"): keys are only ever added."""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from coordinator.policy import Policy, comparison, decide_report
from coordinator.quantize import BuiltCandidate, CandidateSpec
from coordinator.report import SCHEMA_VERSION, identity_mismatch, read_report, write_report
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.targets import Targets
from coordinator.tuner.workspace import Workspace
from shared.errors import InvalidArgument, QfarmError
from shared.feeds import num_samples
from shared.results import DeviceResult, ResultStatus
from shared.settings import QuantSettings

log = logging.getLogger(__name__)

JOURNAL_NAME = "report.journal.jsonl"


@dataclass(frozen=True)
class ReportPolicy:
    """When report.json is rewritten whole. `every_s=0` (and `every_changes=1`) rewrites it after
    every change, as qfarm did before the journal (benchmarks compare the two)."""

    every_s: float = 2.0
    every_changes: int = 500

    def __post_init__(self) -> None:
        if not (self.every_s >= 0 and self.every_s < float("inf")) or self.every_changes < 1:
            raise InvalidArgument(f"report policy every_s={self.every_s!r}, every_changes={self.every_changes!r}: "
                                  "need every_s >= 0 (finite) and every_changes >= 1", step="config")

    @property
    def immediate(self) -> bool:
        return self.every_s == 0 or self.every_changes == 1


def journal_path(report_path: Path) -> Path:
    return Path(report_path).with_name(JOURNAL_NAME)


class ReportState:
    """One tune's report; `devices[0]` is the primary device (what strategies and probes look at).
    Thread-safe: the tune's thread changes it while another (GetReport) may materialise it."""

    def __init__(self, path: Path, report: dict[str, Any], devices: tuple[str, ...], objectives: tuple[str, ...],
                 targets: Targets, policy: Policy = Policy(), write_policy: ReportPolicy = ReportPolicy(),
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self._report = report
        self.devices = tuple(devices)
        self.objectives = tuple(objectives)
        self.targets = targets
        self.policy = policy                   # what is recommended (coordinator/policy.py)
        self.write_policy = write_policy       # when report.json is rewritten whole
        self.clock = clock
        self._lock = threading.RLock()
        self._index = {c["id"]: c for c in report["candidates"]}
        self._fronts_dirty = True
        self._pending = 0                      # changes in the journal, not yet in report.json
        self._last_write = clock()
        self._timer: threading.Timer | None = None
        self._closed = False
        self.materialisations = 0              # whole-report writes (tests, benchmarks)
        self._journal = None           # opened with the first change, once report.json is on disk
        self._on_disk = self.path.exists()

    # -- load and save -------------------------------------------------------------------------
    @classmethod
    def open(cls, config: TuneConfig, ws: Workspace, devices: tuple[str, ...],
             write_policy: ReportPolicy = ReportPolicy()) -> "ReportState":
        """The report of this tune: resumed from `config.out` (report.json + journal), or new. A
        report of another tune (different model, settings or data) there is refused, not overwritten."""
        path = config.out / "report.json"
        targets = Targets.from_config(config)
        if path.exists():
            report = read_report(path)
            diff = identity_mismatch(report, ws.identity)
            if diff:
                raise InvalidArgument(f"{path} belongs to another tune (different {', '.join(diff)}); "
                                      "use a new --out directory to start a new one", step="resume")
            replayed = replay_journal(report, journal_path(path))
            log.info("resuming %s (%d journal lines replayed)", path, replayed)
            report["status"] = {**report.get("status", {}), "state": "running"}
        else:
            journal_path(path).unlink(missing_ok=True)   # no report: a journal here belongs to nothing
            report = _new_report(config, ws, devices)
        state = cls(path, report, devices, config.objectives, targets, Policy.from_config(config), write_policy)
        if state._on_disk:
            state.materialise()         # the replayed journal into report.json, an empty journal
        return state                    # a new report is written by its first change (a failed start leaves none)

    @property
    def report(self) -> dict[str, Any]:
        """The whole report, fronts up to date."""
        with self._lock:
            self._refresh_fronts()
            return self._report

    def save(self) -> None:
        """Materialise now (kept for phases that change `report` in place)."""
        self.materialise()

    def materialise(self, if_changed: bool = False) -> None:
        """Write report.json whole (atomically) and start an empty journal; with `if_changed`, only
        when something changed since the last write (readers polling a running tune)."""
        with self._lock:
            if if_changed and not self._pending and not self._fronts_dirty:
                return
            self._cancel_timer()
            self._refresh_fronts()
            write_report(self.path, self._report)
            self._on_disk = True
            if self._journal is not None and not self._journal.closed:
                self._journal.truncate(0)
            elif self._journal is None:     # a resumed tune's replayed journal: in report.json now
                journal_path(self.path).unlink(missing_ok=True)
            self._pending = 0
            self._last_write = self.clock()
            self.materialisations += 1

    def close(self) -> None:
        """Materialise what is pending and release the journal (the end of a tune, or a stop)."""
        with self._lock:
            if self._closed:
                return
            if self._pending:
                self.materialise()
            self._cancel_timer()
            if self._journal is not None:
                self._journal.close()
            self._closed = True

    def set_section(self, key: str, value: Any) -> None:
        """A whole section (ranking, recipe_probe, search, blame): a phase boundary, materialised."""
        self.set_sections({key: value})

    def set_sections(self, sections: Mapping[str, Any]) -> None:
        with self._lock:
            self._report.update(sections)
            self.materialise()

    # -- the FP32 reference --------------------------------------------------------------------
    def set_fp32(self, results: Mapping[str, DeviceResult]) -> None:
        with self._lock:
            self._fronts_dirty = True      # targets compare against the FP32 top-1
            self.set_section("fp32", {device: result.to_fp32_report() for device, result in results.items()})

    def fp32_top1(self, device: str) -> float | None:
        return self._report["fp32"].get(device, {}).get("top1_accuracy")

    # -- candidates and results ----------------------------------------------------------------
    def entry(self, cid: str) -> dict | None:
        return self._index.get(cid)

    def result(self, cid: str, device: str) -> dict | None:
        """The report entry of a candidate's result on a device (with the candidate's size)."""
        entry = self.entry(cid)
        if entry is None or device not in entry["results"]:
            return None
        return {**entry["results"][device], "size_bytes": entry["size_bytes"]}

    def device_result(self, cid: str, device: str) -> DeviceResult | None:
        entry = self.entry(cid)
        found = None if entry is None else entry["results"].get(device)
        return None if found is None else DeviceResult.from_dict(found)

    def complete(self, cid: str) -> bool:
        entry = self.entry(cid)
        return entry is not None and all(d in entry["results"] for d in self.devices)

    def add_built(self, cand: BuiltCandidate, out: Path) -> None:
        self._change(cand.id, {**_spec_fields(cand.spec), "size_bytes": cand.size_bytes, "sha256": cand.sha256,
                               "path": str(cand.path.relative_to(out))})

    def mark_origin(self, cid: str, origin: str) -> None:
        """Why a candidate was measured, when not by the search (e.g. "blame")."""
        if self.entry(cid) is not None:
            self._change(cid, {"origin": origin})

    def record_build_failure(self, spec: CandidateSpec, result: DeviceResult) -> None:
        fields = {} if self.entry(spec.id) is not None else {**_spec_fields(spec), "size_bytes": 0}
        self._change(spec.id, fields, {device: result.to_report() for device in self.devices})

    def record(self, cid: str, device: str, result: DeviceResult) -> bool:
        """Keep a result (journaled at once, report.json on the throttle); True if the candidate
        had none on that device."""
        entry = self.entry(cid)
        if entry is None:
            raise QfarmError(f"result for unknown candidate {cid}", step="tune")
        fresh = device not in entry["results"]
        self._change(cid, {}, {device: result.to_report()})
        return fresh

    def _change(self, cid: str, fields: Mapping[str, Any], results: Mapping[str, Mapping] | None = None) -> None:
        line = {"id": cid, "set": dict(fields), "results": dict(results or {})}
        with self._lock:
            if self._closed:
                raise QfarmError(f"report {self.path} is closed", step="tune")
            if self._changes_fronts(self._index.get(cid), fields, line["results"]):
                self._fronts_dirty = True
            _apply(self._report, self._index, line)
            if not self._on_disk:       # the journal only ever follows a report.json of this tune
                self.materialise()
                return
            if self._journal is None:
                self._journal = open(journal_path(self.path), "a", encoding="utf-8")
            self._journal.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._journal.flush()
            self._pending += 1
            if self.write_policy.immediate or self._pending >= self.write_policy.every_changes or \
                    self.clock() - self._last_write >= self.write_policy.every_s:
                self.materialise()
            elif self._timer is None:
                self._timer = threading.Timer(max(0.0, self._last_write + self.write_policy.every_s - self.clock()),
                                              self._on_timer)
                self._timer.daemon = True
                self._timer.start()

    @staticmethod
    def _changes_fronts(before: dict | None, fields: Mapping[str, Any], results: Mapping[str, Mapping]) -> bool:
        """Only `ok` results are on a front: a new or replaced ok result, an ok result replaced by
        a crash, or a new size for a measured candidate can move the fronts; anything else cannot."""
        old = {} if before is None else before["results"]
        if any(r.get("status") == ResultStatus.OK.value or old.get(d, {}).get("status") == ResultStatus.OK.value
               for d, r in results.items()):
            return True
        return "size_bytes" in fields and bool(old)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending and not self._closed:
                try:
                    self.materialise()
                except OSError:   # the next change or the end retries; the journal holds everything
                    log.exception("could not write %s", self.path)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- views ---------------------------------------------------------------------------------
    def history(self, settings: QuantSettings, device: str | None = None) -> dict[tuple[str, ...], dict]:
        """Results on `device` (default: the primary) by exclusion set, as strategies see them (plain
        exclusions with `settings`, no int16 ladder)."""
        device = device or self.devices[0]
        current = settings.to_dict()
        return {tuple(c["excluded_nodes"]): {**c["results"][device], "size_bytes": c["size_bytes"]}
                for c in self._report["candidates"]
                if device in c["results"] and not c.get("int16_nodes") and c.get("settings", current) == current}

    def meets_target(self, result: Mapping, device: str | None = None) -> bool:
        return self.targets.meets(result, self.fp32_top1(device or self.devices[0]))

    # -- fronts and the end --------------------------------------------------------------------
    def _refresh_fronts(self) -> None:
        if self._fronts_dirty:
            self.update_fronts()

    def update_fronts(self) -> None:
        """Fronts, recommendation and policy per device (coordinator/policy.py), and the comparison
        between device classes when there are several."""
        with self._lock:
            self._report["pareto"] = decide_report(self._report, self.devices, self.objectives, self.targets,
                                                   self.policy)
            compared = comparison(self._report, self.devices)
            if compared is not None:
                self._report["comparison"] = compared
            self._fronts_dirty = False

    def finish(self, evaluations: int, resumed: int, elapsed: float, stopped_by: str | None) -> None:
        with self._lock:
            self._fronts_dirty = True
            self._report["status"] = {"state": "done", "evaluations": evaluations, "resumed": resumed,
                                      "elapsed_seconds": round(elapsed, 2), "stopped_by": stopped_by}
            self.materialise()


def _apply(report: dict, index: dict[str, dict], line: Mapping[str, Any]) -> None:
    """One journal line onto the report: set the entry's fields, then its results per device."""
    entry = index.get(line["id"])
    if entry is None:
        entry = {"id": line["id"], "results": {}}
        report["candidates"].append(entry)
        index[line["id"]] = entry
    entry.update(line.get("set", {}))
    entry["results"].update(line.get("results", {}))


def replay_journal(report: dict, path: Path) -> int:
    """Apply the journal's lines to `report` (loaded from report.json); returns how many. A last
    line cut short by a kill is ignored (it was never acknowledged)."""
    if not path.is_file():
        return 0
    index = {c["id"]: c for c in report["candidates"]}
    count = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().split("\n")
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if not isinstance(line, dict) or not isinstance(line.get("id"), str):
                raise ValueError("not a journal line")
        except ValueError:
            if number >= len(lines) - 1:          # the last line, torn by a kill mid-write
                log.warning("ignoring a torn last line of %s", path)
                break
            raise QfarmError(f"{path} line {number} is not a journal line; move it away to resume from "
                             "report.json alone", step="resume") from None
        _apply(report, index, line)
        count += 1
    return count


def read_checkpoint(out: Path) -> dict[str, Any]:
    """A tune's report as a resume would see it (report.json plus its journal), without the
    fronts: for readers of a tune that may be running or killed (tests, tools)."""
    report = read_report(Path(out) / "report.json")
    replay_journal(report, journal_path(Path(out) / "report.json"))
    return report


def _spec_fields(spec: CandidateSpec) -> dict[str, Any]:
    return {"settings": spec.settings.to_dict(), "excluded_nodes": list(spec.excluded_nodes),
            "num_excluded": len(spec.excluded_nodes), "int16_nodes": list(spec.int16_nodes)}


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _new_report(config: TuneConfig, ws: Workspace, devices: tuple[str, ...]) -> dict[str, Any]:
    cfg = config
    return {
        "schema_version": SCHEMA_VERSION,
        "identity": ws.identity,
        "model": {"path": str(cfg.model), "sha256": ws.prepared.sha256, "size_bytes": ws.prepared.size_bytes,
                  "nodes": ws.prepared.num_nodes, "input_name": ws.prepared.input_name,
                  "input_shape": list(ws.prepared.input_shape), "prepared_path": str(ws.prepared.path),
                  **ws.prepared.model_dict()},
        "settings": {**cfg.settings.to_dict(), "strategy": cfg.strategy, "seed": cfg.seed,
                     "max_candidates": cfg.max_candidates, "ranking_method": cfg.ranking_method,
                     "objectives": list(cfg.objectives), "excludes": list(cfg.excludes)},
        "data": {"images": _path(cfg.images), "calibration_images": _path(cfg.calibration_images),
                 "tensors": _path(cfg.data), "calibration_tensors": _path(cfg.calibration_data),
                 "labels": cfg.labels if cfg.images is not None else "none",
                 "calibration": num_samples(ws.calibration) if ws.calibration is not None else 0,
                 "eval": ws.eval_inputs.num_samples,
                 "preprocess": cfg.preprocess.to_dict() if cfg.images is not None else None, "task": cfg.task,
                 "metric": cfg.metric, "data_layout": ws.layout if cfg.data is not None else None},
        "devices": list(devices),
        "ranking": [],
        "candidates": [],
        "fp32": {},
        "pareto": {},
        "status": {"state": "running"},
    }
