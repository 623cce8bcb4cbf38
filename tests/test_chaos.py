"""Exactly-once under faults: a campaign on 4 agent processes (2 device classes) while the test
SIGKILLs a random agent every fraction of a second (10 kills, each agent restarted at once) and
SIGKILLs and restarts the coordinator once. Every (candidate, device) must end with exactly one
recorded result, and the report must equal a fault-free run of the same campaign: same ids,
identical accuracy and size, latency within noise.

Victims come from a seeded RNG among the agents registered since their last start (a kill must
hit a working agent, not one still booting); the harness spares an agent whose job has already
been leased 3 times, so the coordinator's give-up rule (5 leases without a result = crash
`lost:`) cannot turn bad luck into a different report."""
from __future__ import annotations

import dataclasses

import logging
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from coordinator.farm.client import CampaignClient, CoordinatorUnavailable
from coordinator.farm.store import Store
from shared.auth import TOKEN_ENV, Credentials
from shared.pb.qfarm.v1 import job_pb2
from tests.farm_support import (AgentThread, agent_process, coordinator, coordinator_process, read_json,
                                results_per_pair, stop_process, tiny_spec, wait_for)
from tests.models import make_classifier

SEED = 20240605
log = logging.getLogger(__name__)
KILLS = 10
RESTART_COORDINATOR_AT = 5          # after this many agent kills
DEVICES = ["cpu-a", "cpu-b"]
AGENTS = [("agent-a1", "cpu-a"), ("agent-a2", "cpu-a"), ("agent-b1", "cpu-b"), ("agent-b2", "cpu-b")]
CANDIDATES = 8                      # the sweep's cap; the tiny model has fewer quantizable nodes
LATENCY_RUNS = 15000                # ~1 s per job on a tiny model: kills land mid-job
TOKEN = "chaos-test-token-" + "x" * 16
ACCURACY_KEYS = ("status", "top1_agreement", "top5_agreement", "top1_accuracy", "size_bytes", "num_images")


def _serve(data: Path, port: int, port_file: Path, log: Path) -> subprocess.Popen:
    return coordinator_process(data, port, port_file, log, env={TOKEN_ENV: TOKEN})


def _agent(name: str, device: str, address: str, root: Path) -> subprocess.Popen:
    return agent_process(device, address, root / name, "--name", name, env={TOKEN_ENV: TOKEN})


def _farm_view(db: Path) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Read-only from the coordinator's database: agent name -> when its live registration happened,
    and agent name -> the attempts of the jobs it holds now."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        live = conn.execute("SELECT name, MAX(registered_at) FROM agents WHERE state IN ('idle', 'busy') "
                            "GROUP BY name").fetchall()
        leased = conn.execute("SELECT a.name, j.attempt FROM jobs j JOIN agents a ON a.agent_id = j.agent_id "
                              "WHERE j.state = 'leased'").fetchall()
    finally:
        conn.close()
    held: dict[str, list[int]] = {}
    for name, attempt in leased:
        held.setdefault(name, []).append(attempt)
    return dict(live), held


def _state(client: CampaignClient, campaign_id: str) -> tuple[str, int]:
    """(state, results done) of the campaign; ('unreachable', -1) while the coordinator restarts."""
    try:
        [status] = client.status(campaign_id).campaigns
    except CoordinatorUnavailable:
        return "unreachable", -1
    return status.state, sum(d.done for d in status.devices)


def _fault_free_report(tmp_path: Path, spec) -> dict:
    with coordinator(tmp_path / "calm") as (server, address), \
            AgentThread("cpu-a", address, tmp_path / "calm-a"), AgentThread("cpu-b", address, tmp_path / "calm-b"), \
            CampaignClient(address) as client:
        campaign_id = client.submit(spec)
        final = client.wait(campaign_id, poll_s=0.2, timeout_s=180)
        assert final.state == "done", final.message
        client.report(campaign_id, tmp_path / "calm-report")
    return read_json(tmp_path / "calm-report" / "report.json")


def _within_noise(a: float, b: float) -> bool:
    """Latency measured on a loaded machine while agents restart: same value up to a factor of 3."""
    return a > 0 and b > 0 and max(a, b) / min(a, b) < 3


