"""A farm in one process, for qfarm's own tests and for authors of runtime plugins
(`agent register --runtime module:factory`): a real coordinator (gRPC on 127.0.0.1, port 0) and
real agents (threads of the calling process; each job in its own worker process, as in
production), with an injected clock for the coordinator's lease rules and an injected runtime
for the agents.

    from coordinator.testing import Farm

    with Farm(tmp_path / "farm", agents={"npu-x": "my_sdk.qfarm:runner"}) as farm:
        report = farm.run_campaign(spec)          # a CampaignSpec, e.g. from spec_from_local(...)
        assert report["candidates"][0]["results"]["npu-x"]["status"] == "ok"

`coordinator()`, `AgentThread`, `coordinator_process()` and `agent_process()` are the pieces
`Farm` is made of, for tests that kill or restart one of them. `ProtocolAgent` speaks the agent
protocol call by call (no worker processes), for tests and benches that play agents, honest or
not. Timings are short (`FAST`) so a test never waits long for a heartbeat or a lease.

This is the one module that composes the coordinator with agents (scripts/layering.py)."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import grpc

from agent.runtimes import RuntimeOptions
from agent.worker import Agent, AgentConfig
from coordinator.farm.client import CampaignClient
from coordinator.farm.scheduler import LeasePolicy
from coordinator.farm.server import FarmServer, ServerConfig, build_server
from coordinator.farm.spec import CampaignSpec
from shared.auth import AgentIdentity, Credentials
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from shared.version import PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parent.parent      # where `python -m agent.cli` and `coordinator.cli` run from
FAST = LeasePolicy(heartbeat_interval_s=0.25, missing_after_s=0.8, evict_after_s=1.5, lease_ttl_s=2.5, max_wait_s=0.5)
FAST_FLAGS = ("--heartbeat-interval", "0.25", "--missing-after", "0.8", "--evict-after", "1.5", "--lease-ttl", "2.5")


class ManualClock:
    """A clock the test moves: the coordinator's heartbeats, leases and evictions follow it."""

    def __init__(self, start: float = 1_000_000.0):
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@contextmanager
def coordinator(data_dir: Path, port: int = 0, policy: LeasePolicy = FAST,
                **config: Any) -> Iterator[tuple[FarmServer, str]]:
    """A started coordinator on 127.0.0.1 (`port` 0: a free one) and its address; `config` sets
    further ServerConfig fields (clock, limits, security, tick_interval_s, ...)."""
    config.setdefault("tick_interval_s", 0.1)
    server, bound = build_server(ServerConfig(data_dir=Path(data_dir), port=port, policy=policy, **config))
    server.start()
    try:
        yield server, f"127.0.0.1:{bound}"
    finally:
        server.stop(0)


class AgentThread:
    """A real Agent on a thread of this process; `runtime` is ort, tvm or a factory module:function.
    As a context manager it runs until the block ends."""

    def __init__(self, device: str, address: str, work_dir: Path, slots: int = 1, runtime: str = "ort",
                 credentials: Credentials = Credentials(), threads: int = 1,
                 ort_disable_optimizers: tuple[str, ...] = (), **config: Any):
        config.setdefault("backoff_s", (0.1, 0.5))
        self.agent = Agent(AgentConfig(device=device, coordinator=address, work_dir=Path(work_dir), slots=slots,
                                       runtime=RuntimeOptions(runtime=runtime, threads=threads,
                                                              disabled_optimizers=ort_disable_optimizers),
                                       credentials=credentials, **config))
        self.thread = threading.Thread(target=self.agent.run, name=f"agent-{device}-{Path(work_dir).name}",
                                       daemon=True)

    def __enter__(self) -> Agent:
        self.thread.start()
        return self.agent

    def __exit__(self, *exc) -> None:
        self.agent.stop()
        self.thread.join(30)


