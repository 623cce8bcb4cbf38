"""Campaigns end to end on a real coordinator (loopback, port 0) with real agents on threads that
measure in child processes: 2 device classes x 2 agents, cached resubmission, a device class
nobody serves."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.farm.client import CampaignClient
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.farm_support import AgentThread, coordinator, read_json, results_per_pair, tiny_spec
from tests.models import make_classifier

DEVICES = ["cpu-a", "cpu-b"]


def test_two_classes_two_agents_each_then_identical_resubmission_reuses_results(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, DEVICES, max_candidates=3)
    with coordinator(tmp_path / "coord") as (server, address), \
            AgentThread("cpu-a", address, tmp_path / "a1") as a1, AgentThread("cpu-a", address, tmp_path / "a2") as a2, \
            AgentThread("cpu-b", address, tmp_path / "b1") as b1, AgentThread("cpu-b", address, tmp_path / "b2") as b2, \
            CampaignClient(address) as client:
        agents = [a1, a2, b1, b2]
        first_id = client.submit(spec)
        final = client.wait(first_id, poll_s=0.2, timeout_s=120)
        assert final.state == "done", final.message
        assert {(d.device, d.total, d.done) for d in final.devices} == {("cpu-a", 4, 4), ("cpu-b", 4, 4)}
        state, files = client.report(first_id, tmp_path / "report1")
        assert state == "done"
        assert sorted(p.name for p in files) == ["layers.png", "objectives-cpu-a.png", "objectives-cpu-b.png",
                                                 "report.json"]
        report = read_json(tmp_path / "report1" / "report.json")
        assert report["devices"] == DEVICES
        assert len(report["candidates"]) == 3
        pairs = results_per_pair(report)
        assert len(pairs) == 3 * 2
        assert all(r["status"] == "ok" and 0.0 <= r["top1_agreement"] <= 1.0 for r in pairs.values())
        assert all(r["runtime"]["runtime"] == "onnxruntime" for r in pairs.values())
        assert set(report["fp32"]) == set(DEVICES)
        assert set(report["pareto"]["per_device"]) == set(DEVICES)
        jobs_run = sum(a.counters["jobs_run"] for a in agents)
        assert jobs_run == 4 * 2                                      # 3 candidates + 1 FP32 reference per class
        for device, pair in (("cpu-a", (a1, a2)), ("cpu-b", (b1, b2))):
            assert sum(a.counters["jobs_run"] for a in pair) == 4, device
        stats = client.status().stats
        assert stats.results_accepted == 8 and stats.results_duplicate == 0
        fetched = sum(a.counters["bytes_fetched"] for a in agents)

        second_id = client.submit(spec)                               # identical campaign
        assert second_id != first_id
        again = client.wait(second_id, poll_s=0.2, timeout_s=60)
        assert again.state == "done", again.message
        client.report(second_id, tmp_path / "report2")
        report2 = read_json(tmp_path / "report2" / "report.json")
        assert results_per_pair(report2) == pairs                     # the very same measurements
        assert sum(a.counters["jobs_run"] for a in agents) == jobs_run  # nothing re-evaluated
        assert sum(a.counters["bytes_fetched"] for a in agents) == fetched
        stats2 = client.status().stats
        assert stats2.results_accepted == 8
        assert stats2.job_bytes_sent == stats.job_bytes_sent


def test_device_class_without_agents_waits_visibly_then_fails_with_reason(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a", "mali-g68"], max_candidates=1, device_timeout_s=2.0)
    messages = []
    with coordinator(tmp_path / "coord") as (server, address), AgentThread("cpu-a", address, tmp_path / "a1"), \
            CampaignClient(address) as client:
        cid = client.submit(spec)
        final = client.wait(cid, poll_s=0.1, timeout_s=60, on_update=lambda s: messages.append(s.message))
    assert final.state == "failed"
    assert "no agent of device class 'mali-g68'" in final.message and "2 s" in final.message
    assert any("waiting for an agent of device class 'mali-g68'" in m for m in messages)


def test_submit_refuses_bad_specs_and_missing_uploads(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a"])
    with coordinator(tmp_path / "coord") as (server, address), CampaignClient(address) as client:
        from shared.pb.qfarm.v1 import farm_pb2

        with pytest.raises(FailedPrecondition, match="not uploaded"):
            client._call(client._stub.SubmitCampaign, farm_pb2.SubmitCampaignRequest(spec_json=spec.wire_json()))
        with pytest.raises(InvalidArgument, match=r"devices.*'bad key!'"):
            client._call(client._stub.SubmitCampaign, farm_pb2.SubmitCampaignRequest(
                spec_json=spec.wire_json().replace('"cpu-a"', '"bad key!"')))
        with pytest.raises(NotFound, match="nope"):
            client.status("nope")
        assert client.status().campaigns == []
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "qfarm.v1.AgentService", "qfarm.v1.CampaignService"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_coordinator_tune_with_coordinator_runs_the_tune_on_the_farm(tmp_path, capsys):
    from coordinator.cli import main as coordinator_main
    from tests.farm_support import IMAGES

    model = make_classifier(tmp_path / "tiny.onnx")
    out = tmp_path / "out"
    with coordinator(tmp_path / "coord") as (server, address), AgentThread("cpu-a", address, tmp_path / "a1"):
        code = coordinator_main(["tune", str(model), "--images", str(IMAGES), "--out", str(out), "--input-size", "32",
                                 "--calibration", "8", "--eval", "12", "--max-candidates", "2", "--latency-runs", "2",
                                 "--reduce-range", "--coordinator", address, "--devices", "cpu-a"])
    assert code == 0
    report = read_json(out / "report.json")
    assert report["devices"] == ["cpu-a"] and len(report["candidates"]) == 2
    assert all(c["results"]["cpu-a"]["status"] == "ok" for c in report["candidates"])
    assert report["data"]["eval"] == 12
    assert (out / "objectives-cpu-a.png").is_file()
    printed = capsys.readouterr().out
    assert f"cpu-a: recommended: {report['pareto']['recommended'] or 'none'}" in printed
    assert "search ended: strategy finished" in printed
