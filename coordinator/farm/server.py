"""The coordinator's gRPC server (grpc.aio): AgentService, CampaignService and the standard health
service, on an event loop of its own.

Nothing waits on a thread: a Lease long-poll is a future on the loop (waiters.py), streams are
coroutines, and every blocking piece of work (an SQLite transaction, a file read or write, a
model check at submit) runs on one of two small thread pools, `store` (short transactions: a
heartbeat never queues behind a file or a model) and `files`. The campaign threads (the tuner) stay
threads. The gate (gate.py), wrapped around every method handler, checks tokens and roles, caps
concurrent calls per pool overall and per peer, and names malformed requests; agent calls also prove the agent's
identity (shared.auth.AgentIdentity), which the scheduler checks against the lease they touch.

`build_server` wires the store, scheduler, artifact files and campaign manager together; the
returned FarmServer is driven from ordinary threads (start, stop) and also runs the scheduler's
clock tick and the campaign threads. Typed errors become gRPC status codes in exactly one place
(`status_code_for`)."""
from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.buildpool import BuildLimits
from coordinator.tuner.state import ReportPolicy
from coordinator.farm.admission import check_campaign
from coordinator.farm.campaign import CampaignManager
from coordinator.farm.candidate_cap import BoundedScheduler
from coordinator.farm import work_stream
from coordinator.farm.evaluator import FarmContext
from coordinator.farm.fields import check_claim, check_report
from coordinator.farm.gate import Gate
from coordinator.farm.presence import Presence
from coordinator.farm.registration import check_registration, check_running
from coordinator.farm.scheduler import LeasePolicy
from coordinator.farm.spec import spec_from_wire
from coordinator.farm.states import JobState, is_alive
from coordinator.farm.store import Store
from coordinator.farm.waiters import LeaseWaiters
from shared.artifacts import CHUNK_BYTES, ArtifactStore, check_sha
from shared.auth import AgentIdentity, ServerSecurity
from shared.errors import (DataError, DeadlineExceeded, EvaluationError, FailedPrecondition, InvalidArgument,
                           ModelError, NotFound, PermissionDenied, QfarmError, ResourceExhausted, Unauthenticated)
from shared.limits import DEFAULT_LIMITS, Limits
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from shared.version import PROTOCOL_VERSION, package_version

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelError, grpc.StatusCode.INVALID_ARGUMENT),
    (DataError, grpc.StatusCode.INVALID_ARGUMENT),
    (EvaluationError, grpc.StatusCode.FAILED_PRECONDITION),
    (QfarmError, grpc.StatusCode.UNKNOWN),
)