class Farm:
    """A coordinator and agents, started on entering and stopped on leaving. `agents` maps a device
    class to its runtime (one agent each); more can be added with `add_agent`."""

    def __init__(self, data_dir: Path, agents: Mapping[str, str] | None = None, *, policy: LeasePolicy = FAST,
                 clock: Callable[[], float] = time.time, credentials: Credentials = Credentials(), **server: Any):
        self.data_dir = Path(data_dir)
        self.credentials = credentials
        self._initial = dict(agents or {})
        self._server_config = {"policy": policy, "clock": clock, **server}
        self._stack = ExitStack()
        self.server: FarmServer | None = None
        self.address = ""
        self.agents: list[Agent] = []

    def __enter__(self) -> "Farm":
        try:
            self.server, self.address = self._stack.enter_context(
                coordinator(self.data_dir / "coordinator", **self._server_config))
            for device, runtime in self._initial.items():
                self.add_agent(device, runtime)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def add_agent(self, device: str, runtime: str = "ort", **config: Any) -> Agent:
        """Start one more agent of `device` (config: AgentThread/AgentConfig fields)."""
        work = self.data_dir / "agents" / f"{device}-{len(self.agents)}"
        config.setdefault("credentials", self.credentials)
        config.setdefault("latency_lock", self.data_dir / "latency.lock")   # the farm's agents share one "host"
        agent = self._stack.enter_context(AgentThread(device, self.address, work, runtime=runtime, **config))
        self.agents.append(agent)
        return agent

    def client(self, **config: Any) -> CampaignClient:
        config.setdefault("credentials", self.credentials)
        return CampaignClient(self.address, **config)

    def run_campaign(self, spec: CampaignSpec, timeout_s: float = 180.0, out: Path | None = None) -> dict:
        """Submit, wait, and return the campaign's report.json (AssertionError if it did not finish)."""
        import json

        out = Path(out) if out is not None else self.data_dir / "reports" / spec.name
        with self.client() as client:
            campaign_id = client.submit(spec)
            final = client.wait(campaign_id, poll_s=0.2, timeout_s=timeout_s)
            if final.state != "done":
                raise AssertionError(f"campaign {campaign_id} ended {final.state}: {final.message}")
            client.report(campaign_id, out)
        return json.loads((out / "report.json").read_text())


class ProtocolAgent:
    """One agent speaking the wire protocol directly over `channel` (which carries the token, if
    any): each method is one call, with this agent's identity once registered. `identity` may be
    set to anything, to play an agent that lies about who it is."""

    def __init__(self, channel: grpc.Channel, device: str, name: str = "protocol-agent", slots: int = 1):
        self.stub = farm_pb2_grpc.AgentServiceStub(channel)
        self.device, self.name, self.slots = device, name, slots
        self.identity: AgentIdentity | None = None

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id if self.identity is not None else ""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self.identity.metadata() if self.identity is not None else ()

    def register(self, running: tuple[tuple[str, int], ...] = (), previous: AgentIdentity | None = None,
                 host: farm_pb2.HostInfo | None = None, timeout: float = 10) -> farm_pb2.RegisterResponse:
        caps = farm_pb2.AgentCapabilities(slots=self.slots, protocol_version=PROTOCOL_VERSION, host=host)
        resp = self.stub.Register(farm_pb2.RegisterRequest(
            device=self.device, name=self.name, capabilities=caps,
            running=[farm_pb2.JobRef(job_id=j, attempt=a) for j, a in running]),
            metadata=previous.metadata() if previous is not None else (), timeout=timeout)
        self.identity = AgentIdentity(resp.agent_id, resp.agent_secret)
        return resp

    def heartbeat(self, running: tuple[tuple[str, int], ...] = (), timeout: float = 10) -> list[tuple[str, int]]:
        resp = self.stub.Heartbeat(farm_pb2.HeartbeatRequest(
            agent_id=self.agent_id, running=[farm_pb2.JobRef(job_id=j, attempt=a) for j, a in running],
            free_slots=self.slots - len(running), busy_slots=len(running)), metadata=self.metadata(), timeout=timeout)
        return [(r.job_id, r.attempt) for r in resp.cancel]

    def lease(self, max_jobs: int = 1, wait_s: float = 0.0, timeout: float = 30) -> list[job_pb2.Job]:
        return list(self.stub.Lease(farm_pb2.LeaseRequest(agent_id=self.agent_id, max_jobs=max_jobs, wait_s=wait_s),
                                    metadata=self.metadata(), timeout=timeout).jobs)

    def fetch(self, sha256: str, offset: int = 0, timeout: float = 60) -> bytes:
        return b"".join(c.data for c in self.stub.FetchArtifact(
            farm_pb2.FetchArtifactRequest(sha256=sha256, offset=offset), metadata=self.metadata(), timeout=timeout))

    def upload(self, data: bytes, kind: str = "fp32_outputs", timeout: float = 60) -> job_pb2.Artifact:
        from shared.hashing import sha256_bytes

        meta = job_pb2.Artifact(sha256=sha256_bytes(data), size_bytes=len(data), kind=kind, name=kind)
        return self.stub.UploadArtifact(iter([farm_pb2.ArtifactChunk(artifact=meta, data=data)]),
                                        metadata=self.metadata(), timeout=timeout).artifact

    def report(self, result: job_pb2.DeviceResult, fp32: job_pb2.Artifact | None = None,
               timeout: float = 10) -> farm_pb2.ReportResultResponse:
        return self.stub.ReportResult(farm_pb2.ReportResultRequest(agent_id=self.agent_id, result=result,
                                                                   fp32_outputs=fp32),
                                      metadata=self.metadata(), timeout=timeout)

    def deregister(self, timeout: float = 10) -> None:
        self.stub.Deregister(farm_pb2.DeregisterRequest(agent_id=self.agent_id), metadata=self.metadata(),
                             timeout=timeout)

    def work(self, timeout: float = 60) -> "ProtocolWork":
        """Open this agent's Work stream (jobs and results on one call)."""
        return ProtocolWork(self, timeout)


