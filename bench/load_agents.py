"""Fake agents for bench/load.py: Locust users that speak the agent protocol over real gRPC, with
the project's stubs, the agent token and the identity each registration hands out, and behave
like agent/worker.py's loop without running anything:

  * register (this build's protocol version), again when the coordinator forgets them;
  * heartbeat every interval the coordinator asks for, listing the jobs they run;
  * keep a Work stream open, granting credit for their free slots: the coordinator sends jobs on
    it as they are queued, and an idle agent's stream waits there (what agent/worker.py does);
  * for each leased job, "run" it (`Plan.job_s`, 0 by default) and report a result with the
    fields a real ONNX Runtime agent fills on the stream, with the credit of the slot it frees;
  * deregister when stopped, as a real agent does on SIGTERM.

Locust's pattern for protocols other than HTTP: a client that wraps the calls and fires Locust's
`request` event for each (so its statistics hold every call's latency and failure), used by a
User. Locust's users are greenlets; gRPC and gevent need care. gRPC's gevent mode
(`grpc.experimental.gevent.init_gevent()` after monkey-patching) runs every socket operation of
every channel through gevent's Python sockets and thread pool: measured here, it cost the bench
~1.5 ms of CPU per call with 1000 agents and added 100-1000 ms to the latencies it reported (a
separate plain client saw 3 ms p50 at the same time). So this module does not monkey-patch
(LOCUST_SKIP_MONKEY_PATCH, set before Locust is imported) and runs every call with grpc.aio on an
asyncio loop in one native thread (`Bridge`); a user's greenlet waits for its call cooperatively,
and the latency Locust records is the call's own, timed on that loop. Locust's runner, users,
statistics and event hooks are used as documented. Blocking work elsewhere in the process must
not run on the gevent hub (bench/load.py runs it on gevent's thread pool).

Import this module before anything imports Locust, in a process of its own (bench/load.py)."""
from __future__ import annotations

import os

os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"      # before Locust is imported: see above

import asyncio  # noqa: E402
import collections  # noqa: E402
import itertools  # noqa: E402
import random  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Callable, ClassVar  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.lock  # noqa: E402
import gevent.pool  # noqa: E402
import grpc  # noqa: E402
from locust import User, constant, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from shared.auth import METADATA_KEY, SCHEME, AgentIdentity  # noqa: E402
from shared.limits import MAX_WORK_CREDIT  # noqa: E402
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2  # noqa: E402
from shared.version import PROTOCOL_VERSION  # noqa: E402

REQUEST_TYPE = "grpc"
# what agent/worker.py does on an error (its _REREGISTER and _FATAL_AT_REGISTER)
REREGISTER = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
FATAL_AT_REGISTER = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                     grpc.StatusCode.FAILED_PRECONDITION)
BACKOFF_S = (0.5, 5.0)


@dataclass(frozen=True)
class Plan:
    """What one group of fake agents does."""

    device: str                       # device class they register under
    agent_token: str | None           # the agent role's token (None: a coordinator without tokens)
    job_s: float = 0.0                # how long "running" a job takes
    slots: int = 1


@dataclass
class Tally:
    """What the fake agents saw, beyond Locust's per-call statistics."""

    registered: int = 0               # first registrations that succeeded
    reregistered: int = 0             # registrations after the coordinator forgot an agent
    register_retries: int = 0
    fatal: list[str] = field(default_factory=list)
    leased: int = 0                   # jobs handed out
    accepted: int = 0                 # results recorded
    duplicate: int = 0
    refused: int = 0                  # results answered not accepted, or refused with an error
    cancels: int = 0                  # running jobs the coordinator told an agent to stop
    deregistered: int = 0
    deregister_failures: int = 0


