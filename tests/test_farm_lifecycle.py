"""Graceful lifecycle on real processes: SIGTERM drains an agent (its running job finishes, or is
handed back at once when the drain time runs out), `agent drain` (the Kubernetes preStop hook)
drains without stopping, a rolling replacement of every agent re-runs no job, and a coordinator
stopped with SIGTERM mid-campaign flushes its state and resumes on restart. Leases and evictions
are set far longer than the tests, so nothing here is rescued by a lease running out; every
(candidate, device) must end with exactly one result."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from agent.drain import read_state, wait_drained
from coordinator.farm.client import CampaignClient
from coordinator.farm.scheduler import LeasePolicy
from coordinator.farm.states import JobState
from tests.farm_support import (ROOT, AgentThread, agent_process, coordinator, coordinator_process, read_json,
                                results_per_pair, stop_process, tiny_spec, wait_for)
from tests.models import make_classifier
from tests.test_farm_faults import _job_rows, _measuring

# Leases and evictions outlast every test: a job that is not finished or handed back would hang it.
PATIENT = LeasePolicy(heartbeat_interval_s=0.25, missing_after_s=30.0, evict_after_s=60.0, lease_ttl_s=60.0,
                      max_wait_s=0.5)


def _agent(address: str, work: Path, name: str, *extra: str) -> subprocess.Popen:
    return agent_process("cpu-a", address, work, "--name", name, *extra)


def _serve(data_dir: Path, port: int, port_file: Path, log: Path) -> subprocess.Popen:
    """`coordinator serve` as its own process with PATIENT's timings (later flags win)."""
    p = PATIENT
    return coordinator_process(data_dir, port, port_file, log, "--missing-after", str(p.missing_after_s),
                               "--evict-after", str(p.evict_after_s), "--lease-ttl", str(p.lease_ttl_s),
                               "--shutdown-grace", "5")


def _agent_ids(client: CampaignClient) -> dict[str, str]:
    return {a.name: a.agent_id for a in client.status().agents}


def _log(work: Path) -> str:
    return work.with_suffix(".log").read_text(errors="replace")


def _check_one_result_each(tmp_path: Path, client: CampaignClient, campaign_id: str, data: Path,
                           candidates: int, devices: int = 1) -> dict[str, tuple[int, str]]:
    """The report has one ok result per (candidate, device) and the store one result per job."""
    client.report(campaign_id, tmp_path / "report")
    report = read_json(tmp_path / "report" / "report.json")
    pairs = results_per_pair(report)
    assert len(report["candidates"]) == candidates
    assert len(pairs) == candidates * devices and all(r["status"] == "ok" for r in pairs.values()), pairs
    jobs, results = _job_rows(data)
    assert set(results) == set(jobs) and len(jobs) == (candidates + 1) * devices   # + the FP32 references
    assert all(state == JobState.DONE for state, _ in jobs.values())
    return results


@contextmanager
def _sigterm_mid_job(tmp_path: Path, candidates: int, latency_runs: int,
                     drain_timeout: float) -> Iterator[tuple[CampaignClient, str, dict[str, str], str]]:
    """Agents "victim" and "other" on a campaign; SIGTERM reaches the victim while it measures a
    job. Yields (client, campaign id, agent ids by name, that job's id) once the victim has exited."""
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=candidates, latency_runs=latency_runs)
    with coordinator(tmp_path / "coord", policy=PATIENT) as (server, address), CampaignClient(address) as client:
        victim = _agent(address, tmp_path / "victim", "victim", "--drain-timeout", f"{drain_timeout:g}")
        other = _agent(address, tmp_path / "other", "other")
        try:
            wait_for(lambda: len(client.status().agents) == 2, 60, "both agents to register")
            ids = _agent_ids(client)
            campaign_id = client.submit(spec)
            wait_for(lambda: _measuring(tmp_path / "victim"), 60, "the victim to measure a job", poll=0.005)
            [job_id] = read_state(tmp_path / "victim")["running"]
            victim.send_signal(signal.SIGTERM)
            assert victim.wait(drain_timeout + 15) == 0
            yield client, campaign_id, ids, job_id
        finally:
            stop_process(victim)
            stop_process(other)


