"""The agent: register with the coordinator, heartbeat, lease jobs of its device class, fetch their
artifacts once (cached by sha256, verified), measure each job in a child process, report results.

Jobs and results travel on one Work stream (agent/work_stream.py): the agent grants the
coordinator credit for its free slots, and each result carries the credit of the slot it frees,
so a job costs one message each way. Every other call is a unary RPC. Any call may fail: an
unreachable coordinator is retried with backoff (a broken stream is opened again, and a result
it did not answer goes by ReportResult), and an agent the coordinator no longer knows (restart,
eviction) registers again by itself, handing over the jobs it is still running so their leases
are kept.

Registration hands out an identity (agent id + secret) that every later call carries as metadata;
the coordinator accepts heartbeats, results and downloads only for the jobs this identity holds.
The identity is kept in `<work dir>/identity.json` (mode 600), so an agent that restarts proves it
replaces its previous registration instead of leaving it behind until eviction."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import grpc

import agent as agent_pkg
from agent.drain import DRAIN_FILE, STATE_FILE, write_state
from agent.host import host_info
from agent.runtimes import RuntimeOptions, make_runner
from agent.sandbox import ChildWorker
from agent.work_stream import WorkStream
from shared.artifacts import CHUNK_BYTES, ArtifactStore, CorruptArtifact, iter_file_chunks, sha256_file
from shared.atomic import atomic_output
from shared.auth import AgentIdentity, Credentials
from shared.errors import InvalidArgument, QfarmError
from shared.evaluate import EvalSpec
from shared.feeds import BATCHED
from shared.latency import DEFAULT_LATENCY_LOCK, check_lock_path
from shared.limits import MAX_WORK_CREDIT
from shared.metrics import check_metric_path
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from shared.results import CrashCause, CrashKind, DeviceResult, runtime_message
from shared.version import PROTOCOL_VERSION, package_version

log = logging.getLogger(__name__)

_RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
          grpc.StatusCode.RESOURCE_EXHAUSTED)
# the coordinator does not know this registration (any more): it restarted, evicted us, or lost its data
_REREGISTER = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
IDENTITY_FILE = "identity.json"
MAX_NAME_CHARS = 256
# a wrong token, another role's token, or a coordinator that does not speak this agent's protocol
_FATAL_AT_REGISTER = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                      grpc.StatusCode.FAILED_PRECONDITION)


@dataclass(frozen=True)
class AgentConfig:
    device: str
    coordinator: str                      # HOST:PORT
    work_dir: Path
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    slots: int = 1
    job_timeout_s: float = 1800.0
    name: str = ""                        # default: host + device + work dir (stable across restarts)
    backoff_s: tuple[float, float] = (0.2, 5.0)
    python: str = sys.executable
    max_message_bytes: int = 64 << 20
    credentials: Credentials = field(default_factory=Credentials)   # farm token, TLS CA
    job_memory_mb: int = 0                # address-space limit of each job's worker process (0: none)
    drain_timeout_s: float = 30.0         # on stop: how long running jobs may finish before they are handed back
    latency_lock: Path | None = DEFAULT_LATENCY_LOCK   # host-wide lock around timing phases (None: none)
    allowed_metrics: tuple[str, ...] = ()  # user metrics (module:function) jobs may run here

    def __post_init__(self) -> None:
        if not self.device or not self.device.strip():
            raise InvalidArgument("--device must name a device class, e.g. cpu-x86", step="agent")
        host, sep, port = self.coordinator.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidArgument(f"--coordinator {self.coordinator!r} is not HOST:PORT", step="agent")
        if self.slots < 1:
            raise InvalidArgument(f"--slots {self.slots} must be >= 1", step="agent")
        if not 0 < self.job_timeout_s < float("inf"):      # NaN too
            raise InvalidArgument(f"--job-timeout {self.job_timeout_s} must be a finite number > 0", step="agent")
        if not isinstance(self.job_memory_mb, int) or self.job_memory_mb < 0:
            raise InvalidArgument(f"--job-memory-mb {self.job_memory_mb!r} must be an integer >= 0", step="agent")
        if not self.drain_timeout_s >= 0:
            raise InvalidArgument(f"--drain-timeout {self.drain_timeout_s!r} must be >= 0", step="agent")
        object.__setattr__(self, "latency_lock", check_lock_path(self.latency_lock))
        for metric in self.allowed_metrics:
            check_metric_path(metric)
        if not 1 <= int(port) <= 65535:
            raise InvalidArgument(f"--coordinator {self.coordinator!r}: port {port} is not a TCP port (1 to 65535)",
                                  step="agent")
        if len(self.name) > MAX_NAME_CHARS or not self.name.isprintable():
            raise InvalidArgument(f"--name {self.name[:80]!r} must be at most {MAX_NAME_CHARS} printable characters",
                                  step="agent")

    def agent_name(self) -> str:
        if self.name:
            return self.name
        where = hashlib.sha256(str(Path(self.work_dir).resolve()).encode()).hexdigest()[:8]
        return f"{socket.gethostname()}/{self.device}/{where}"


class DeviceSource(Protocol):
    """Where a TVM agent's parallelism comes from (agent.tvm_tracker.DeviceSlots): the devices of its
    key behind the RPC tracker, re-read while the agent runs."""

    def start(self) -> None: ...

    def close(self) -> None: ...

    def available(self, running: int) -> int: ...

    @property
    def counts(self) -> tuple[int, int]: ...      # (free, busy) devices


class JobCancelled(Exception):
    """The coordinator took the job back (or the agent is stopping): drop it without a result."""


@dataclass
class _Running:
    job_id: str
    attempt: int
    cancelled: bool = False      # set by other threads; the job's thread stops its worker within 0.1 s
    reporting: bool = False      # measured: its slot is free while the result goes out


class Agent:
    def __init__(self, config: AgentConfig, devices: DeviceSource | None = None):
        """`devices`: for a TVM agent, its tracker's devices; then at most one job runs per free device
        (and at most `config.slots`), and heartbeats report free/busy devices instead of slots."""
        self.config = config
        self.devices = devices
        self.work_dir = Path(config.work_dir).resolve()   # workers run in their own folder
        self.cache = ArtifactStore(self.work_dir / "cache")
        self.jobs_dir = self.work_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_info = make_runner(config.runtime).info()   # fails here, at start, if the runtime is unusable
        options = [("grpc.max_receive_message_length", config.max_message_bytes),
                   ("grpc.max_send_message_length", config.max_message_bytes)]
        self._channel = config.credentials.channel(config.coordinator, options)
        self._stub = farm_pb2_grpc.AgentServiceStub(self._channel)
        self._lock = threading.Condition()
        self._register_lock = threading.Lock()
        self._identity: AgentIdentity | None = None
        self._previous = self._load_identity()       # a registration of this work dir before a restart
        self._heartbeat_s = 2.0
        self._running: dict[str, _Running] = {}
        self._verified: set[str] = set()
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._stop = threading.Event()
        self._stream: WorkStream | None = None
        self._owed = 0                      # credit granted on the open stream and not yet used by a job
        self._draining = threading.Event()  # no new leases; running jobs go on (agent.drain)
        self._drain_reason = ""             # "agent drain" (a request file, can be cancelled) or "stopping"
        self.drain_file = self.work_dir / DRAIN_FILE
        self.drain_file.unlink(missing_ok=True)   # a request left by an earlier process is not for this one
        self.fatal: str | None = None     # why the agent gave up (e.g. its token was refused)
        self.counters = {"jobs_run": 0, "bytes_fetched": 0, "registrations": 0}
        env = dict(os.environ)
        root = str(Path(agent_pkg.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._workers: queue.Queue[ChildWorker] = queue.Queue()
        for slot in range(config.slots):
            self._workers.put(ChildWorker(config.python, env, self.work_dir / "workers" / f"slot{slot}.log",
                                          config.job_memory_mb))

    # ---------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        """Stop now: running jobs are killed and handed back (deregistering re-queues them at once)."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
            if self._stream is not None:
                self._stream.cancel()

    @property
    def _agent_id(self) -> str | None:
        return self._identity.agent_id if self._identity is not None else None

    def _metadata(self, identity: AgentIdentity | None = None) -> tuple[tuple[str, str], ...]:
        identity = identity or self._identity
        return identity.metadata() if identity is not None else ()

    def _load_identity(self) -> AgentIdentity | None:
        path = self.work_dir / IDENTITY_FILE
        try:
            data = json.loads(path.read_text())
            if data.get("device") != self.config.device or data.get("coordinator") != self.config.coordinator:
                return None
            return AgentIdentity(str(data["agent_id"]), str(data["secret"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _save_identity(self, identity: AgentIdentity) -> None:
        text = json.dumps({"agent_id": identity.agent_id, "secret": identity.secret, "device": self.config.device,
                           "coordinator": self.config.coordinator})
        try:
            with atomic_output(self.work_dir / IDENTITY_FILE) as tmp:
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                    out.write(text)
        except OSError as exc:
            log.warning("could not keep this agent's identity in %s (%s): a restart registers anew",
                        self.work_dir / IDENTITY_FILE, exc)

    def drain(self, reason: str = "agent drain") -> None:
        """Lease no new jobs; the running ones go on."""
        with self._lock:
            if not self._draining.is_set():
                log.info("draining (%s): no new jobs, %d running", reason, len(self._running))
                self._draining.set()
                self._drain_reason = reason
            elif reason == "stopping":
                self._drain_reason = reason          # a stop is never cancelled by removing the request file
            self._lock.notify_all()
            if self._stream is not None:
                self._stream.close()           # the credit goes back; jobs already sent still arrive
            self._publish_state()

    def stop_gracefully(self, timeout: float | None = None) -> bool:
        """Drain, give the running jobs up to `timeout` (default: the config's drain timeout) to
        finish and report, then stop: what still runs is handed back at once. True when nothing was."""
        timeout = self.config.drain_timeout_s if timeout is None else timeout
        self.drain("stopping")
        with self._lock:
            finished = self._lock.wait_for(lambda: not self._running or self._stop.is_set(), timeout)
            if not finished:
                log.warning("drain timeout (%g s): handing back %s", timeout, ", ".join(sorted(self._running)))
        self.stop()
        return bool(finished)

    def _follow_drain_request(self) -> None:
        """`agent drain` asks through a file in the work dir; `agent drain --cancel` removes it."""
        requested = self.drain_file.exists()
        if requested and not self._draining.is_set():
            self.drain("agent drain")
        elif not requested and self._draining.is_set() and self._drain_reason == "agent drain":
            with self._lock:
                self._draining.clear()
                self._drain_reason = ""
                log.info("drain cancelled: leasing again")
                self._publish_state()

    def _publish_state(self, stopped: bool = False) -> None:
        """What `agent drain` reads; call with self._lock held."""
        try:
            write_state(self.work_dir, {"pid": os.getpid(), "agent_id": self._agent_id or "",
                                        "device": self.config.device, "draining": self._draining.is_set(),
                                        "stopped": stopped, "running": sorted(self._running)})
        except OSError as exc:
            log.warning("could not write %s: %s", STATE_FILE, exc)

    def _leasable(self) -> int:
        return 0 if self._draining.is_set() else self._free()

    def run(self) -> None:
        """Serve jobs until `stop()`; then kill running children and deregister."""
        with self._lock:
            self._publish_state()
        if self.devices is not None:
            self.devices.start()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        pool = ThreadPoolExecutor(max_workers=self.config.slots, thread_name_prefix="job")
        try:
            while not self._stop.is_set():
                agent_id = self._ensure_registered()
                if agent_id is None:
                    break
                self._follow_drain_request()
                with self._lock:
                    self._lock.wait_for(lambda: self._leasable() > 0 or self._stop.is_set(), timeout=1.0)
                    free = self._leasable()
                if free <= 0 or self._stop.is_set():
                    continue
                try:
                    self._serve_stream(pool)
                except grpc.RpcError as exc:
                    self._rpc_failed("work stream", exc, agent_id)
        finally:
            self._shutdown(pool, heartbeat)

    def _serve_stream(self, pool: ThreadPoolExecutor) -> None:
        """Take jobs from one Work stream until it ends (drain, stop, or a failure: raised), granting
        credit as slots free up (also free devices behind a TVM agent's tracker)."""
        stream = WorkStream(self._stub, self._metadata(), lambda jobs: self._take(jobs, pool), self._wake)
        with self._lock:
            self._stream, self._owed = stream, 0
        try:
            while not stream.ended.is_set():
                self._follow_drain_request()
                with self._lock:
                    if self._stop.is_set():
                        stream.cancel()
                    elif self._draining.is_set():
                        stream.close()
                    elif stream.open and (want := self._wanted()) > 0:
                        self._owed += want
                        stream.grant(want)
                    self._lock.wait(timeout=1.0)
        finally:
            with self._lock:
                self._stream, self._owed = None, 0
        if stream.error is not None:
            raise stream.error

    def _take(self, jobs: list[job_pb2.Job], pool: ThreadPoolExecutor) -> None:
        """Jobs the stream brought: run them (also when a drain began meanwhile: the drain waits)."""
        for job in jobs:
            with self._lock:
                self._owed = max(0, self._owed - 1)
                self._running[job.job_id] = _Running(job.job_id, job.attempt)
                self._publish_state()
            log.info("leased %s (attempt %d)", job.job_id, job.attempt)
            pool.submit(self._execute, job)

    def _wanted(self) -> int:
        """More credit to grant: the free slots not yet owed, never more than the stream keeps
        (call with self._lock held)."""
        return max(0, min(self._leasable(), MAX_WORK_CREDIT) - self._owed)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _shutdown(self, pool: ThreadPoolExecutor, heartbeat: threading.Thread) -> None:
        self._stop.set()
        with self._lock:
            for run in self._running.values():
                self._kill(run)
            if self._running:
                log.info("handing back %s", ", ".join(sorted(self._running)))
        pool.shutdown(wait=True)
        heartbeat.join()
        while not self._workers.empty():
            self._workers.get().close()
        if self.devices is not None:
            self.devices.close()
        agent_id = self._agent_id
        if agent_id:
            try:
                self._stub.Deregister(farm_pb2.DeregisterRequest(agent_id=agent_id), timeout=5,
                                      metadata=self._metadata())
            except grpc.RpcError as exc:
                log.info("could not deregister (%s): the coordinator will evict this agent", exc.code().name)
        self._channel.close()
        with self._lock:
            self._publish_state(stopped=True)

    def _measuring(self) -> int:
        """Jobs holding a slot: running, not yet reporting (call with self._lock held)."""
        return sum(not run.reporting for run in self._running.values())

    def _free(self) -> int:
        busy = self._measuring()
        free = self.config.slots - busy
        if self.devices is not None:
            free = min(free, self.devices.available(busy))
        return free

    def _slot_counts(self, running: int) -> tuple[int, int]:
        """(free, busy) for heartbeats: job slots, or a TVM agent's free/busy devices of its key."""
        if self.devices is not None:
            free, busy = self.devices.counts
            return free, busy
        return self.config.slots - running, running

    # ---------------------------------------------------------------- registration and heartbeats
    def _ensure_registered(self) -> str | None:
        """The current agent id, registering (again) with backoff when there is none. A registration
        carries the identity it replaces, so the coordinator hands its leases over."""
        with self._register_lock:
            delay = self.config.backoff_s[0]
            while self._identity is None and not self._stop.is_set():
                with self._lock:
                    running = [farm_pb2.JobRef(job_id=r.job_id, attempt=r.attempt) for r in self._running.values()]
                caps = farm_pb2.AgentCapabilities(host=host_info(), slots=self.config.slots,
                                                  package_version=package_version(), protocol_version=PROTOCOL_VERSION)
                caps.runtime.CopyFrom(runtime_message(self.runtime_info))
                try:
                    resp = self._stub.Register(farm_pb2.RegisterRequest(
                        device=self.config.device, name=self.config.agent_name(), capabilities=caps,
                        running=running), timeout=10, metadata=self._metadata(self._previous))
                except grpc.RpcError as exc:
                    if exc.code() in _FATAL_AT_REGISTER:      # retrying cannot help: stop, say why
                        self._refused(exc)
                        break
                    if exc.code() not in _RETRY:
                        log.error("registration refused: %s %s", exc.code().name, exc.details())
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.config.backoff_s[1])
                    continue
                self._identity = AgentIdentity(resp.agent_id, resp.agent_secret)
                self._previous = self._identity
                self._save_identity(self._identity)
                self._heartbeat_s = resp.heartbeat_interval_s or self._heartbeat_s
                self.counters["registrations"] += 1
                log.info("registered as %s for device class %s (%d running job(s) handed over; coordinator "
                         "qfarm %s, protocol %d)", resp.agent_id, self.config.device, len(running),
                         resp.package_version or "unknown", resp.protocol_version)
            return self._agent_id

    def _forget(self, agent_id: str) -> None:
        with self._register_lock:
            if self._agent_id == agent_id:
                self._identity = None

    def _refused(self, exc: grpc.RpcError) -> None:
        """The coordinator refuses our token (wrong, or rotated) or our protocol: stop, and say why."""
        what = "registration" if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else "credentials"
        self.fatal = f"the coordinator refused this agent's {what}: {exc.details()}"
        log.error("%s", self.fatal)
        self._stop.set()

    def _rpc_failed(self, what: str, exc: grpc.RpcError, agent_id: str) -> None:
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            self._refused(exc)
        elif code in _REREGISTER:
            log.info("%s: %s; registering again", what, exc.details())
            self._forget(agent_id)
        else:
            log.warning("%s failed: %s %s", what, code.name, exc.details())
            self._stop.wait(self.config.backoff_s[0] if code in _RETRY else self.config.backoff_s[1])

    def _heartbeat_loop(self) -> None:
        if self._ensure_registered() is None:   # first: the coordinator's interval, not the default
            return
        while not self._stop.wait(self._heartbeat_s):
            agent_id = self._ensure_registered()
            if agent_id is None:
                return
            self._follow_drain_request()         # noticed within a heartbeat, also while the stream waits
            with self._lock:
                running = [farm_pb2.JobRef(job_id=r.job_id, attempt=r.attempt) for r in self._running.values()]
                measuring = self._measuring()
            free, busy = self._slot_counts(measuring)
            try:
                resp = self._stub.Heartbeat(farm_pb2.HeartbeatRequest(
                    agent_id=agent_id, running=running, free_slots=free, busy_slots=busy), timeout=10,
                    metadata=self._metadata())
            except grpc.RpcError as exc:
                self._rpc_failed("heartbeat", exc, agent_id)
                continue
            for ref in resp.cancel:
                with self._lock:
                    run = self._running.get(ref.job_id)
                    if run is not None and run.attempt == ref.attempt:
                        log.info("coordinator took back %s (attempt %d): stopping it", ref.job_id, ref.attempt)
                        self._kill(run)

    @staticmethod
    def _kill(run: _Running) -> None:
        run.cancelled = True

    # ---------------------------------------------------------------- one job
    def _execute(self, job: job_pb2.Job) -> None:
        run = self._running[job.job_id]
        job_dir = self.jobs_dir / f"{hashlib.sha256(job.job_id.encode()).hexdigest()[:16]}-{job.attempt}"
        try:
            files = self._fetch_job_files(job, run)
            outcome = self._run_child(job, files, job_dir, run)
            result = outcome.replace(runtime=outcome.runtime or self.runtime_info).to_proto(
                job_id=job.job_id, attempt=job.attempt, candidate_id=job.candidate.id, device=job.device)
            fp32 = None
            if job.reference and outcome.ok:
                fp32 = self._upload(job_dir / "fp32.npz", "fp32_outputs", f"fp32 {job.device}")
            with self._lock:
                self.counters["jobs_run"] += 1
                run.reporting = True
            self._report(job, run, result, fp32)
        except JobCancelled:
            log.info("dropped %s (attempt %d)", job.job_id, job.attempt)
        except (grpc.RpcError, QfarmError, OSError) as exc:
            # not the candidate's fault: give no result; the lease runs out and another attempt follows
            log.error("could not run %s: %s", job.job_id, exc)
        except Exception:  # noqa: BLE001 - a bug here must be visible; the lease still runs out
            log.exception("agent bug while running %s", job.job_id)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)
            with self._lock:
                self._running.pop(job.job_id, None)
                self._publish_state()
                self._lock.notify_all()

    def _fetch_job_files(self, job: job_pb2.Job, run: _Running) -> dict[str, Path | None]:
        files: dict[str, Path | None] = {
            "model": self._artifact(job.candidate.model.sha256, run),
            "inputs": self._artifact(job.data.inputs.sha256, run),
            "labels": self._artifact(job.data.labels.sha256, run) if job.data.labels.sha256 else None,
            "fp32_outputs": None, "fp32_model": None,
        }
        if not job.reference:
            files["fp32_outputs"] = self._artifact(job.fp32_outputs.sha256, run)
            # timed alongside the candidate; cached by sha256, so fetched once per agent
            files["fp32_model"] = self._artifact(job.fp32_model.sha256 or job.candidate.base_model.sha256, run)
        return files

    def _artifact(self, sha: str, run: _Running) -> Path:
        """A verified local copy, downloaded at most once per sha (concurrent slots share it)."""
        with self._lock:
            lock = self._fetch_locks.setdefault(sha, threading.Lock())
        with lock:
            if self.cache.has(sha):
                if sha in self._verified:
                    return self.cache.path_of(sha)
                try:
                    path = self.cache.get(sha).path        # re-hash once per agent process
                    self._verified.add(sha)
                    return path
                except CorruptArtifact as exc:
                    log.warning("%s; fetching it again", exc)
            stored = self.cache.put_stream(self._download(sha, run), expected_sha256=sha)
            self._verified.add(sha)
            with self._lock:
                self.counters["bytes_fetched"] += stored.size_bytes
            return stored.path

    def _download(self, sha: str, run: _Running) -> Iterator[bytes]:
        for chunk in self._stub.FetchArtifact(farm_pb2.FetchArtifactRequest(sha256=sha), timeout=3600,
                                              metadata=self._metadata()):
            if run.cancelled:
                raise JobCancelled()
            yield chunk.data

    def _run_child(self, job: job_pb2.Job, files: dict[str, Path | None], job_dir: Path,
                   run: _Running) -> DeviceResult:
        """Measure in a slot's worker process; its death, a timeout or a non-zero exit is a crash."""
        size = files["model"].stat().st_size if files["model"] else 0
        metric = job.data.metric or None
        if metric is not None and metric not in self.config.allowed_metrics:
            return DeviceResult.failure(CrashCause(CrashKind.METRIC, (
                f"metric {metric} is not allowed on agent {self.config.agent_name()} (start it with "
                f"--allow-metric {metric}, with that module importable there)")), size)
        try:
            spec = EvalSpec(latency_runs=job.data.latency_runs, task=job.data.task or "auto", metric=metric,
                            latency_lock=self.config.latency_lock, layout=job.data.data_layout or BATCHED)
        except InvalidArgument as exc:      # a job this agent cannot measure as asked: its result says why
            return DeviceResult.failure(CrashCause(CrashKind.ERROR, exc.args[0]), size)
        job_dir.mkdir(parents=True, exist_ok=True)
        request = {
            "out": str(job_dir), "reference": job.reference, "model": str(files["model"]),
            **{key: None if files[key] is None else str(files[key])
               for key in ("inputs", "labels", "fp32_outputs", "fp32_model")},
            "eval": spec.to_dict(), "runtime": self.config.runtime.to_dict(),
        }
        (job_dir / "request.json").write_text(json.dumps(request))
        worker = self._workers.get()
        try:
            outcome = worker.run(job_dir / "request.json", self.config.job_timeout_s,
                                 lambda: run.cancelled or self._stop.is_set())
        finally:
            self._workers.put(worker)
        if run.cancelled or (outcome.crash_cause and outcome.crash_cause.kind == CrashKind.CANCELLED):
            raise JobCancelled()
        if not outcome.finished:
            log.warning("%s crashed: %s", job.job_id, outcome.crash_cause)
            return DeviceResult.failure(outcome.crash_cause, size, stderr_tail=outcome.stderr_tail)
        result = DeviceResult.from_dict(json.loads((job_dir / "result.json").read_text()))
        if not result.ok:
            result = result.replace(stderr_tail=outcome.stderr_tail, size_bytes=result.size_bytes or size)
        return result

    def _upload(self, path: Path, kind: str, name: str) -> job_pb2.Artifact:
        meta = job_pb2.Artifact(sha256=sha256_file(path), size_bytes=path.stat().st_size, kind=kind, name=name)

        def chunks() -> Iterator[farm_pb2.ArtifactChunk]:
            first = True
            for offset, data in iter_file_chunks(path, 0, CHUNK_BYTES):
                yield farm_pb2.ArtifactChunk(artifact=meta if first else None, data=data, offset=offset)
                first = False
            if first:  # empty file: still name it
                yield farm_pb2.ArtifactChunk(artifact=meta, data=b"", offset=0)

        return self._stub.UploadArtifact(chunks(), timeout=600, metadata=self._metadata()).artifact

    def _report(self, job: job_pb2.Job, run: _Running, result: job_pb2.DeviceResult,
                fp32: job_pb2.Artifact | None) -> None:
        """Deliver the result on the Work stream, with the credit of the slot it frees; else (no open
        stream, or no answer from it) by ReportResult, retrying while the coordinator is unreachable
        (results are idempotent)."""
        identity = self._identity
        with self._lock:
            stream, more = self._stream, 0
            if stream is not None and stream.open and not self._draining.is_set():
                more = self._wanted()
                self._owed += more
        if stream is not None and identity is not None:
            request = farm_pb2.ReportResultRequest(agent_id=identity.agent_id, result=result, fp32_outputs=fp32)
            resp = stream.report(request, more, timeout=30)
            if resp is not None:
                self._log_report(job, result, resp)
                return
        delay = self.config.backoff_s[0]
        while not self._stop.is_set() and not run.cancelled:
            identity = self._identity
            request = farm_pb2.ReportResultRequest(agent_id=identity.agent_id if identity else "", result=result,
                                                   fp32_outputs=fp32)
            try:
                resp = self._stub.ReportResult(request, timeout=30, metadata=self._metadata(identity))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED and identity is not self._identity:
                    continue        # registered again meanwhile (the lease moved with it): report as the new one
                if exc.code() not in _RETRY:
                    log.warning("result of %s refused: %s %s", job.job_id, exc.code().name, exc.details())
                    return
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.backoff_s[1])
                continue
            self._log_report(job, result, resp)
            return

    @staticmethod
    def _log_report(job: job_pb2.Job, result: job_pb2.DeviceResult, resp: farm_pb2.ReportResultResponse) -> None:
        log.info("%s %s (attempt %d): %s%s", job.job_id, "accepted" if resp.accepted else "not recorded",
                 job.attempt, job_pb2.ResultStatus.Name(result.status), f" ({resp.reason})" if resp.reason else "")
