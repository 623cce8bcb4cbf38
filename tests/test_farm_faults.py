"""Faults on real processes: an agent SIGKILLed mid-job, a coordinator SIGKILLed and restarted on
the same data dir. Every (candidate, device) must end with exactly one result."""
from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from agent.worker import AgentConfig
from coordinator.farm.client import CampaignClient, CoordinatorUnavailable
from coordinator.farm.states import JobState
from coordinator.farm.store import Store
from shared.pb.qfarm.v1 import job_pb2
from tests.farm_support import (AgentThread, agent_process, coordinator, coordinator_process, read_json,
                                results_per_pair, stop_process, tiny_spec, wait_for)
from tests.models import make_classifier


def _measuring(work_dir: Path) -> bool:
    """A job's files are in place and its result is not: the agent's worker is measuring it."""
    return any((d / "request.json").is_file() and not (d / "result.json").exists()
               for d in (work_dir / "jobs").glob("*"))


def _workers(pid: int) -> list[psutil.Process]:
    return [k for k in psutil.Process(pid).children() if "agent.child" in " ".join(k.cmdline())]


def _job_rows(data_dir: Path) -> dict[str, tuple[JobState, int]]:
    store = Store(data_dir)
    try:
        with store.transaction() as c:
            rows = c.execute("SELECT job_id, state, attempt FROM jobs").fetchall()
            results = c.execute("SELECT job_id, attempt, agent_id FROM results").fetchall()
    finally:
        store.close()
    return {r[0]: (JobState(r[1]), r[2]) for r in rows}, {r[0]: (r[1], r[2]) for r in results}


def test_agent_killed_mid_job_has_its_job_rerun_by_another(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=3, latency_runs=1000)  # jobs of ~0.2 s
    with coordinator(tmp_path / "coord") as (server, address), CampaignClient(address) as client:
        work = [tmp_path / "agent1", tmp_path / "agent2"]
        procs = [agent_process("cpu-a", address, w) for w in work]
        names = {AgentConfig(device="cpu-a", coordinator=address, work_dir=w).agent_name(): p
                 for w, p in zip(work, procs)}
        try:
            wait_for(lambda: len(client.status().agents) == 2, 60, "both agents to register")
            campaign_id = client.submit(spec)
            victim = wait_for(lambda: next((p for w, p in zip(work, procs) if _measuring(w)), None),
                              60, "an agent to start measuring a job", poll=0.005)
            [child] = wait_for(lambda: _workers(victim.pid), 10, "the agent's job worker", poll=0.005)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            victim_agent = next(a for a in client.status().agents if names[a.name] is victim)
            assert len(victim_agent.jobs) == 1
            lost_job = victim_agent.jobs[0]
            wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10,
                     "the killed agent's job process to die with it")
            final = client.wait(campaign_id, poll_s=0.2, timeout_s=120)
            assert final.state == "done", final.message
            agents = {a.agent_id: a for a in client.status().agents}
            assert agents[victim_agent.agent_id].state == "evicted"
            client.report(campaign_id, tmp_path / "report")
            stats = client.status().stats
        finally:
            for p in procs:
                stop_process(p)
    report = read_json(tmp_path / "report" / "report.json")
    pairs = results_per_pair(report)
    assert len(report["candidates"]) == 3 and len(pairs) == 3
    assert all(r["status"] == "ok" for r in pairs.values())
    jobs, results = _job_rows(tmp_path / "coord")
    assert set(results) == set(jobs) and len(jobs) == 4               # 3 candidates + FP32 reference
    assert all(state == JobState.DONE for state, _ in jobs.values())
    attempt, by_agent = results[lost_job]
    assert attempt >= 2 and by_agent != victim_agent.agent_id         # re-run by the other agent
    assert stats.results_accepted == 4


def test_coordinator_killed_and_restarted_on_same_data_dir_finishes_the_campaign(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a", "cpu-b"], max_candidates=4)
    data, port_file, log = tmp_path / "coord", tmp_path / "port", tmp_path / "coordinator.log"
    proc = coordinator_process(data, 0, port_file, log)
    try:
        port = int(wait_for(lambda: port_file.is_file() and port_file.read_text().strip(), 60, "the coordinator"))
        address = f"127.0.0.1:{port}"
        with AgentThread("cpu-a", address, tmp_path / "a") as agent_a, \
                AgentThread("cpu-b", address, tmp_path / "b") as agent_b, CampaignClient(address) as client:
            campaign_id = client.submit(spec)
            def done_count() -> int:
                count = sum(d.done for d in client.status(campaign_id).campaigns[0].devices)
                return count if count >= 3 else 0

            done_before = wait_for(done_count, 90, "some results before the crash", poll=0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            with pytest.raises(CoordinatorUnavailable):
                client.status()
            proc = coordinator_process(data, port, port_file, log)
            final = client.wait(campaign_id, poll_s=0.2, timeout_s=120)
            assert final.state == "done", final.message
            assert agent_a.counters["registrations"] >= 2 and agent_b.counters["registrations"] >= 2
            client.report(campaign_id, tmp_path / "report")
    finally:
        stop_process(proc)
    report = read_json(tmp_path / "report" / "report.json")
    pairs = results_per_pair(report)
    assert len(report["candidates"]) == 4 and len(pairs) == 8
    assert all(r["status"] == "ok" for r in pairs.values())
    jobs, results = _job_rows(data)
    assert set(results) == set(jobs) and len(jobs) == 10               # (4 candidates + reference) x 2 classes
    assert all(state == JobState.DONE for state, _ in jobs.values())
    assert done_before < len(jobs)                                     # the crash really was mid-campaign
    store = Store(data)
    try:
        with store.transaction() as c:
            rows = c.results(list(jobs))
    finally:
        store.close()
    for job_id, row in rows.items():
        decoded = job_pb2.DeviceResult.FromString(row.payload)
        assert (decoded.job_id, decoded.attempt) == (job_id, row.attempt)