def test_sigterm_mid_job_lets_the_job_finish_and_report(tmp_path):
    with _sigterm_mid_job(tmp_path, 3, 5000, drain_timeout=30) as (client, campaign_id, ids, job_id):  # ~1 s jobs
        assert read_state(tmp_path / "victim") | {"pid": 0} == {
            "pid": 0, "agent_id": ids["victim"], "device": "cpu-a", "draining": True, "stopped": True, "running": []}
        final = client.wait(campaign_id, poll_s=0.2, timeout_s=50)
        assert final.state == "done", final.message
        assert {a.name: a.state for a in client.status().agents}["victim"] == "gone"   # deregistered, not evicted
        results = _check_one_result_each(tmp_path, client, campaign_id, tmp_path / "coord", 3)
    assert results[job_id] == (1, ids["victim"])          # finished by the draining agent, first attempt
    log = _log(tmp_path / "victim")
    assert "draining for up to 30 s" in log and "handing back" not in log
    assert all(attempt == 1 for attempt, _ in results.values())                  # nothing measured twice


def test_sigterm_past_the_drain_timeout_hands_the_job_back_at_once(tmp_path):
    with _sigterm_mid_job(tmp_path, 2, 25000, drain_timeout=0.5) as (client, campaign_id, ids, job_id):  # ~5 s jobs
        handed_back = time.monotonic()
        leased_again = wait_for(lambda: next((a for a in client.status().agents if a.name == "other"
                                              and job_id in a.jobs), None), 20, "the job to be re-leased")
        assert time.monotonic() - handed_back < PATIENT.lease_ttl_s / 4     # not a lease expiry
        final = client.wait(campaign_id, poll_s=0.2, timeout_s=60)
        assert final.state == "done", final.message
        results = _check_one_result_each(tmp_path, client, campaign_id, tmp_path / "coord", 2)
    assert leased_again.agent_id == ids["other"]
    assert results[job_id] == (2, ids["other"])
    log = _log(tmp_path / "victim")
    assert "drain timeout (0.5 s): handing back " + job_id in log and "accepted" not in log.split("SIGTERM")[-1]


def test_agent_drain_command_drains_without_stopping_and_cancel_resumes(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=3, latency_runs=3000)
    work = tmp_path / "agent"
    drain = [sys.executable, "-m", "agent.cli", "drain", "--work-dir", str(work)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with coordinator(tmp_path / "coord", policy=PATIENT) as (server, address), CampaignClient(address) as client:
        agent = _agent(address, work, "solo")
        try:
            wait_for(lambda: client.status().agents, 60, "the agent to register")
            campaign_id = client.submit(spec)
            wait_for(lambda: _measuring(work), 60, "a job to be measured", poll=0.005)
            out = subprocess.run([*drain, "--timeout", "30"], capture_output=True, text=True, env=env, timeout=60)
            assert out.returncode == 0 and "drained" in out.stdout, out.stdout + out.stderr
            assert agent.poll() is None                                       # drained, still running
            done = sum(d.done for d in client.status(campaign_id).campaigns[0].devices)
            time.sleep(1.5)                                                   # two lease rounds: it leases nothing
            status = client.status(campaign_id)
            assert sum(d.done for d in status.campaigns[0].devices) == done and status.campaigns[0].state == "running"
            assert [a.jobs for a in status.agents] == [[]]
            cancel = subprocess.run([*drain, "--cancel"], capture_output=True, text=True, env=env, timeout=60)
            assert cancel.returncode == 0
            final = client.wait(campaign_id, poll_s=0.2, timeout_s=60)
            assert final.state == "done", final.message
            started = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(15) == 0 and time.monotonic() - started < 10
        finally:
            stop_process(agent)
        _check_one_result_each(tmp_path, client, campaign_id, tmp_path / "coord", 3)
    missing = subprocess.run([*drain[:-1], str(tmp_path / "nowhere")], capture_output=True, text=True, env=env,
                             timeout=60)
    assert missing.returncode == 2 and "no agent has served" in missing.stderr


def test_rolling_replacement_of_every_agent_loses_and_repeats_nothing(tmp_path):
    """New agents start before old ones drain, as a Deployment's rolling update does."""
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=8, latency_runs=5000)  # jobs of ~1 s
    with coordinator(tmp_path / "coord", policy=PATIENT) as (server, address), CampaignClient(address) as client:
        procs = {name: _agent(address, tmp_path / name, name) for name in ("old1", "old2")}
        try:
            wait_for(lambda: len(client.status().agents) == 2, 60, "the old agents to register")
            campaign_id = client.submit(spec)
            running = lambda: client.status(campaign_id).campaigns[0].state == "running"  # noqa: E731
            mid_job = {}
            for old, new in (("old1", "new1"), ("old2", "new2")):
                procs[new] = _agent(address, tmp_path / new, new)
                wait_for(lambda: new in {a.name for a in client.status().agents}, 60, f"{new} to register")
                # the first old agent is stopped mid-job; the second as soon as it measures or the campaign ends
                mid_job[old] = wait_for(lambda: ("mid-job" if _measuring(tmp_path / old) else None)
                                        or (old == "old2" and not running() and "after the campaign"), 60,
                                        f"{old} to measure a job", poll=0.005)
                procs[old].send_signal(signal.SIGTERM)
                assert procs[old].wait(30) == 0
            assert mid_job["old1"] == "mid-job"
            final = client.wait(campaign_id, poll_s=0.2, timeout_s=60)
            assert final.state == "done", final.message
            by_name = {a.agent_id: a.name for a in client.status().agents}
        finally:
            for proc in procs.values():
                stop_process(proc)
        results = _check_one_result_each(tmp_path, client, campaign_id, tmp_path / "coord", 7)
    assert all(attempt == 1 for attempt, _ in results.values()), results       # no job ran twice
    assert {by_name[agent] for _, agent in results.values()} >= {"old1", "old2"}
    logs = "".join(_log(tmp_path / name) for name in procs)
    assert "not recorded" not in logs and "handing back" not in logs