def test_random_agent_kills_and_a_coordinator_restart_lose_and_duplicate_nothing(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    # latency is noisy from run to run: decide on accuracy and size only, so both reports must agree
    spec = dataclasses.replace(tiny_spec(tmp_path, model, DEVICES, max_candidates=CANDIDATES, latency_runs=LATENCY_RUNS),
                               objectives=("accuracy_loss", "size_bytes"), allow_slower=True)
    started = time.monotonic()
    calm = _fault_free_report(tmp_path, spec)
    log.info("fault-free run: %.1f s", time.monotonic() - started)

    rng = random.Random(SEED)
    data, port_file, log_file = tmp_path / "coord", tmp_path / "port", tmp_path / "coordinator.log"
    db = data / "qfarm.sqlite3"
    server = _serve(data, 0, port_file, log_file)
    agents: dict[str, subprocess.Popen] = {}
    kills: list[tuple[str, bool]] = []
    try:
        port = int(wait_for(lambda: port_file.is_file() and port_file.read_text().strip(), 60, "the coordinator"))
        address = f"127.0.0.1:{port}"
        spawned = {name: time.time() for name, _ in AGENTS}
        agents = {name: _agent(name, device, address, tmp_path) for name, device in AGENTS}
        with CampaignClient(address, credentials=Credentials(token=TOKEN)) as client:
            wait_for(lambda: len(client.status().agents) == len(AGENTS), 90, "4 agents to register", poll=0.2)
            campaign_id = client.submit(spec)
            wait_for(lambda: _state(client, campaign_id)[1] >= len(DEVICES), 90, "the FP32 references", poll=0.1)
            restarted = False
            chaos_deadline = time.monotonic() + 120
            while len(kills) < KILLS:
                assert time.monotonic() < chaos_deadline, f"only {len(kills)} kills in 120 s"
                time.sleep(rng.uniform(0.2, 0.6))
                if len(kills) == RESTART_COORDINATOR_AT and not restarted:
                    server.send_signal(signal.SIGKILL)
                    server.wait(10)
                    server = _serve(data, port, port_file, log_file)
                    wait_for(lambda: port_file.is_file(), 60, "the coordinator to come back")
                    restarted = True
                    continue
                live, held = _farm_view(db)
                eligible = sorted(n for n in agents if live.get(n, 0) > spawned[n]   # registered since its start
                                  and all(attempt < 3 for attempt in held.get(n, [])))
                if not eligible:
                    continue
                victim = rng.choice(eligible)
                agents[victim].send_signal(signal.SIGKILL)
                agents[victim].wait(10)
                spawned[victim] = time.time()
                agents[victim] = _agent(victim, dict(AGENTS)[victim], address, tmp_path)
                kills.append((victim, bool(held.get(victim))))
            log.info("chaos over at %.1f s: kills %s", time.monotonic() - started, kills)
            state_after_chaos, done_after_chaos = wait_for(
                lambda: (lambda s: s if s[0] != "unreachable" else None)(_state(client, campaign_id)), 60,
                "the coordinator to answer after the chaos", poll=0.2)
            final = client.wait(campaign_id, poll_s=0.2, timeout_s=240)
            assert final.state == "done", final.message
            log.info("chaos campaign done at %.1f s (%d results when the chaos ended)", time.monotonic() - started,
                     done_after_chaos)
            client.report(campaign_id, tmp_path / "chaos-report")
    finally:
        for proc in agents.values():
            stop_process(proc)
        stop_process(server)

    candidates = len(calm["candidates"])
    total_jobs = (candidates + 1) * len(DEVICES)
    assert candidates >= 5
    assert len(kills) == KILLS and restarted
    assert state_after_chaos == "running" and done_after_chaos < total_jobs, "the chaos ended after the campaign"
    assert sum(mid_job for _, mid_job in kills) >= 3, kills          # the kills really interrupted jobs

    # exactly one recorded result per job, none lost, each the result of an attempt really leased
    store = Store(data)
    try:
        with store.transaction() as c:
            jobs = {r[0]: (r[1], r[2]) for r in c.execute("SELECT job_id, state, attempt FROM jobs")}
            rows = c.results(list(jobs))
            registrations = c.execute("SELECT COUNT(*) FROM agents").fetchone()[0]
    finally:
        store.close()
    assert len(jobs) == total_jobs and set(rows) == set(jobs)
    assert all(state == "done" for state, _ in jobs.values())
    for job_id, row in rows.items():
        decoded = job_pb2.DeviceResult.FromString(row.payload)
        assert (decoded.job_id, decoded.attempt) == (job_id, row.attempt)
        assert 1 <= row.attempt <= jobs[job_id][1] and row.status == "ok", (job_id, row)
    assert any(attempt > 1 for _, attempt in jobs.values())          # some job was re-run after a kill
    assert registrations >= len(AGENTS) + KILLS                      # every restart registered again

    # the report is the fault-free one: same candidates, same accuracy and size, latency within noise
    chaos = read_json(tmp_path / "chaos-report" / "report.json")
    calm_pairs, chaos_pairs = results_per_pair(calm), results_per_pair(chaos)
    assert [c["id"] for c in chaos["candidates"]] == [c["id"] for c in calm["candidates"]]
    assert set(chaos_pairs) == set(calm_pairs) and len(chaos_pairs) == candidates * len(DEVICES)
    for pair, calm_result in calm_pairs.items():
        chaos_result = chaos_pairs[pair]
        assert {k: chaos_result[k] for k in ACCURACY_KEYS} == {k: calm_result[k] for k in ACCURACY_KEYS}, pair
        assert _within_noise(chaos_result["latency_ms_p50"], calm_result["latency_ms_p50"]), pair
    for device in DEVICES:
        assert {k: chaos["fp32"][device][k] for k in ("top1_accuracy", "size_bytes", "num_images")} == \
            {k: calm["fp32"][device][k] for k in ("top1_accuracy", "size_bytes", "num_images")}
    for device in DEVICES:                                            # fronts and recommendation, per device
        assert {k: chaos["pareto"]["per_device"][device][k] for k in ("fronts", "best", "recommended")} == \
            {k: calm["pareto"]["per_device"][device][k] for k in ("fronts", "best", "recommended")}
