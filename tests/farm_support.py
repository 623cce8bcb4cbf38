"""Test data for the farm tests (the fixture images, tiny campaign specs, report views); the farm
itself comes from the harness shipped with qfarm, coordinator/testing.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from coordinator.farm.spec import CampaignSpec, spec_from_local
from coordinator.testing import (FAST, ROOT, AgentThread, Farm, ManualClock, agent_process, coordinator,
                                 coordinator_process, stop_process, wait_for)
from shared.pb.qfarm.v1 import farm_pb2
from shared.version import PROTOCOL_VERSION

__all__ = ["CURRENT", "FAST", "IMAGES", "ROOT", "AgentThread", "Farm", "ManualClock", "agent_process", "coordinator",
           "coordinator_process", "read_json", "results_per_pair", "stop_process", "tiny_spec", "wait_for"]

IMAGES = ROOT / "tests" / "fixtures" / "imagenet-100"
#: what a hand-made RegisterRequest says it speaks: this build's protocol (others are refused)
CURRENT = farm_pb2.AgentCapabilities(protocol_version=PROTOCOL_VERSION)


def tiny_spec(tmp_path: Path, model: Path | Sequence[Path], devices: list[str], *, max_candidates: int = 3,
              eval_images: int = 16, latency_runs: int = 2, device_timeout_s: float = 120.0,
              name: str = "tiny", allow_slower: bool = False) -> CampaignSpec:
    """A small campaign of one model (or of several: a list of paths, one [[models]] each).
    allow_slower: for tests about something else than whether INT8 of a tiny model pays here."""
    models = [model] if isinstance(model, Path) else list(model)
    raw = {"name": name, "devices": devices, "device_timeout_s": device_timeout_s,
           "models": [{"path": str(m)} for m in models],
           "data": {"images": str(IMAGES), "calibration": 8, "eval": eval_images, "latency_runs": latency_runs},
           "preprocess": {"input_size": 32}, "strategy": {"max_candidates": max_candidates, "allow_slower": allow_slower},
           # a pinned recipe: no recipe probe, so these tests count exactly the sweep's candidates
           "quantization": {"reduce_range": True}}
    return spec_from_local(raw, "test", tmp_path)


def results_per_pair(report: dict) -> dict[tuple[str, str], dict]:
    return {(c["id"], device): r for c in report["candidates"] for device, r in c["results"].items()}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
