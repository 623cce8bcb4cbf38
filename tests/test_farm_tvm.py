"""TVM agents in the farm, with real components and no phone: a real coordinator, an ORT agent for
cpu-x86, `agent register --runtime tvm` as its own process with the tracker it starts, and
`python -m tvm.exec.rpc_server` processes as the phones of key mali-g68."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from agent.cli import main as agent_main
from agent.runners.tvm_health import HEALTH_FILE, DeviceHealth
from agent.tvm_tracker import TrackerAddress, TvmTracker, free_port
from coordinator.farm.client import CampaignClient
from coordinator.farm.commands import runtime_text, slots_text
from coordinator.farm.spec import CampaignSpec, spec_from_local
from coordinator.farm.store import Store
from tests.farm_support import IMAGES, ROOT, AgentThread, coordinator, read_json, stop_process, wait_for
from tests.models import make_classifier

tvm = pytest.importorskip("tvm", reason="the TVM extra is not installed (pip install '.[tvm]')")

KEY = "mali-g68"
LLVM = '{"kind":"llvm"}'


def spec(tmp_path: Path, model: Path, name: str, fmt: str, max_candidates: int) -> CampaignSpec:
    raw = {"name": name, "devices": ["cpu-x86", KEY], "device_timeout_s": 120, "models": [{"path": str(model)}],
           "data": {"images": str(IMAGES), "calibration": 8, "eval": 16, "latency_runs": 2},
           "preprocess": {"input_size": 32}, "quantization": {"format": fmt, "reduce_range": True},
           "strategy": {"max_candidates": max_candidates}}
    return spec_from_local(raw, "test", tmp_path)


def tvm_agent(address: str, work_dir: Path) -> subprocess.Popen:
    """`agent register --runtime tvm` starting its own tracker on a free port; a dropped session is
    retried after 3 s, longer than the lease TTL (2.5 s): only heartbeats keep the lease."""
    work_dir.mkdir(parents=True, exist_ok=True)
    log = open(work_dir.with_suffix(".log"), "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "register", "--device", KEY, "--runtime", "tvm", "--target", LLVM,
         "--tracker-port", "0", "--coordinator", address, "--work-dir", str(work_dir), "--chunk", "4",
         "--runtime-option", "retries=2", "--runtime-option", "backoff=3"],
        stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def phone(tracker: str) -> subprocess.Popen:
    port = free_port()
    return subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", tracker, "--key", KEY, "--host", "127.0.0.1",
         "--port", str(port), "--port-end", str(port + 1), "--silent"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_group(proc: subprocess.Popen) -> None:
    """The phone's server, its worker and any session process."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(10)


def descendants(proc: subprocess.Popen) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def serving_phone(phones: list[subprocess.Popen], idle: list[set[int]]) -> int | None:
    """The phone with a session process (the RPC server forks one per session), if any."""
    return next((i for i, p in enumerate(phones) if descendants(p) - idle[i]), None)


def job_attempts(data_dir: Path, device: str) -> dict[str, tuple[str, int]]:
    store = Store(data_dir)
    try:
        with store.transaction() as c:
            rows = c.execute("SELECT job_id, state, attempt FROM jobs WHERE device = ?", (device,)).fetchall()
    finally:
        store.close()
    return {job_id: (state, attempt) for job_id, state, attempt in rows}