class Bridge:
    """An asyncio loop on a native thread, where every gRPC call of the fake agents runs; the
    greenlet that makes a call waits for its result cooperatively (other greenlets run). Finished
    calls are handed to the hub through one async watcher, which also keeps the hub from
    concluding that greenlets waiting on the other thread wait forever."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._finished: collections.deque = collections.deque()
        self._wakeup = gevent.get_hub().loop.async_()
        self._wakeup.start(self._deliver)
        self._thread = threading.Thread(target=self.loop.run_forever, name="load-grpc", daemon=True)
        self._thread.start()

    def run(self, coroutine):
        """Run `coroutine` on the loop and return its result (or raise its exception); a greenlet
        killed while it waits (Locust stopping its user) cancels it."""
        done = gevent.event.AsyncResult()
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        future.add_done_callback(lambda f: self._finish(done, f))
        try:
            return done.get()
        except BaseException:
            future.cancel()
            raise

    def _finish(self, done: gevent.event.AsyncResult, future) -> None:
        """On the loop's thread: queue the outcome for the hub and wake it (both thread-safe)."""
        self._finished.append((done, future))
        self._wakeup.send()

    def _deliver(self) -> None:
        """On the hub: hand each finished call's outcome to the greenlet waiting for it."""
        while self._finished:
            done, future = self._finished.popleft()
            if future.cancelled():
                done.set_exception(asyncio.CancelledError())
            elif future.exception() is not None:
                done.set_exception(future.exception())
            else:
                done.set(future.result())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self._wakeup.stop()


class Connections:
    """`count` grpc.aio channels to the coordinator, each its own TCP connection (a local
    subchannel pool: channels with equal arguments would otherwise share one), with an agent
    service stub each. Fake agents spread over them."""

    def __init__(self, bridge: Bridge, address: str, count: int):
        self.bridge = bridge

        async def open_all() -> list[tuple[grpc.aio.Channel, farm_pb2_grpc.AgentServiceStub]]:
            opened = []
            for _ in range(count):
                channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                opened.append((channel, farm_pb2_grpc.AgentServiceStub(channel)))
            return opened

        self._opened = bridge.run(open_all())
        self._next = itertools.count()

    def __len__(self) -> int:
        return len(self._opened)

    def pick(self) -> farm_pb2_grpc.AgentServiceStub:
        return self._opened[next(self._next) % len(self._opened)][1]

    def close(self) -> None:
        async def close_all() -> None:
            for channel, _ in self._opened:
                await channel.close()

        self.bridge.run(close_all())