RECENT_AGENTS_S = 600.0   # status lists evicted/gone agents this long after their last heartbeat
MAX_REPLY_BYTES = 64 << 20  # our own replies (a report with its PNGs); what callers send is bounded by limits
MIN_MESSAGE_BYTES = CHUNK_BYTES + (64 << 10)   # an artifact chunk and its envelope must fit in one message
MAX_JOBS_PER_LEASE = 64
LEASE_REPLY_MARGIN_S = 0.2    # a long-poll answers this long before the caller's own deadline
SHORT_LOCK_WAIT_S = 0.001     # the event loop waits this long for the store (a job queued, a result), then hands off
SERVICES = ("", "qfarm.v1.AgentService", "qfarm.v1.CampaignService")


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    """The one mapping from error types to gRPC status codes."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, grpc.RpcError):    # the request stream itself failed (oversize message, client gone):
        log.info("request stream ended by the transport: %s", exc)   # gRPC has already set the status
        await context.abort(grpc.StatusCode.CANCELLED, "the request stream failed")
    code = status_code_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error in an RPC", exc_info=exc)
        await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
    await context.abort(code, str(exc))


def rpc(method: Callable) -> Callable:
    """Wrap an async servicer method so typed errors reach the client as status codes with their message."""
    @functools.wraps(method)
    async def call(self, request, context):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped, logged when unexpected
            await _abort(context, exc)
    return call


def rpc_stream(method: Callable) -> Callable:
    """`rpc` for a handler that yields its responses: an error ends the stream with its status."""
    @functools.wraps(method)
    async def call(self, request_iterator, context):
        try:
            async for response in method(self, request_iterator, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped, logged when unexpected
            await _abort(context, exc)
    return call


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051                      # 0: pick a free port
    policy: LeasePolicy = LeasePolicy()
    tick_interval_s: float = 1.0
    max_workers: int = 2                   # threads for store transactions (one connection: more only contend)
    limits: Limits = DEFAULT_LIMITS         # message, artifact, model, campaign and concurrency bounds
    security: ServerSecurity = ServerSecurity()   # role tokens and TLS; none: loopback only
    build: BuildLimits = BuildLimits()      # the build workers' count, memory and time limits
    report: ReportPolicy = ReportPolicy()   # how often a running campaign's report.json is rewritten whole
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def __post_init__(self) -> None:
        if self.limits.max_message_bytes < MIN_MESSAGE_BYTES:
            raise InvalidArgument(f"max_message_bytes={self.limits.max_message_bytes} is below {MIN_MESSAGE_BYTES}: "
                                  f"artifacts travel in {CHUNK_BYTES}-byte chunks", step="config")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InvalidArgument(f"--port {self.port} is not a TCP port (0 to 65535; 0 picks a free one)",
                                  step="config")
        if isinstance(self.max_workers, bool) or not isinstance(self.max_workers, int) or not 1 <= self.max_workers \
                <= 256:
            raise InvalidArgument(f"--max-workers {self.max_workers} must be between 1 and 256 (threads for store "
                                  "transactions; waiting agents hold none)", step="config")
        if not (isinstance(self.tick_interval_s, (int, float)) and math.isfinite(self.tick_interval_s)
                and self.tick_interval_s > 0):
            raise InvalidArgument(f"tick_interval_s={self.tick_interval_s!r} must be a finite number > 0",
                                  step="config")


class Stats:
    """Bytes and results counters, for `coordinator status` and bench/farm.py."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = {"artifact_bytes_sent": 0, "artifact_bytes_received": 0, "job_bytes_sent": 0}

    def add(self, key: str, amount: int) -> None:
        with self._lock:
            self.values[key] += amount