class ProtocolWork:
    """A Work stream played message by message: `send` credit and results, `receive` what the
    coordinator sends (None once it ended the stream normally; its error when it failed)."""

    def __init__(self, agent: ProtocolAgent, timeout: float):
        self.agent = agent
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._responses = agent.stub.Work(iter(self._outbox.get, None), metadata=agent.metadata(), timeout=timeout)

    def send(self, more_jobs: int = 0, result: job_pb2.DeviceResult | None = None,
             fp32: job_pb2.Artifact | None = None) -> None:
        request = farm_pb2.WorkRequest(more_jobs=more_jobs)
        if result is not None:
            request.result.CopyFrom(farm_pb2.ReportResultRequest(agent_id=self.agent.agent_id, result=result,
                                                                 fp32_outputs=fp32))
        self._outbox.put(request)

    def receive(self) -> farm_pb2.WorkResponse | None:
        return next(self._responses, None)

    def close(self) -> None:
        """Half-close: the credit goes back."""
        self._outbox.put(None)

    def cancel(self) -> None:
        self._outbox.put(None)
        self._responses.cancel()


def ok_result(job: job_pb2.Job, **fields) -> job_pb2.DeviceResult:
    """A plausible `ok` result of `job` (as leased: its attempt), for agents played by a test."""
    values = {"status": job_pb2.RESULT_STATUS_OK, "top1_agreement": 1.0, "top5_agreement": 1.0, "size_bytes": 1,
              "num_images": 1, **fields}
    return job_pb2.DeviceResult(job_id=job.job_id, attempt=job.attempt, candidate_id=job.candidate.id,
                                device=job.device, **values)


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}


def coordinator_process(data_dir: Path, port: int, port_file: Path, log: Path, *args: str,
                        env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """`coordinator serve` as its own process with FAST timings (so a test can SIGKILL and restart
    it on the same data dir and port); the bound port is written to `port_file`."""
    port_file.unlink(missing_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "serve", "--data-dir", str(data_dir), "--port", str(port),
             "--port-file", str(port_file), *FAST_FLAGS, *args], stdout=out, stderr=subprocess.STDOUT,
            env=_environment(env), cwd=ROOT)


def agent_process(device: str, address: str, work_dir: Path, *args: str,
                  env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """`agent register` as its own process (so a test can SIGKILL it); output in <work_dir>.log."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir.with_suffix(".log"), "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "register", "--device", device, "--coordinator",
                                 address, "--work-dir", str(work_dir), "--threads", "1", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=_environment(env), cwd=ROOT)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.05):
    """The predicate's first truthy value, polled in real time; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
