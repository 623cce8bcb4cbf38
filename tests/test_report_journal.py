"""The tune's report state (coordinator/tuner/state.py): one journal line per result instead of
a whole report.json per result, report.json on a throttle and on request, resume by replaying the
journal, and Pareto fronts recomputed only when a result can change them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coordinator.evaluators import EvalInputs
from coordinator.prepare import ModelInput, PreparedModel
from coordinator.quantize import BuiltCandidate, CandidateSpec
from coordinator.tuner import state as state_mod
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.state import JOURNAL_NAME, ReportPolicy, ReportState, read_checkpoint
from coordinator.tuner.workspace import Workspace
from shared.errors import QfarmError
from shared.results import CrashCause, CrashKind, DeviceResult, ResultStatus
from shared.settings import QuantSettings
from tests.farm_support import wait_for

NEVER = ReportPolicy(every_s=3600.0, every_changes=10**9)


def _workspace() -> Workspace:
    prepared = PreparedModel(Path("model.onnx"), Path("prepared.onnx"), "ab" * 32, 1000,
                             (ModelInput("input", (None, 3, 8, 8), "float32"),), (ModelInput("logits", (None, 10), "float32"),),
                             tuple(f"n{i}" for i in range(32)), ("Conv",) * 32)
    inputs = EvalInputs({"input": np.zeros((4, 3, 8, 8), np.float32)}, None, 1)
    return Workspace(prepared, None, inputs, "cal", {"model_sha256": "ab" * 32}, ())


def _open(out: Path, policy: ReportPolicy = NEVER, devices=("cpu",)) -> ReportState:
    config = TuneConfig(model=Path("model.onnx"), images=Path("images"), out=out)
    out.mkdir(parents=True, exist_ok=True)
    return ReportState.open(config, _workspace(), devices, policy)


def _candidate(out: Path, k: int, size: int) -> BuiltCandidate:
    spec = CandidateSpec("ab" * 32, QuantSettings(), tuple(f"n{i}" for i in range(k)))
    return BuiltCandidate(spec, out / "candidates" / f"{spec.id}.onnx", "cd" * 32, size)


def _ok(agreement: float) -> DeviceResult:
    return DeviceResult(ResultStatus.OK, top1_agreement=agreement, top5_agreement=1.0, latency_ms_p50=1.0,
                        latency_ms_p90=1.0, num_images=4)


def _fill(state: ReportState, out: Path, count: int) -> list[str]:
    ids = []
    for k in range(count):
        cand = _candidate(out, k, 1000 - k)
        state.add_built(cand, out)
        state.record(cand.id, "cpu", _ok(0.5 + k / (2 * count)))
        ids.append(cand.id)
    return ids


def test_results_are_journaled_not_rewritten(tmp_path):
    out = tmp_path / "out"
    state = _open(out)
    assert not (out / "report.json").exists()                 # a tune that fails before any result leaves none
    ids = _fill(state, out, 8)
    assert state.materialisations == 1                        # the first change, then nothing per result
    [first] = json.loads((out / "report.json").read_text())["candidates"]
    assert first["id"] == ids[0] and first["results"] == {}
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    assert len(lines) == 15 and all(json.loads(line)["id"] in ids for line in lines)
    # what a resume (or a reader of a killed tune) sees: everything recorded so far
    checkpoint = read_checkpoint(out)
    assert [c["id"] for c in checkpoint["candidates"]] == ids
    assert all(c["results"]["cpu"]["status"] == "ok" for c in checkpoint["candidates"])
    state.materialise()                                       # on request: whole, and the journal starts over
    on_disk = json.loads((out / "report.json").read_text())
    assert [c["id"] for c in on_disk["candidates"]] == ids and on_disk["pareto"]["fronts"]
    assert (out / JOURNAL_NAME).read_text() == ""
    state.close()


def test_report_json_follows_a_throttle(tmp_path):
    out = tmp_path / "out"
    state = _open(out, ReportPolicy(every_s=3600.0, every_changes=10))
    _fill(state, out, 12)                                     # 24 changes: written by the 1st, 11th and 21st
    assert state.materialisations == 3
    assert len(json.loads((out / "report.json").read_text())["candidates"]) == 11
    state.close()                                             # the end writes what is pending
    assert len(json.loads((out / "report.json").read_text())["candidates"]) == 12
    assert (out / JOURNAL_NAME).read_text() == ""

    timed = _open(tmp_path / "timed", ReportPolicy(every_s=0.2, every_changes=10**9))
    _fill(timed, tmp_path / "timed", 1)                       # no further change: the timer writes it
    wait_for(lambda: json.loads((tmp_path / "timed" / "report.json").read_text())["candidates"], 30,
             "report.json written by the throttle's timer")
    timed.close()


def test_resume_replays_the_journal_and_ignores_a_torn_last_line(tmp_path):
    out = tmp_path / "out"
    state = _open(out)
    ids = _fill(state, out, 5)
    state.record(ids[0], "cpu", DeviceResult.failure(CrashCause(CrashKind.OOM)))     # a later result replaces one
    del state                                                 # no close: as after kill -9
    with open(out / JOURNAL_NAME, "a") as fh:
        fh.write('{"id": "torn-by-a-kil')
    resumed = _open(out)
    report = resumed.report
    assert [c["id"] for c in report["candidates"]] == ids
    assert report["candidates"][0]["results"]["cpu"]["crash_cause"] == "oom"
    assert resumed.complete(ids[4]) and report["pareto"]["fronts"]
    assert not (out / JOURNAL_NAME).exists()                  # replayed into report.json at the open
    resumed.close()

    with open(out / JOURNAL_NAME, "a") as fh:                 # a bad line that is not the last: refused, by line
        fh.write("not json\n" + json.dumps({"id": ids[1], "set": {}, "results": {}}) + "\n")
    with pytest.raises(QfarmError, match="line 1 is not a journal line"):
        _open(out)


def test_fronts_are_recomputed_only_when_a_result_can_change_them(tmp_path, monkeypatch):
    calls = []
    decide_report = state_mod.decide_report
    monkeypatch.setattr(state_mod, "decide_report", lambda report, *args: calls.append(len(report["candidates"])) or
                        decide_report(report, *args))
    out = tmp_path / "out"
    state = _open(out)
    state.add_built(_candidate(out, 20, 10), out)             # the first change writes report.json (empty fronts)
    calls.clear()
    ids = _fill(state, out, 6)
    assert calls == []                                        # six ok results, no sort yet: nobody asked
    first = state.report["pareto"]
    assert len(calls) == 1 and state.report["pareto"] is first and len(calls) == 1
    crashed = _candidate(out, 7, 10)
    state.add_built(crashed, out)
    state.record(crashed.id, "cpu", DeviceResult.failure(CrashCause(CrashKind.SIGNAL, "SIGSEGV")))
    assert state.report["pareto"] is first and len(calls) == 1   # a crash is on no front
    state.record(ids[2], "cpu", _ok(0.99))                    # a better result moves them
    fronts = state.report["pareto"]
    assert len(calls) == 2
    expected = decide_report(state.report, state.devices, state.objectives, state.targets, state.policy)
    assert fronts["fronts"] == expected["fronts"] and fronts["best"] == expected["best"]
    state.close()
