"""bench/load.py, scaled down: Locust's fake agents against a real `coordinator serve` process,
checked for correctness only (never timing): every idle agent stays alive and every heartbeat
succeeds; every dispatched job ends with exactly one result, recorded by the agent that held its
lease. The bench runs in its own process (Locust and gevent stay out of this one)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AGENTS, JOBS, KS = 20, 50, (1, 8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # looked up, never imported: importing Locust monkey-patches this process with gevent (threads,
    # sockets, time), and the tests run after this module would hang on patched threading
    assert importlib.util.find_spec("locust") is not None, \
        "the load bench needs Locust, a test dependency: pip install -e '.[test]'"
    out = tmp_path_factory.mktemp("load")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--agents", str(AGENTS), "--seconds", "3", "--warmup", "1",
         "--k", ",".join(map(str, KS)), "--jobs", str(JOBS), "--json", str(out / "load.json"),
         "--keep", str(out / "work")],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    report = json.loads((out / "load.json").read_text()) if (out / "load.json").is_file() else None
    return proc, report, out


def test_the_bench_runs_and_finds_nothing_wrong(run):
    proc, report, out = run
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert report is not None and report["problems"] == []
    for table in ("(a) 20 idle agents", "(b) dispatch", "(c) coordinator memory", "targets:", "every check passed"):
        assert table in proc.stdout
    log = (out / "work" / "coordinator.log").read_text()
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]


def test_idle_agents_stay_alive_and_every_heartbeat_succeeds(run):
    _, report, _ = run
    idle = report["idle"]
    assert idle["agents"] == AGENTS and idle["connections"] == AGENTS      # one TCP connection each
    assert idle["missing_phase"] == idle["evicted_phase"] == 0
    assert idle["states_at_end"] == {"idle": AGENTS} == idle["store_states_at_end"]
    assert idle["heartbeat"]["calls"] >= AGENTS and idle["heartbeat"]["failures"] == 0
    assert idle["reregistered"] == 0 and idle["errors"] == {}
    assert idle["streams_waiting"] == AGENTS and idle["streams_failed"]["calls"] == 0   # each one's Work stream waits
    assert idle["coordinator_cpu_s"] > 0 and idle["heartbeat"]["p99_ms"] is not None
    probe = idle["probe_heartbeat"]            # one more agent, timed in a process of its own
    assert probe["calls"] >= 1 and probe["failed"] == 0 and probe["p99_ms"] is not None


def test_every_job_is_leased_once_and_has_exactly_one_result(run):
    _, report, _ = run
    assert [(row["k"], row["queue_batch"]) for row in report["dispatch"]] == [(k, b) for b in (JOBS, 1) for k in KS]
    for row in report["dispatch"]:
        store = row["store"]
        assert store["jobs"] == store["done"] == store["results"] == store["results_by_lease_holder"] == JOBS
        assert store["jobs_by_result_count"] == {"1": JOBS} and store["leased_more_than_once"] == 0
        assert row["leased"] == row["accepted"] == JOBS and row["duplicate"] == row["refused"] == 0
        assert row["calls"]["Work (result)"]["calls"] == JOBS and row["calls"]["Work (result)"]["failures"] == 0
        assert row["lease_transactions"] >= JOBS and row["results_per_s"] > 0 and row["cpu_ms_per_job"] > 0


def test_memory_is_sampled_over_the_whole_run(run):
    _, report, _ = run
    memory = report["memory"]
    assert set(memory["phases"]) == {"idle", *(f"dispatch K={k}, {how}" for k in KS
                                               for how in ("queued ahead", "queued 1 per transaction"))}
    assert len(memory["samples"]) >= 5 and 0 < memory["rss_start_mb"] <= memory["rss_peak_mb"]


@pytest.mark.parametrize("value", ["x", "-1", ""])
def test_a_bad_queue_batch_is_named_without_a_traceback(value):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--queue-batch", value],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and f"--queue-batch {value!r}" in proc.stderr
    assert "Traceback" not in proc.stderr
