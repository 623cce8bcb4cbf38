"""The coordinator's gRPC server: AgentService, CampaignService and the standard health service.

`build_server` wires the store, scheduler, artifact files and campaign manager together; the
returned server also runs the scheduler's clock tick and the campaign threads, and stops them
with itself. Typed errors become gRPC status codes in exactly one place (`status_code_for`).
Security: `ServerConfig.security` adds the token interceptor and TLS; `limits` bounds messages,
artifacts, registrations (registration.py), campaigns (admission.py) and the candidates a running
campaign creates (candidate_cap.py); malformed requests are refused by name (interceptors.py)."""
from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.farm.admission import check_campaign
from coordinator.farm.campaign import CampaignManager
from coordinator.farm.candidate_cap import BoundedScheduler
from coordinator.farm.evaluator import FarmContext
from coordinator.farm.interceptors import MalformedRequests
from coordinator.farm.registration import check_registration
from coordinator.farm.scheduler import LeasePolicy
from coordinator.farm.spec import spec_from_wire
from coordinator.farm.states import JobState, is_alive
from coordinator.farm.store import Store
from shared.artifacts import CHUNK_BYTES, ArtifactStore, check_sha
from shared.auth import ServerSecurity
from shared.errors import (DataError, EvaluationError, FailedPrecondition, InvalidArgument, ModelError, NotFound,
                           QfarmError, ResourceExhausted, Unauthenticated)
from shared.limits import DEFAULT_LIMITS, Limits
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from shared.version import PROTOCOL_VERSION, package_version

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
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


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    """The one mapping from error types to gRPC status codes."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, grpc.RpcError):    # the request stream itself failed (oversize message, client gone):
        log.info("request stream ended by the transport: %s", exc)   # gRPC has already set the status
        context.abort(grpc.StatusCode.CANCELLED, "the request stream failed")
    code = status_code_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error in an RPC")
        context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
    context.abort(code, str(exc))


def rpc(method: Callable) -> Callable:
    """Wrap a servicer method so typed errors reach the client as status codes with their message."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - mapped, logged when unexpected
                _abort(context, exc)
        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped, logged when unexpected
            _abort(context, exc)
    return unary


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051                      # 0: pick a free port
    policy: LeasePolicy = LeasePolicy()
    tick_interval_s: float = 1.0
    max_workers: int = 64                  # long-polling agents each hold one for up to policy.max_wait_s
    limits: Limits = DEFAULT_LIMITS         # message, artifact, model and campaign bounds
    security: ServerSecurity = ServerSecurity()   # token and TLS; none: loopback only
    interceptors: tuple = ()               # further grpc.ServerInterceptors, after the token check
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def __post_init__(self) -> None:
        if self.limits.max_message_bytes < MIN_MESSAGE_BYTES:
            raise InvalidArgument(f"max_message_bytes={self.limits.max_message_bytes} is below {MIN_MESSAGE_BYTES}: "
                                  f"artifacts travel in {CHUNK_BYTES}-byte chunks", step="config")