def test_campaign_on_cpu_and_a_tvm_phone_survives_a_killed_phone_and_reports_qoperator_unsupported(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    work = tmp_path / "tvm-agent"
    phones: list[subprocess.Popen] = []
    with coordinator(tmp_path / "coord") as (server, address), AgentThread("cpu-x86", address, tmp_path / "ort"), \
            CampaignClient(address) as client:
        agent = tvm_agent(address, work)
        try:
            def tvm_status():
                return next((a for a in client.status().agents if a.device == KEY and a.state in ("idle", "busy")),
                            None)

            registered = wait_for(tvm_status, 60, "the TVM agent to register")
            tracker = re.search(r"tracker=(\S+)", registered.capabilities.runtime.options).group(1)
            assert f"key={KEY} tracker={tracker}" in runtime_text(registered.capabilities.runtime)
            wait_for(lambda: (a := tvm_status()) is not None and a.free_slots + a.busy_slots == 0, 30,
                     "a heartbeat reporting no phone yet")
            # a campaign while no phone has joined: it waits, says why, and fails after its timeout
            nophone = client.submit(spec_from_local(
                {"name": "nophone", "devices": [KEY], "device_timeout_s": 1, "models": [{"path": str(model)}],
                 "data": {"images": str(IMAGES), "calibration": 8, "eval": 8}, "preprocess": {"input_size": 32}},
                "test", tmp_path))
            failed = client.wait(nophone, poll_s=0.2, timeout_s=60)
            assert failed.state == "failed"
            assert f"1 agent(s) of device class '{KEY}' connected, but none has a device" in failed.message
            phones = [phone(tracker), phone(tracker)]
            ready = wait_for(lambda: (a := tvm_status()) is not None and a.free_slots == 2 and a, 60,
                             "heartbeats reporting both phones free")
            assert slots_text(ready) == "2 free / 0 busy devices"
            idle = [descendants(p) for p in phones]

            qdq = client.submit(spec(tmp_path, model, "qdq", "qdq", max_candidates=2))
            # the first session (the FP32 reference) starts: that phone drops off mid-job
            serving = wait_for(lambda: (i := serving_phone(phones, idle)) is not None and [i], 60,
                               "a phone to serve a session", poll=0.002)[0]
            victim_port = int(phones[serving].args[phones[serving].args.index("--port") + 1])
            kill_group(phones[serving])
            final = client.wait(qdq, poll_s=0.2, timeout_s=150)
            assert final.state == "done", final.message
            client.report(qdq, tmp_path / "qdq")
            report = read_json(tmp_path / "qdq" / "report.json")

            qop = client.submit(spec(tmp_path, model, "qop", "qoperator", max_candidates=1))
            final_qop = client.wait(qop, poll_s=0.2, timeout_s=90)
            assert final_qop.state == "done", final_qop.message
            client.report(qop, tmp_path / "qop")
            report_qop = read_json(tmp_path / "qop" / "report.json")
        finally:
            stop_process(agent)
            for p in phones:
                kill_group(p)
        jobs = job_attempts(tmp_path / "coord", KEY)

    assert agent.returncode == 0
    log = (work.with_suffix(".log")).read_text()
    assert f"TVM tracker started on {tracker}: devices register with --tracker={tracker} --key={KEY}" in log
    with pytest.raises(Exception, match=tracker.split(":")[1]):          # the agent closed its tracker
        TvmTracker(TrackerAddress.parse(tracker)).probe(timeout=2)

    # per candidate, one result per class; on mali-g68 measured by TVM on the (stand-in) phone
    assert len(report["candidates"]) == 2
    for cand in report["candidates"]:
        cpu, mali = cand["results"]["cpu-x86"], cand["results"][KEY]
        assert cpu["status"] == "ok" and cpu["runtime"]["runtime"] == "onnxruntime", cand["id"]
        assert mali["status"] == "ok", (cand["id"], mali.get("crash_cause"), mali.get("stderr_tail"))
        assert mali["runtime"]["runtime"] == "tvm" and f"key={KEY}" in mali["runtime"]["options"]
        assert '"kind":"llvm"' in mali["runtime"]["providers"][0]
        assert mali["num_images"] == 16 and 0.0 <= mali["top1_agreement"] <= 1.0
        assert mali["top1_accuracy"] is not None and mali["latency_ms_p50"] > 0
    assert report["fp32"][KEY]["runtime"]["runtime"] == "tvm"
    # the killed phone's session was retried on the other one, within the same lease (attempt 1)
    records = DeviceHealth(work / "tvm" / HEALTH_FILE).records()
    victim = f"{KEY}@127.0.0.1:{victim_port}"
    assert list(records) == [victim] and records[victim].failures == 1
    cancelled = {job: v for job, v in jobs.items() if v[0] == "cancelled"}
    assert list(cancelled.values()) == [("cancelled", 0)], jobs     # the no-phone campaign's, never leased
    assert all(state == "done" and attempt == 1 for job, (state, attempt) in jobs.items() if job not in cancelled)

    [cand] = report_qop["candidates"]
    assert cand["results"]["cpu-x86"]["status"] == "ok"
    mali = cand["results"][KEY]
    assert mali["status"] == "unsupported" and "QLinearConv" in mali["crash_cause"], mali


def test_registration_refuses_bad_tvm_settings_in_one_line_before_starting_a_tracker(tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    port = free_port()
    base = ["register", "--device", KEY, "--coordinator", "127.0.0.1:1", "--work-dir", str(tmp_path)]
    cases = [
        (["--runtime", "tvm", "--target", "{kind: llvm"], "--target '{kind: llvm' is not JSON"),
        (["--runtime", "tvm", "--target", '{"kind":"opencl","device":"mali"}', "--host-target",
          '{"kind":"llvm","mtriple":"aarch64-linux-android"}', "--tracker-port", str(port)], "set TVM_NDK_CC"),
        (["--runtime", "tvm", "--target", LLVM, "--tracker", "127.0.0.1:9", "--tracker-port", "9190"],
         "either --tracker"),
        (["--runtime", "tvm", "--chunk", "4", "--runtime-option", "chunk=8"], "chunk is given twice"),
        (["--target", LLVM, "--rpc-key", "x"], "--target, --rpc-key only apply to --runtime tvm"),
    ]
    for args, message in cases:
        assert agent_main(base + args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, lines)
    with pytest.raises(Exception, match=str(port)):                     # no tracker was started
        TvmTracker(TrackerAddress("127.0.0.1", port)).probe(timeout=1)