class Coordinator:
    """Everything behind the services; shared by both servicers. Its synchronous methods run on the
    thread pools (`in_store`, `in_files`), never on the event loop."""

    def __init__(self, config: ServerConfig):
        self.config = config
        data_dir = Path(config.data_dir).resolve()
        self.store = Store(data_dir)
        self.data_dir = data_dir
        self.scheduler = BoundedScheduler(self.store, config.policy, config.clock, config.limits)
        self.artifacts = ArtifactStore(data_dir / "artifacts")
        self.ctx = FarmContext(self.store, self.scheduler, self.artifacts, threading.Event())
        self.campaigns = CampaignManager(self.ctx, data_dir, config.build, config.report)
        self.stats = Stats()
        self.waiters = LeaseWaiters()
        self.presence = Presence()
        self.agent_devices: dict[str, str] = {}      # agent id -> device class, for lease waits
        self._store_pool = ThreadPoolExecutor(config.max_workers, thread_name_prefix="store")
        self._files_pool = ThreadPoolExecutor(4, thread_name_prefix="files")

    async def in_store(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._store_pool, functools.partial(fn, *args))

    async def in_short(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A short transaction of the agents' hot path (heartbeat, lease, result): run right here on
        the loop when the store is free now or within SHORT_LOCK_WAIT_S, else on the store pool.
        Handing it to a thread and back costs more CPU than the transaction itself (a few SQLite
        statements and a commit that writes the WAL, no fsync: checkpoints run on the tick thread,
        store.py), and more than waiting out another short transaction; the loop waits no longer
        than that, so a tick or a campaign holding the lock delays no one."""
        held = self.store.hold_if_free(SHORT_LOCK_WAIT_S)
        if not held:
            return await self.in_store(fn, *args)
        try:
            return fn(*args)
        finally:
            self.store.release()

    async def in_files(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._files_pool, functools.partial(fn, *args))

    def close_pools(self) -> None:
        """Work still inside a call (a store transaction) ends before the store closes."""
        self._store_pool.shutdown(wait=True)
        self._files_pool.shutdown(wait=True)

    # ---------------------------------------------------------------- artifacts
    async def _next(self, reader, started: float, what: str):
        """The next message of a request stream, or None at its end; a stalled or overlong stream is cut."""
        limits = self.config.limits
        loop = asyncio.get_running_loop()
        left = limits.max_stream_s - (loop.time() - started)
        if left <= 0:
            raise DeadlineExceeded(f"{what} cut after {limits.max_stream_s} s, the limit max_stream_s")
        try:
            return await asyncio.wait_for(anext(reader, None), min(limits.max_stream_idle_s, left))
        except TimeoutError:
            raise DeadlineExceeded(f"{what} stalled: no chunk for {limits.max_stream_idle_s} s (the limit "
                                   "max_stream_idle_s); cut") from None

    async def receive_artifact(self, requests) -> farm_pb2.UploadArtifactResponse:
        started = asyncio.get_running_loop().time()
        reader = aiter(requests)
        first = await self._next(reader, started, "upload")
        if first is None or not first.artifact.sha256:
            raise InvalidArgument("an upload must start with a chunk naming the artifact's sha256", step="upload")
        meta = job_pb2.Artifact()
        meta.CopyFrom(first.artifact)
        check_sha(meta.sha256)
        meta.name, meta.kind = meta.name[:256], meta.kind[:64]
        limit = self.config.limits.max_artifact_bytes
        if meta.size_bytes > limit:
            raise ResourceExhausted(f"artifact {meta.name[:80] or meta.sha256} declares {meta.size_bytes} bytes, "
                                    f"above the limit max_artifact_bytes={limit}", step="upload")
        what = f"upload of {meta.sha256}"
        writer = await self.in_files(self.artifacts.writer, meta.sha256)
        try:
            chunk, expected = first, 0
            while chunk is not None:
                if chunk.offset != expected:
                    raise InvalidArgument(f"{what} has a chunk at offset {chunk.offset}, expected {expected}",
                                          step="upload")
                expected += len(chunk.data)
                if expected > limit:
                    raise ResourceExhausted(f"{what} passed {limit} bytes, the limit max_artifact_bytes={limit}",
                                            step="upload")
                if meta.size_bytes and expected > meta.size_bytes:
                    raise InvalidArgument(f"artifact {meta.sha256} declared {meta.size_bytes} bytes, received more",
                                          step="upload")
                await self.in_files(writer.write, chunk.data)
                self.stats.add("artifact_bytes_received", len(chunk.data))
                chunk = await self._next(reader, started, what)
            if meta.size_bytes and expected != meta.size_bytes:     # before the file is kept, not after
                raise InvalidArgument(f"artifact {meta.sha256} declared {meta.size_bytes} bytes, received "
                                      f"{expected}", step="upload")
            present = self.artifacts.has(meta.sha256)
            stored = await self.in_files(writer.commit)
        finally:
            writer.abort()     # not awaited: it must run also when the call is cancelled (a close and an unlink)
        await self.in_store(self._record_artifact, stored.sha256, stored.size_bytes, meta.kind or "file", meta.name)
        meta.size_bytes = stored.size_bytes
        return farm_pb2.UploadArtifactResponse(artifact=meta, already_present=present)

    def _record_artifact(self, sha256: str, size: int, kind: str, name: str) -> None:
        with self.store.transaction() as c:
            c.put_artifact(sha256, size, kind, name, self.config.clock())

    async def send_artifact(self, sha256: str, offset: int, context: grpc.aio.ServicerContext) -> None:
        """Stream a stored artifact from `offset` in chunks; a reader that stops reading is cut."""
        limits = self.config.limits
        known = await self.in_store(self._known_artifacts, [sha256])
        if not known:
            raise NotFound(f"artifact {sha256} is not stored on the coordinator", step="artifact")
        pieces = self.artifacts.chunks(sha256, offset, CHUNK_BYTES)
        meta = job_pb2.Artifact(sha256=sha256)
        try:
            async with asyncio.timeout(limits.max_stream_s):
                while (piece := await self.in_files(next, pieces, None)) is not None:
                    at, data = piece
                    self.stats.add("artifact_bytes_sent", len(data))
                    await asyncio.wait_for(context.write(farm_pb2.ArtifactChunk(artifact=meta, data=data, offset=at)),
                                           limits.max_stream_idle_s)
        except TimeoutError:
            raise DeadlineExceeded(f"download of {sha256} stalled or ran past max_stream_s={limits.max_stream_s} "
                                   f"s (max_stream_idle_s={limits.max_stream_idle_s}); cut") from None
        finally:
            if not pieces.gi_running:     # a read still on its thread ends with the generator's next step
                pieces.close()

    def _known_artifacts(self, shas: list[str]) -> set[str]:
        with self.store.transaction() as c:
            return c.has_artifacts(shas)

    def missing_artifacts(self, shas: list[str]) -> list[str]:
        known = self._known_artifacts(shas)
        return [s for s in dict.fromkeys(shas) if s not in known or not self.artifacts.has(s)]

    # ---------------------------------------------------------------- campaigns
    def submit_campaign(self, spec_json: str) -> str:
        """Bounds and hostile-model checks first; a refused campaign leaves no trace."""
        try:
            spec = spec_from_wire(spec_json)
        except RecursionError:
            raise InvalidArgument("campaign spec is nested too deeply to be a campaign spec", step="spec") from None
        except (ValueError, TypeError) as exc:   # a field the validator let through broke a constructor
            raise InvalidArgument(f"campaign spec has a bad value ({type(exc).__name__}: {exc})", step="spec") from exc
        missing = [f for f in spec.files() if not self.artifacts.has(f.sha256)]
        if not missing:     # the manager names missing uploads itself
            check_campaign(spec, self.config.limits, self.artifacts, self.data_dir / "tmp")
        return self.campaigns.submit(spec_json)

    def status(self, campaign_id: str) -> farm_pb2.GetStatusResponse:
        now = self.config.clock()
        resp = farm_pb2.GetStatusResponse()
        with self.store.transaction() as c:
            live: dict[str, int] = {}
            for agent in c.agents():
                alive = is_alive(agent.state)
                if alive:
                    live[agent.device] = live.get(agent.device, 0) + 1
                elif now - agent.last_heartbeat > RECENT_AGENTS_S:
                    continue
                caps = farm_pb2.AgentCapabilities.FromString(agent.capabilities)
                resp.agents.append(farm_pb2.AgentStatus(
                    agent_id=agent.agent_id, name=agent.name, device=agent.device, state=agent.state.value,
                    jobs=[j.job_id for j in c.jobs_of_agent(agent.agent_id)],
                    last_heartbeat_age_s=max(0.0, now - agent.last_heartbeat), capabilities=caps,
                    free_slots=agent.free_slots, busy_slots=agent.busy_slots))
            rows = [c.campaign(campaign_id)] if campaign_id else c.campaigns()
            for row in rows:
                status = farm_pb2.CampaignStatus(campaign_id=row.campaign_id, name=row.name, state=row.state.value,
                                                 message=row.message, created_at=row.created_at,
                                                 updated_at=row.updated_at)
                for device, counts in sorted(c.campaign_progress(row.campaign_id).items()):
                    status.devices.append(farm_pb2.DeviceProgress(
                        device=device, total=sum(counts.values()), done=counts.get(JobState.DONE.value, 0),
                        queued=counts.get(JobState.QUEUED.value, 0), leased=counts.get(JobState.LEASED.value, 0),
                        agents=live.get(device, 0)))
                resp.campaigns.append(status)
        resp.stats.CopyFrom(farm_pb2.ServerStats(results_accepted=self.scheduler.counters["results_accepted"],
                                                 results_duplicate=self.scheduler.counters["results_duplicate"],
                                                 **self.stats.values))
        return resp


def agent_identity(context: grpc.aio.ServicerContext, claimed: str = "") -> AgentIdentity:
    """The identity an agent call proves (metadata); a request naming another agent is refused."""
    identity = AgentIdentity.from_metadata(context.invocation_metadata())
    if identity is None:
        raise PermissionDenied("agent calls must carry the identity of the agent's registration (metadata "
                               "qfarm-agent-id and qfarm-agent-secret): register first", step="agent")
    check_claim(identity, claimed)
    return identity


def _finite(value: float, default: float = 0.0) -> float:
    return value if math.isfinite(value) else default


class AgentServicer(farm_pb2_grpc.AgentServiceServicer):
    def __init__(self, coord: Coordinator):
        self.coord = coord

    @rpc
    async def Register(self, request, context):
        check_registration(request)
        caps = request.capabilities
        previous = AgentIdentity.from_metadata(context.invocation_metadata())
        registration = await self.coord.in_store(
            self.coord.scheduler.register, request.device, request.name or context.peer()[:256],
            caps.SerializeToString(), max(1, caps.slots), [(r.job_id, r.attempt) for r in request.running], previous)
        devices = self.coord.agent_devices
        if len(devices) > 2 * self.coord.config.limits.max_agents:    # a cache: forget it rather than grow
            devices.clear()
        devices[registration.agent_id] = request.device
        if registration.replaced is not None:
            self.coord.presence.forget(registration.replaced)
        policy = self.coord.config.policy
        return farm_pb2.RegisterResponse(agent_id=registration.agent_id, agent_secret=registration.secret,
                                         heartbeat_interval_s=policy.heartbeat_interval_s,
                                         lease_ttl_s=policy.lease_ttl_s, package_version=package_version(),
                                         protocol_version=PROTOCOL_VERSION)

    @rpc
    async def Heartbeat(self, request, context):
        agent = agent_identity(context, request.agent_id)
        check_running(request.running)
        if request.free_slots < 0 or request.busy_slots < 0:
            raise InvalidArgument(f"free_slots={request.free_slots} and busy_slots={request.busy_slots} must be >= 0",
                                  step="agent")
        coord, free, busy = self.coord, request.free_slots, request.busy_slots
        if not request.running and coord.presence.heard(agent, free, busy, coord.config.clock()):
            return farm_pb2.HeartbeatResponse()         # an idle agent, as before: no transaction (presence.py)
        cancel, idle = await coord.in_short(coord.scheduler.heartbeat_and_idle, agent,
                                            [(r.job_id, r.attempt) for r in request.running], free, busy)
        if idle is not None:
            coord.presence.idle(agent.agent_id, idle, free, busy)
        else:
            coord.presence.forget(agent.agent_id)
        return farm_pb2.HeartbeatResponse(cancel=[farm_pb2.JobRef(job_id=j, attempt=a) for j, a in cancel])

    @rpc
    async def Lease(self, request, context):
        """Lease now, or wait (a future, no thread; capped by the policy and the caller's deadline)."""
        agent = agent_identity(context, request.agent_id)
        coord, loop = self.coord, asyncio.get_running_loop()
        max_jobs = min(max(1, request.max_jobs), MAX_JOBS_PER_LEASE)
        wait = min(max(0.0, _finite(request.wait_s)), coord.config.policy.max_wait_s)
        remaining = context.time_remaining()
        if remaining is not None:
            wait = min(wait, max(0.0, remaining - LEASE_REPLY_MARGIN_S))
        deadline = loop.time() + wait
        device = coord.agent_devices.get(agent.agent_id)
        while True:
            since = coord.waiters.version(device) if device is not None else None
            jobs, device = await coord.in_short(coord.scheduler.lease_and_device, agent, max_jobs)
            coord.agent_devices[agent.agent_id] = device
            if jobs:
                coord.presence.forget(agent.agent_id)     # busy now: its heartbeats go through the store
                coord.waiters.wake_one(device)     # there may be more: the next waiter looks
                break
            left = deadline - loop.time()
            if left <= 0:
                break
            if since is not None and not await coord.waiters.wait(agent.agent_id, device, since, left):
                break
        resp = farm_pb2.LeaseResponse(jobs=jobs)
        coord.stats.add("job_bytes_sent", resp.ByteSize())
        return resp

    @rpc
    async def FetchArtifact(self, request, context):
        agent = agent_identity(context)
        sha = check_sha(request.sha256)
        await self.coord.in_store(self.coord.scheduler.check_artifact_access, agent, sha)
        await self.coord.send_artifact(sha, request.offset, context)

    @rpc
    async def UploadArtifact(self, request_iterator, context):
        agent = agent_identity(context)
        await self.coord.in_store(self.coord.scheduler.check_upload, agent)
        return await self.coord.receive_artifact(request_iterator)

    @rpc
    async def ReportResult(self, request, context):
        agent = agent_identity(context)
        result, fp32 = check_report(request, agent)
        outcome = await self.coord.in_short(self.coord.scheduler.report, agent, result, fp32)
        return farm_pb2.ReportResultResponse(accepted=outcome.accepted, duplicate=outcome.duplicate,
                                             reason=outcome.reason)

    @rpc_stream
    async def Work(self, request_iterator, context):
        async for response in work_stream.serve(self.coord, agent_identity(context), request_iterator):
            yield response

    @rpc
    async def Deregister(self, request, context):
        agent = agent_identity(context, request.agent_id)
        await self.coord.in_store(self.coord.scheduler.deregister, agent)
        self.coord.agent_devices.pop(agent.agent_id, None)
        self.coord.presence.forget(agent.agent_id)
        return farm_pb2.DeregisterResponse()


class CampaignServicer(farm_pb2_grpc.CampaignServiceServicer):
    def __init__(self, coord: Coordinator):
        self.coord = coord

    @rpc
    async def MissingArtifacts(self, request, context):
        shas = [check_sha(s) for s in request.sha256]
        return farm_pb2.MissingArtifactsResponse(sha256=await self.coord.in_store(self.coord.missing_artifacts, shas))

    @rpc
    async def UploadArtifact(self, request_iterator, context):
        return await self.coord.receive_artifact(request_iterator)

    @rpc
    async def SubmitCampaign(self, request, context):
        campaign_id = await self.coord.in_files(self.coord.submit_campaign, request.spec_json)
        return farm_pb2.SubmitCampaignResponse(campaign_id=campaign_id)

    @rpc
    async def GetStatus(self, request, context):
        return await self.coord.in_store(self.coord.status, request.campaign_id)

    @rpc
    async def GetReport(self, request, context):
        state, files = await self.coord.in_files(self.coord.campaigns.report_files, request.campaign_id)
        return farm_pb2.GetReportResponse(state=state.value,
                                          files=[farm_pb2.ReportFile(path=p, data=d) for p, d in files])

    @rpc
    async def CancelCampaign(self, request, context):
        state, cancelled = await self.coord.in_store(self.coord.campaigns.cancel, request.campaign_id)
        return farm_pb2.CancelCampaignResponse(state=state.value, jobs_cancelled=cancelled)


class FarmServer:
    """The aio server on an event loop thread of its own, driven from ordinary threads: `start`,
    `stop`, `wait_for_termination`. It also runs the scheduler tick and the campaign threads."""

    def __init__(self, coord: Coordinator, security: ServerSecurity):
        self.coordinator = coord
        self.port = 0
        self._security = security
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="farm-grpc", daemon=True)
        self._loop_thread.start()
        self._tick_stop = threading.Event()
        self._tick_thread = threading.Thread(target=self._tick_loop, name="farm-tick", daemon=True)
        coord.scheduler.add_listener(self._jobs_queued)
        self.gate = Gate(security, coord.config.limits)

    def _on_loop(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _jobs_queued(self, devices: frozenset[str] | None) -> None:
        """Called by the scheduler on whatever thread changed the queue: wake lease waiters on the loop."""
        try:
            self._loop.call_soon_threadsafe(self.coordinator.waiters.changed, devices)
        except RuntimeError:       # the loop is closed: the server has stopped, nobody waits
            pass

    async def _build(self, address: str) -> int:
        config = self.coordinator.config
        limits = config.limits
        options = [("grpc.max_receive_message_length", limits.max_message_bytes),
                   ("grpc.max_send_message_length", max(MAX_REPLY_BYTES, limits.max_message_bytes)),
                   ("grpc.so_reuseport", 0)]
        ceiling = limits.max_calls + limits.max_lease_waits + limits.max_streams + limits.max_open_calls + 64
        self._server = grpc.aio.server(options=options, maximum_concurrent_rpcs=ceiling)
        self.gate.register(self._server, farm_pb2_grpc.add_AgentServiceServicer_to_server,
                           AgentServicer(self.coordinator))
        self.gate.register(self._server, farm_pb2_grpc.add_CampaignServiceServicer_to_server,
                           CampaignServicer(self.coordinator))
        self._health = health.aio.HealthServicer()
        self.gate.register(self._server, health_pb2_grpc.add_HealthServicer_to_server, self._health)
        credentials = self._security.server_credentials()
        if credentials is None:
            return self._server.add_insecure_port(address)
        return self._server.add_secure_port(address, credentials)

    def bind(self, address: str) -> int:
        try:
            self.port = self._on_loop(self._build(address))
        except RuntimeError as exc:     # grpc: "Failed to bind to address ..."
            self._close_loop()
            raise FailedPrecondition(f"cannot listen on {address} ({exc})", step="serve") from None
        except BaseException:
            self._close_loop()
            raise
        if self.port == 0:
            self._close_loop()
            raise FailedPrecondition(f"cannot listen on {address} (in use?)", step="serve")
        return self.port

    def _tick_loop(self) -> None:
        presence = self.coordinator.presence
        while not self._tick_stop.wait(self.coordinator.config.tick_interval_s):
            try:
                outcome = self.coordinator.scheduler.tick(presence.collect())
                presence.forget(*outcome.missing, *outcome.evicted)
            except Exception:  # noqa: BLE001 - the clock must keep ticking; the cause is logged
                log.exception("scheduler tick failed")
            try:
                self.coordinator.store.checkpoint()
            except Exception:  # noqa: BLE001 - the next tick tries again; the cause is logged
                log.exception("store checkpoint failed")

    async def _set_health(self, status) -> None:
        for name in SERVICES:
            await self._health.set(name, status)

    def start(self) -> None:
        self.coordinator.scheduler.on_boot()
        self._on_loop(self._server.start())
        self._tick_thread.start()
        self.coordinator.campaigns.start()
        self._on_loop(self._set_health(health_pb2.HealthCheckResponse.SERVING))

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop serving (calls in progress get `grace` seconds), the tick and the campaigns; close the store."""
        done = threading.Event()
        if self._loop.is_closed():
            done.set()
            return done
        self._on_loop(self._health.enter_graceful_shutdown())
        self.coordinator.campaigns.stop()
        self._tick_stop.set()
        if self._tick_thread.is_alive():
            self._tick_thread.join()
        self._on_loop(self._server.stop(grace))
        self.coordinator.close_pools()
        self.coordinator.store.close()
        self._close_loop()
        done.set()
        return done

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._on_loop(self._server.wait_for_termination(timeout))


def build_server(config: ServerConfig) -> tuple[FarmServer, int]:
    """A ready-to-start coordinator server bound to host:port (port 0 picks one); returns it and the port."""
    config.security.check_exposure(config.host)
    config.security.server_credentials()          # a key that does not match its certificate: refused now
    coord = Coordinator(config)
    server = FarmServer(coord, config.security)
    try:
        port = server.bind(f"{config.host}:{config.port}")
    except BaseException:
        coord.close_pools()
        coord.store.close()
        raise
    return server, port
