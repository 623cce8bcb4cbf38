"""Helpers for the farm tests: a real coordinator on 127.0.0.1 port 0, real agents (threads or
subprocesses), tiny campaign specs over the fixture images. Short lease timings keep tests fast."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from agent.runtimes import RuntimeOptions
from agent.worker import Agent, AgentConfig
from coordinator.farm.scheduler import LeasePolicy
from coordinator.farm.server import FarmServer, ServerConfig, build_server
from coordinator.farm.spec import CampaignSpec, spec_from_local

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "fixtures" / "imagenet-100"
FAST = LeasePolicy(heartbeat_interval_s=0.25, missing_after_s=0.8, evict_after_s=1.5, lease_ttl_s=2.5, max_wait_s=0.5)


@contextmanager
def coordinator(data_dir: Path, port: int = 0, policy: LeasePolicy = FAST) -> Iterator[tuple[FarmServer, str]]:
    server, bound = build_server(ServerConfig(data_dir=data_dir, port=port, policy=policy, tick_interval_s=0.1))
    server.start()
    try:
        yield server, f"127.0.0.1:{bound}"
    finally:
        server.stop(0)


class AgentThread:
    """A real Agent (its jobs in child processes) running on a thread of the test process."""

    def __init__(self, device: str, address: str, work_dir: Path, slots: int = 1, runtime: str = "ort"):
        self.agent = Agent(AgentConfig(device=device, coordinator=address, work_dir=work_dir, slots=slots,
                                       runtime=RuntimeOptions(runtime=runtime, threads=1), lease_wait_s=0.5,
                                       backoff_s=(0.1, 0.5)))
        self.thread = threading.Thread(target=self.agent.run, name=f"agent-{device}-{work_dir.name}", daemon=True)

    def __enter__(self) -> Agent:
        self.thread.start()
        return self.agent

    def __exit__(self, *exc) -> None:
        self.agent.stop()
        self.thread.join(30)


def agent_process(device: str, address: str, work_dir: Path) -> subprocess.Popen:
    """`agent register` as its own process (so a test can SIGKILL it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(work_dir.with_suffix(".log"), "wb")
    work_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "register", "--device", device, "--coordinator",
                             address, "--work-dir", str(work_dir), "--threads", "1"],
                            stdout=log, stderr=log, env=env, cwd=ROOT)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tiny_spec(tmp_path: Path, model: Path, devices: list[str], *, max_candidates: int = 3, eval_images: int = 16,
              latency_runs: int = 2, device_timeout_s: float = 120.0, name: str = "tiny") -> CampaignSpec:
    raw = {"name": name, "devices": devices, "device_timeout_s": device_timeout_s,
           "models": [{"path": str(model)}],
           "data": {"images": str(IMAGES), "calibration": 8, "eval": eval_images, "latency_runs": latency_runs},
           "preprocess": {"input_size": 32}, "strategy": {"max_candidates": max_candidates}}
    return spec_from_local(raw, "test", tmp_path)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def results_per_pair(report: dict) -> dict[tuple[str, str], dict]:
    return {(c["id"], device): r for c in report["candidates"] for device, r in c["results"].items()}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