class Stats:
    """Bytes and results counters, for `coordinator status` and bench/farm.py."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = {"artifact_bytes_sent": 0, "artifact_bytes_received": 0, "job_bytes_sent": 0}

    def add(self, key: str, amount: int) -> None:
        with self._lock:
            self.values[key] += amount


class Coordinator:
    """Everything behind the services; shared by both servicers."""

    def __init__(self, config: ServerConfig):
        self.config = config
        data_dir = Path(config.data_dir).resolve()
        self.store = Store(data_dir)
        self.data_dir = data_dir
        self.scheduler = BoundedScheduler(self.store, config.policy, config.clock, config.limits)
        self.artifacts = ArtifactStore(data_dir / "artifacts")
        self.ctx = FarmContext(self.store, self.scheduler, self.artifacts, threading.Event())
        self.campaigns = CampaignManager(self.ctx, data_dir)
        self.stats = Stats()

    def receive_artifact(self, chunks: Iterator[farm_pb2.ArtifactChunk]) -> farm_pb2.UploadArtifactResponse:
        first = next(chunks, None)
        if first is None or not first.artifact.sha256:
            raise InvalidArgument("an upload must start with a chunk naming the artifact's sha256", step="upload")
        meta = job_pb2.Artifact()
        meta.CopyFrom(first.artifact)
        check_sha(meta.sha256)
        limit = self.config.limits.max_artifact_bytes
        if meta.size_bytes > limit:
            raise ResourceExhausted(f"artifact {meta.name[:80] or meta.sha256} declares {meta.size_bytes} bytes, "
                                    f"above the limit max_artifact_bytes={limit}", step="upload")

        def pieces() -> Iterator[bytes]:
            expected = 0
            for chunk in _chain(first, chunks):
                if chunk.offset != expected:
                    raise InvalidArgument(f"upload of {meta.sha256} has a chunk at offset {chunk.offset}, "
                                          f"expected {expected}", step="upload")
                expected += len(chunk.data)
                if expected > limit:
                    raise ResourceExhausted(f"upload of {meta.sha256} passed {limit} bytes, the limit "
                                            f"max_artifact_bytes={limit}", step="upload")
                if meta.size_bytes and expected > meta.size_bytes:
                    raise InvalidArgument(f"artifact {meta.sha256} declared {meta.size_bytes} bytes, received more",
                                          step="upload")
                self.stats.add("artifact_bytes_received", len(chunk.data))
                yield chunk.data
            if meta.size_bytes and expected != meta.size_bytes:     # before the file is kept, not after
                raise InvalidArgument(f"artifact {meta.sha256} declared {meta.size_bytes} bytes, received "
                                      f"{expected}", step="upload")

        present = self.artifacts.has(meta.sha256)
        stored = self.artifacts.put_stream(pieces(), meta.sha256)
        with self.store.transaction() as c:
            c.put_artifact(stored.sha256, stored.size_bytes, meta.kind or "file", meta.name, self.config.clock())
        meta.size_bytes = stored.size_bytes
        return farm_pb2.UploadArtifactResponse(artifact=meta, already_present=present)

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


def _chain(first, rest):
    yield first
    yield from rest


class AgentServicer(farm_pb2_grpc.AgentServiceServicer):
    def __init__(self, coord: Coordinator):
        self.coord = coord

    @rpc
    def Register(self, request, context):
        caps = request.capabilities
        check_registration(request.device, request.name, caps.protocol_version, caps.package_version)
        agent_id = self.coord.scheduler.register(
            request.device, request.name or context.peer(), caps.SerializeToString(), max(1, caps.slots),
            [(r.job_id, r.attempt) for r in request.running])
        policy = self.coord.config.policy
        return farm_pb2.RegisterResponse(agent_id=agent_id, heartbeat_interval_s=policy.heartbeat_interval_s,
                                         lease_ttl_s=policy.lease_ttl_s, package_version=package_version(),
                                         protocol_version=PROTOCOL_VERSION)

    @rpc
    def Heartbeat(self, request, context):
        cancel = self.coord.scheduler.heartbeat(request.agent_id, [(r.job_id, r.attempt) for r in request.running],
                                                request.free_slots, request.busy_slots)
        return farm_pb2.HeartbeatResponse(cancel=[farm_pb2.JobRef(job_id=j, attempt=a) for j, a in cancel])

    @rpc
    def Lease(self, request, context):
        jobs = self.coord.scheduler.wait_lease(request.agent_id, max(1, request.max_jobs), request.wait_s)
        resp = farm_pb2.LeaseResponse(jobs=jobs)
        self.coord.stats.add("job_bytes_sent", resp.ByteSize())
        return resp

    @rpc
    def FetchArtifact(self, request, context):
        with self.coord.store.transaction() as c:
            known = c.has_artifacts([check_sha(request.sha256)])
        if not known:
            raise NotFound(f"artifact {request.sha256} is not stored on the coordinator", step="artifact")
        meta = job_pb2.Artifact(sha256=request.sha256)
        for offset, data in self.coord.artifacts.chunks(request.sha256, request.offset, CHUNK_BYTES):
            self.coord.stats.add("artifact_bytes_sent", len(data))
            yield farm_pb2.ArtifactChunk(artifact=meta, data=data, offset=offset)

    @rpc
    def UploadArtifact(self, request_iterator, context):
        return self.coord.receive_artifact(request_iterator)

    @rpc
    def ReportResult(self, request, context):
        outcome = self.coord.scheduler.report(request.agent_id, request.result, request.fp32_outputs.sha256)
        return farm_pb2.ReportResultResponse(accepted=outcome.accepted, duplicate=outcome.duplicate,
                                             reason=outcome.reason)

    @rpc
    def Deregister(self, request, context):
        self.coord.scheduler.deregister(request.agent_id)
        return farm_pb2.DeregisterResponse()


class CampaignServicer(farm_pb2_grpc.CampaignServiceServicer):
    def __init__(self, coord: Coordinator):
        self.coord = coord

    @rpc
    def MissingArtifacts(self, request, context):
        shas = [check_sha(s) for s in request.sha256]
        with self.coord.store.transaction() as c:
            known = c.has_artifacts(shas)
        missing = [s for s in dict.fromkeys(shas) if s not in known or not self.coord.artifacts.has(s)]
        return farm_pb2.MissingArtifactsResponse(sha256=missing)

    @rpc
    def UploadArtifact(self, request_iterator, context):
        return self.coord.receive_artifact(request_iterator)

    @rpc
    def SubmitCampaign(self, request, context):
        return farm_pb2.SubmitCampaignResponse(campaign_id=self.coord.submit_campaign(request.spec_json))

    @rpc
    def GetStatus(self, request, context):
        return self.coord.status(request.campaign_id)

    @rpc
    def GetReport(self, request, context):
        state, files = self.coord.campaigns.report_files(request.campaign_id)
        return farm_pb2.GetReportResponse(state=state.value,
                                          files=[farm_pb2.ReportFile(path=p, data=d) for p, d in files])


class FarmServer(grpc.Server):
    """A grpc.Server that also runs (and stops) the scheduler tick and the campaign threads."""

    def __init__(self, inner: grpc.Server, coord: Coordinator, health_servicer: health.HealthServicer,
                 executor: futures.ThreadPoolExecutor | None = None):
        self._inner = inner
        self._executor = executor
        self.coordinator = coord
        self._health = health_servicer
        self._tick_stop = threading.Event()
        self._tick_thread = threading.Thread(target=self._tick_loop, name="farm-tick", daemon=True)

    def _tick_loop(self) -> None:
        while not self._tick_stop.wait(self.coordinator.config.tick_interval_s):
            try:
                self.coordinator.scheduler.tick()
            except Exception:  # noqa: BLE001 - the clock must keep ticking; the cause is logged
                log.exception("scheduler tick failed")

    def start(self) -> None:
        self.coordinator.scheduler.on_boot()
        self._inner.start()
        self._tick_thread.start()
        self.coordinator.campaigns.start()
        for name in ("", "qfarm.v1.AgentService", "qfarm.v1.CampaignService"):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace):
        self._health.enter_graceful_shutdown()
        self.coordinator.campaigns.stop()
        self._tick_stop.set()
        if self._tick_thread.is_alive():
            self._tick_thread.join()
        done = self._inner.stop(grace)
        done.wait()
        if self._executor is not None:   # handlers still inside a call (a Lease long-poll) end before the store
            self._executor.shutdown(wait=True)
        self.coordinator.store.close()
        return done

    def wait_for_termination(self, timeout=None):
        return self._inner.wait_for_termination(timeout)

    def add_generic_rpc_handlers(self, generic_rpc_handlers):
        return self._inner.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name, method_handlers):
        return self._inner.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address):
        return self._inner.add_insecure_port(address)

    def add_secure_port(self, address, server_credentials):
        return self._inner.add_secure_port(address, server_credentials)


def build_server(config: ServerConfig) -> tuple[FarmServer, int]:
    """A ready-to-start coordinator server bound to host:port (port 0 picks one); returns it and the port."""
    config.security.check_exposure(config.host)
    coord = Coordinator(config)
    options = [("grpc.max_receive_message_length", config.limits.max_message_bytes),
               ("grpc.max_send_message_length", max(MAX_REPLY_BYTES, config.limits.max_message_bytes))]
    interceptors = [*config.security.interceptors(), MalformedRequests(), *config.interceptors]
    executor = futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc")
    inner = grpc.server(executor, options=options, interceptors=interceptors)
    farm_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(coord), inner)
    farm_pb2_grpc.add_CampaignServiceServicer_to_server(CampaignServicer(coord), inner)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, inner)
    port = config.security.bind(inner, f"{config.host}:{config.port}")
    if port == 0:
        raise FailedPrecondition(f"cannot listen on {config.host}:{config.port} (in use?)", step="serve")
    return FarmServer(inner, coord, health_servicer, executor), port