def test_coordinator_sigterm_mid_campaign_flushes_and_resumes_on_restart(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a", "cpu-b"], max_candidates=4, latency_runs=500)
    data, port_file, log = tmp_path / "coord", tmp_path / "port", tmp_path / "coordinator.log"
    proc = _serve(data, 0, port_file, log)
    try:
        port = int(wait_for(lambda: port_file.is_file() and port_file.read_text().strip(), 60, "the coordinator"))
        address = f"127.0.0.1:{port}"
        with AgentThread("cpu-a", address, tmp_path / "a") as agent_a, \
                AgentThread("cpu-b", address, tmp_path / "b"), CampaignClient(address) as client:
            campaign_id = client.submit(spec)
            results_so_far = lambda: sum(d.done for d in client.status(campaign_id).campaigns[0].devices)  # noqa: E731
            wait_for(lambda: results_so_far() >= 3, 90, "some results before the stop", poll=0.05)
            done_before = results_so_far()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(40) == 0
            stop_seconds = time.monotonic() - started
            text = log.read_text()
            assert "SIGTERM: shutting down" in text and "coordinator stopped" in text
            assert f"campaign {campaign_id} paused by shutdown" in text
            wal = data / "qfarm.sqlite3-wal"
            assert not wal.exists() or wal.stat().st_size == 0                # checkpointed into the database
            proc = _serve(data, port, port_file, log)
            final = client.wait(campaign_id, poll_s=0.2, timeout_s=120)
            assert final.state == "done", final.message
            assert agent_a.counters["registrations"] >= 2
            results = _check_one_result_each(tmp_path, client, campaign_id, data, 4, devices=2)
    finally:
        stop_process(proc)
    assert done_before < len(results) and stop_seconds < 30
    assert all(attempt <= 2 for attempt, _ in results.values())


def test_wait_drained_follows_the_state_file_with_an_injected_clock(tmp_path):
    from agent.drain import write_state

    now = [0.0]
    write_state(tmp_path, {"pid": os.getpid(), "draining": True, "stopped": False, "running": ["j1"]})
    why, state = wait_drained(tmp_path, 5.0, poll=1.0, clock=lambda: now[0],
                              sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert why is None and state["running"] == ["j1"] and now[0] == 5.0
    write_state(tmp_path, {"pid": os.getpid(), "draining": True, "stopped": False, "running": []})
    assert wait_drained(tmp_path, 5.0)[0] == "the agent is drained: it runs no job and leases none"
    write_state(tmp_path, {"pid": 2 ** 22 + 12345, "draining": False, "stopped": False, "running": ["j1"]})
    assert wait_drained(tmp_path, 5.0)[0] == "the agent has stopped"                 # a dead pid
