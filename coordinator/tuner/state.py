"""The tune's state: report.json, kept as one typed object. It is the checkpoint too: written
(atomically) after every change, loaded again by a rerun of the same tune, which then skips what
is already measured. Schema in README.md ("Report schema"): keys are only ever added."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from coordinator.policy import Policy, comparison, decide_report
from coordinator.quantize import BuiltCandidate, CandidateSpec
from coordinator.report import SCHEMA_VERSION, identity_mismatch, read_report, write_report
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.targets import Targets
from coordinator.tuner.workspace import Workspace
from shared.errors import InvalidArgument, QfarmError
from shared.feeds import num_samples
from shared.results import DeviceResult
from shared.settings import QuantSettings

log = logging.getLogger(__name__)


class ReportState:
    """One tune's report; `devices[0]` is the primary device (what strategies and probes look at)."""

    def __init__(self, path: Path, report: dict[str, Any], devices: tuple[str, ...], objectives: tuple[str, ...],
                 targets: Targets, policy: Policy = Policy()):
        self.path = Path(path)
        self.report = report
        self.devices = tuple(devices)
        self.objectives = tuple(objectives)
        self.targets = targets
        self.policy = policy

    # -- load and save -------------------------------------------------------------------------
    @classmethod
    def open(cls, config: TuneConfig, ws: Workspace, devices: tuple[str, ...]) -> "ReportState":
        """The report of this tune: resumed from `config.out`, or new. A report of another tune
        (different model, settings or data) there is refused, not overwritten."""
        path = config.out / "report.json"
        targets = Targets.from_config(config)
        if path.exists():
            report = read_report(path)
            diff = identity_mismatch(report, ws.identity)
            if diff:
                raise InvalidArgument(f"{path} belongs to another tune (different {', '.join(diff)}); "
                                      "use a new --out directory to start a new one", step="resume")
            log.info("resuming %s", path)
            report["status"] = {**report.get("status", {}), "state": "running"}
        else:
            report = _new_report(config, ws, devices)
        return cls(path, report, devices, config.objectives, targets, Policy.from_config(config))

    def save(self) -> None:
        write_report(self.path, self.report)

    def set_section(self, key: str, value: Any) -> None:
        """A whole section (ranking, recipe_probe, search, blame), saved at once."""
        self.report[key] = value
        self.save()

    # -- the FP32 reference --------------------------------------------------------------------
    def set_fp32(self, results: Mapping[str, DeviceResult]) -> None:
        self.set_section("fp32", {device: result.to_fp32_report() for device, result in results.items()})

    def fp32_top1(self, device: str) -> float | None:
        return self.report["fp32"].get(device, {}).get("top1_accuracy")

    # -- candidates and results ----------------------------------------------------------------
    def entry(self, cid: str) -> dict | None:
        return next((c for c in self.report["candidates"] if c["id"] == cid), None)

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
        entry = self.entry(cand.id)
        if entry is None:
            entry = {"id": cand.id, "results": {}}
            self.report["candidates"].append(entry)
        entry.update({**_spec_fields(cand.spec), "size_bytes": cand.size_bytes, "sha256": cand.sha256,
                      "path": str(cand.path.relative_to(out))})
        self.save()

    def mark_origin(self, cid: str, origin: str) -> None:
        """Why a candidate was measured, when not by the search (e.g. "blame")."""
        entry = self.entry(cid)
        if entry is not None:
            entry["origin"] = origin

    def record_build_failure(self, spec: CandidateSpec, result: DeviceResult) -> None:
        entry = self.entry(spec.id)
        if entry is None:
            entry = {"id": spec.id, **_spec_fields(spec), "size_bytes": 0, "results": {}}
            self.report["candidates"].append(entry)
        for device in self.devices:
            entry["results"][device] = result.to_report()
        self.save()

    def record(self, cid: str, device: str, result: DeviceResult) -> bool:
        """Keep a result (fronts updated, saved); True if the candidate had none on that device."""
        entry = self.entry(cid)
        if entry is None:
            raise QfarmError(f"result for unknown candidate {cid}", step="tune")
        fresh = device not in entry["results"]
        entry["results"][device] = result.to_report()
        self.update_fronts()
        self.save()
        return fresh

    # -- views ---------------------------------------------------------------------------------
    def history(self, settings: QuantSettings, device: str | None = None) -> dict[tuple[str, ...], dict]:
        """Results on `device` (default: the primary) by exclusion set, as strategies see them (plain
        exclusions with `settings`, no int16 ladder)."""
        device = device or self.devices[0]
        current = settings.to_dict()
        return {tuple(c["excluded_nodes"]): {**c["results"][device], "size_bytes": c["size_bytes"]}
                for c in self.report["candidates"]
                if device in c["results"] and not c.get("int16_nodes") and c.get("settings", current) == current}

    def meets_target(self, result: Mapping, device: str | None = None) -> bool:
        return self.targets.meets(result, self.fp32_top1(device or self.devices[0]))

    # -- fronts and the end --------------------------------------------------------------------
    def update_fronts(self) -> None:
        """Fronts, recommendation and policy per device (coordinator/policy.py), and the comparison
        between device classes when there are several."""
        self.report["pareto"] = decide_report(self.report, self.devices, self.objectives, self.targets, self.policy)
        compared = comparison(self.report, self.devices)
        if compared is not None:
            self.report["comparison"] = compared

    def finish(self, evaluations: int, resumed: int, elapsed: float, stopped_by: str | None) -> None:
        self.update_fronts()
        self.report["status"] = {"state": "done", "evaluations": evaluations, "resumed": resumed,
                                 "elapsed_seconds": round(elapsed, 2), "stopped_by": stopped_by}
        self.save()


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
                 "metric": cfg.metric},
        "devices": list(devices),
        "ranking": [],
        "candidates": [],
        "fp32": {},
        "pareto": {},
        "status": {"state": "running"},
    }
