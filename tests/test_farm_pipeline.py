"""The farm's report while a campaign runs: results are journaled as they arrive, report.json is
rewritten on a throttle (here: never, until asked), and GetReport (`coordinator report`) gets a
report with every result the tune has recorded. The campaign is held mid-run by a device runtime
that waits for the test to open a gate (tests/device_runtimes.py), not by sleeping."""
from __future__ import annotations

import json

from coordinator.tuner.state import JOURNAL_NAME, ReportPolicy
from tests.farm_support import Farm, tiny_spec, wait_for
from tests.models import make_classifier


def _recorded(journal_lines: str) -> set[str]:
    return {line["id"] for line in map(json.loads, journal_lines.splitlines()) if line["results"]}


def test_get_report_of_a_running_campaign_has_every_recorded_result(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setenv("QFARM_TEST_GATE", str(gate))
    monkeypatch.setenv("QFARM_TEST_GATE_COUNTER", str(tmp_path / "models-run"))
    monkeypatch.setenv("QFARM_TEST_GATE_FREE", "2")             # the FP32 reference and one candidate
    spec = tiny_spec(tmp_path, make_classifier(tmp_path / "tiny.onnx"), ["cpu"], max_candidates=3)
    with Farm(tmp_path / "farm", agents={"cpu": "tests.device_runtimes:gated"}) as farm:
        farm.server.coordinator.campaigns.report_policy = ReportPolicy(every_s=3600.0, every_changes=10**9)
        with farm.client() as client:
            campaign = client.submit(spec)
            work = farm.data_dir / "coordinator" / "work" / spec.work_key(spec.models[0])
            measured = wait_for(lambda: (work / JOURNAL_NAME).is_file() and _recorded((work / JOURNAL_NAME).read_text()),
                                120, "the first candidate's result in the journal")
            on_disk = json.loads((work / "report.json").read_text())
            assert not any(c["results"] for c in on_disk["candidates"])       # not rewritten per result
            state, files = client.report(campaign, tmp_path / "partial")
            partial = json.loads((tmp_path / "partial" / "report.json").read_text())
            assert state == "running"
            assert {c["id"] for c in partial["candidates"] if c["results"]} >= measured
            assert partial["pareto"]["fronts"] and partial["status"]["state"] == "running"
            gate.touch()
            final = client.wait(campaign, poll_s=0.2, timeout_s=300)
            assert final.state == "done", final.message
            client.report(campaign, tmp_path / "final")
    report = json.loads((tmp_path / "final" / "report.json").read_text())
    assert report["status"]["state"] == "done" and len(report["candidates"]) == 3
    assert all(c["results"]["cpu"]["status"] == "ok" for c in report["candidates"])
    assert (work / JOURNAL_NAME).read_text() == ""               # all of it is in report.json now