class AgentClient:
    """The agent service's calls, each timed on the gRPC loop and fired as a Locust request event."""

    def __init__(self, bridge: Bridge, stub: farm_pb2_grpc.AgentServiceStub, token: str | None,
                 fire: Callable[..., None]):
        self.bridge, self.stub = bridge, stub
        self._auth = ((METADATA_KEY, SCHEME + token),) if token else ()
        self._fire = fire
        self.identity: AgentIdentity | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._auth + (self.identity.metadata() if self.identity is not None else ())

    def call(self, name: str, request, timeout: float):
        """One unary call; RpcError (after firing it as a failure) when it fails."""
        method, metadata = getattr(self.stub, name), self.metadata()

        async def timed():
            started = time.perf_counter()
            try:
                response = await method(request, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                return None, exc, time.perf_counter() - started
            return response, None, time.perf_counter() - started

        response, error, elapsed = self.bridge.run(timed())
        self._fire(request_type=REQUEST_TYPE, name=name,
                   response_time=1000 * elapsed, response_length=0 if error else response.ByteSize(),
                   exception=error, context={})
        if error is not None:
            raise error
        return response


class WorkCall:
    """One Work stream, driven from greenlets: every read and write runs on the gRPC loop (writes one
    at a time, as grpc.aio requires) and is timed there."""

    def __init__(self, client: AgentClient):
        self.client = client
        metadata = client.metadata()

        async def open_call():
            return client.stub.Work(metadata=metadata)

        self.call = client.bridge.run(open_call())
        self._writing = gevent.lock.BoundedSemaphore()

    def write(self, request: farm_pb2.WorkRequest) -> float:
        """Send one message; the loop's clock when it was handed to gRPC."""
        async def timed_write():
            started = time.perf_counter()
            await self.call.write(request)
            return started

        with self._writing:
            return self.client.bridge.run(timed_write())

    def read(self) -> tuple[farm_pb2.WorkResponse | None, float]:
        """The next message (None: the coordinator ended the stream) and the loop's clock when it came;
        an RpcError when the stream failed."""
        async def timed_read():
            response = await self.call.read()
            return (None if response is grpc.aio.EOF else response), time.perf_counter()

        return self.client.bridge.run(timed_read())

    def cancel(self) -> None:
        async def cancel():
            self.call.cancel()

        self.client.bridge.run(cancel())


class ResultRefused(Exception):
    """A report the coordinator answered without recording it (Locust counts it as a failure)."""


def ok_result(job: job_pb2.Job) -> job_pb2.DeviceResult:
    """The result a real ONNX Runtime agent reports for a classification candidate."""
    result = job_pb2.DeviceResult(
        job_id=job.job_id, attempt=job.attempt, candidate_id=job.candidate.id, device=job.device,
        status=job_pb2.RESULT_STATUS_OK, top1_agreement=0.98, top5_agreement=1.0, top1_accuracy=0.74,
        size_bytes=1_300_000, latency_ms_p50=3.1, latency_ms_p90=3.4, num_images=100, wall_seconds=4.2,
        fp32_latency_ms_p50=4.5, latency_ratio_vs_fp32=0.69, latency_ratio_p10=0.66, latency_ratio_p90=0.72,
        task="classification", output_sqnr_db=31.5, cosine=0.9993, kl_divergence=0.004,
        runtime=job_pb2.RuntimeInfo(runtime="onnxruntime", version="1.23.2", providers=["CPUExecutionProvider"],
                                    options="graph_optimization_level=all; intra_op_threads=1"))
    result.outputs.add(name="logits", sqnr_db=31.5, cosine=0.9993, kl=0.004)
    return result


class FakeAgent(User):
    """One fake agent. Subclasses set `plan`, `tally` and `connections` (`group` makes one)."""

    abstract = True
    plan: ClassVar[Plan]
    tally: ClassVar[Tally]
    connections: ClassVar[Connections]
    wait_time = constant(0)

    def on_start(self) -> None:
        self.client = AgentClient(self.connections.bridge, self.connections.pick(), self.plan.agent_token,
                                  self.environment.events.request.fire)
        self.running: dict[str, int] = {}
        self.interval = 2.0
        self._beats = None
        self._registering = gevent.lock.BoundedSemaphore()
        self._jobs = gevent.pool.Group()               # jobs "running", one greenlet each
        self.stream: WorkCall | None = None
        self._granted_at = 0.0                         # when credit last went out (the loop's clock)
        self._answers: dict[tuple[str, int], gevent.event.AsyncResult] = {}
        self.reporting: set[str] = set()              # jobs whose result is out: their slots are free
        self._register()
        self._beats = gevent.spawn(self._heartbeats)

    def on_stop(self) -> None:
        if self._beats is not None:
            self._beats.kill()
        if getattr(self, "_jobs", None) is not None:
            self._jobs.kill()
        if getattr(self, "stream", None) is not None:
            self.stream.cancel()
        if getattr(self, "client", None) is None or self.client.identity is None:
            return
        try:
            self.client.call("Deregister", farm_pb2.DeregisterRequest(agent_id=self.client.identity.agent_id), 10)
        except grpc.RpcError:
            self.tally.deregister_failures += 1     # Locust has it too; the coordinator evicts the agent later
        else:
            self.tally.deregistered += 1

    # ------------------------------------------------------------------------- protocol
    def _register(self, again: bool = False) -> None:
        """Register, proving the identity this one replaces (if any) and listing the jobs it runs,
        retrying with backoff as agent/worker.py does; stop on a refusal retrying cannot cure."""
        plan, tally = self.plan, self.tally
        caps = farm_pb2.AgentCapabilities(slots=plan.slots, protocol_version=PROTOCOL_VERSION,
                                          host=farm_pb2.HostInfo(hostname="load-bench", cores=1))
        running = [farm_pb2.JobRef(job_id=j, attempt=a) for j, a in self.running.items()]
        request = farm_pb2.RegisterRequest(device=plan.device, name=f"fake-{plan.device}-{id(self):x}",
                                           capabilities=caps, running=running)
        delay = BACKOFF_S[0]
        while True:
            try:
                resp = self.client.call("Register", request, 30)
                break
            except grpc.RpcError as exc:
                if exc.code() in FATAL_AT_REGISTER:
                    tally.fatal.append(f"{exc.code().name}: {exc.details()}")
                    raise StopUser() from exc
                tally.register_retries += 1
                gevent.sleep(delay * (0.5 + random.random()))
                delay = min(2 * delay, BACKOFF_S[1])
        self.client.identity = AgentIdentity(resp.agent_id, resp.agent_secret)
        self.interval = resp.heartbeat_interval_s or self.interval
        if again:
            tally.reregistered += 1
        else:
            tally.registered += 1

    def _failed(self, exc: grpc.RpcError, identity: AgentIdentity) -> None:
        """agent/worker.py's reaction: register again when the coordinator forgot the identity the
        failed call used (once, whichever of heartbeat and stream notices first), else back off."""
        if exc.code() not in REREGISTER:
            gevent.sleep(BACKOFF_S[0])
            return
        with self._registering:
            if self.client.identity is identity:
                self._register(again=True)

    def _heartbeats(self) -> None:
        """As agent/worker.py: one heartbeat, then the interval, then the next."""
        while True:
            gevent.sleep(self.interval)
            identity = self.client.identity
            running = [farm_pb2.JobRef(job_id=j, attempt=a) for j, a in self.running.items()]
            busy = len(running) - len(self.reporting)      # a reporting job's slot is free (its credit went out)
            request = farm_pb2.HeartbeatRequest(agent_id=identity.agent_id, running=running,
                                                free_slots=self.plan.slots - busy, busy_slots=busy)
            try:
                resp = self.client.call("Heartbeat", request, 10)
            except grpc.RpcError as exc:
                self._failed(exc, identity)
                continue
            for ref in resp.cancel:
                if self.running.get(ref.job_id) == ref.attempt:
                    self.tally.cancels += 1
                    self.running.pop(ref.job_id, None)

    @task
    def serve(self) -> None:
        """As agent/worker.py: one Work stream with credit for every free slot; each job it brings
        runs (and is reported on the stream) on its own greenlet; a failed stream is opened again."""
        plan, tally = self.plan, self.tally
        identity = self.client.identity
        try:
            self.stream = stream = WorkCall(self.client)
            credit = min(plan.slots - len(self.running), MAX_WORK_CREDIT)     # what a stream keeps, at most
            self._granted_at = stream.write(farm_pb2.WorkRequest(more_jobs=credit))
            while True:
                response, arrived = stream.read()
                if response is None:
                    return
                if response.jobs:
                    self._fire("Work (jobs)", arrived - self._granted_at, response.ByteSize())
                    tally.leased += len(response.jobs)
                    for job in response.jobs:
                        self.running[job.job_id] = job.attempt
                        self._jobs.spawn(self._run, job)
                if response.HasField("result_of"):
                    waiter = self._answers.pop((response.result_of.job_id, response.result_of.attempt), None)
                    if waiter is not None:
                        waiter.set((response.result, arrived))
        except grpc.RpcError as exc:
            self._fire("Work stream", 0.0, 0, exc)
            self._failed(exc, identity)
        finally:
            self.stream = None
            for waiter in self._answers.values():
                waiter.set((None, 0.0))
            self._answers = {}

    def _fire(self, name: str, seconds: float, length: int, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(request_type=REQUEST_TYPE, name=name, response_time=1000 * seconds,
                                             response_length=length, exception=exception, context={})

    def _run(self, job: job_pb2.Job) -> None:
        try:
            if self.plan.job_s:
                gevent.sleep(self.plan.job_s)
            self.reporting.add(job.job_id)
            self._report(job)
        finally:
            self.reporting.discard(job.job_id)
            self.running.pop(job.job_id, None)

    def _report(self, job: job_pb2.Job) -> None:
        """On the stream with one more credit (the slot this job frees), as agent/worker.py does."""
        tally, stream = self.tally, self.stream
        request = farm_pb2.ReportResultRequest(agent_id=self.client.identity.agent_id, result=ok_result(job))
        if stream is None:
            tally.refused += 1
            return
        waiter = self._answers[(job.job_id, job.attempt)] = gevent.event.AsyncResult()
        try:
            sent = self._granted_at = stream.write(farm_pb2.WorkRequest(result=request, more_jobs=1))
        except grpc.RpcError:
            tally.refused += 1
            return
        answer, arrived = waiter.get(timeout=60)
        if answer is None:
            tally.refused += 1
            self._fire("Work (result)", 0.0, 0, ResultRefused("the stream ended before the answer"))
        elif answer.accepted:
            tally.accepted += 1
            self._fire("Work (result)", arrived - sent, answer.ByteSize())
        elif answer.duplicate:
            tally.duplicate += 1
            self._fire("Work (result)", arrived - sent, answer.ByteSize())
        else:
            tally.refused += 1
            self._fire("Work (result, not recorded)", 0.0, 0, ResultRefused(answer.reason))


def group(plan: Plan, connections: Connections) -> tuple[type[FakeAgent], Tally]:
    """A FakeAgent class for one plan, and the tally its agents share."""
    tally = Tally()
    name = "FakeAgent_" + "".join(c if c.isalnum() else "_" for c in plan.device)
    cls = type(name, (FakeAgent,), {"plan": plan, "tally": tally, "connections": connections, "abstract": False})
    return cls, tally
