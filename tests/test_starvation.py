"""No one can starve the coordinator: waiting calls hold no thread, each kind of call has its own
budget overall and per peer, and authenticated control calls (status, heartbeat) keep answering
while 64 health Watch streams (no token needed), 200 Lease long-polls and 64 stalled uploads are
open against the same coordinator. Real server on 127.0.0.1 port 0; the flood comes from a
grpc.aio client on a thread of its own."""
from __future__ import annotations

import asyncio
import secrets
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.farm.access import Pool
from coordinator.farm.scheduler import PRIORITY_CANDIDATE, LeasePolicy
from coordinator.farm.waiters import LeaseWaiters
from coordinator.testing import ManualClock, ProtocolAgent, coordinator
from shared.auth import AgentIdentity, Credentials, ServerSecurity
from shared.hashing import sha256_bytes
from shared.limits import Limits
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from tests.security_support import coordinator_never_errs  # noqa: F401  (autouse fixture)

TOKEN = secrets.token_urlsafe(24)
AUTH = (("authorization", f"Bearer {TOKEN}"),)
WATCHES, LONG_POLLS, STALLED_UPLOADS = 64, 200, 64
ANSWER_WITHIN_S = 2.0           # a status or heartbeat under the flood (an idle coordinator: a few ms)
LONG = LeasePolicy(heartbeat_interval_s=1, missing_after_s=30, evict_after_s=60, lease_ttl_s=60, max_wait_s=30)


class Flood:
    """Holds calls open from a grpc.aio client on its own event loop thread until `close`."""

    def __init__(self, address: str):
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.release = None
        self.outcomes: dict[str, list[grpc.StatusCode]] = {"watch": [], "lease": [], "upload": []}
        self.tasks: list[asyncio.Future] = []
        self.channel = self._run(self._open())

    def _run(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _open(self):
        self.release = asyncio.Event()
        return grpc.aio.insecure_channel(self.address)

    async def _record(self, kind: str, call) -> None:
        try:
            await call
            self.outcomes[kind].append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as exc:
            self.outcomes[kind].append(exc.code())
        except asyncio.CancelledError:
            self.outcomes[kind].append(grpc.StatusCode.CANCELLED)

    async def _watch(self) -> None:
        call = health_pb2_grpc.HealthStub(self.channel).Watch(health_pb2.HealthCheckRequest(service=""))
        await call.read()            # the first status: the stream is open
        await self.release.wait()
        call.cancel()

    async def _lease(self, identity) -> None:
        stub = farm_pb2_grpc.AgentServiceStub(self.channel)
        await stub.Lease(farm_pb2.LeaseRequest(agent_id=identity.agent_id, max_jobs=1, wait_s=30),
                         metadata=AUTH + identity.metadata(), timeout=60)

    async def _upload(self) -> None:
        data = secrets.token_bytes(1024)
        meta = job_pb2.Artifact(sha256=sha256_bytes(data), size_bytes=2 * len(data), name="stalled.bin")
        release = self.release

        async def chunks():
            yield farm_pb2.ArtifactChunk(artifact=meta, data=data, offset=0)
            await release.wait()     # ... and the second chunk never comes

        await farm_pb2_grpc.CampaignServiceStub(self.channel).UploadArtifact(chunks(), metadata=AUTH, timeout=120)

    def start(self, kind: str, coroutine_factory, count: int) -> None:
        async def spawn():
            for _ in range(count):
                self.tasks.append(asyncio.ensure_future(self._record(kind, coroutine_factory())))
        self._run(spawn())

    def close(self) -> None:
        async def stop():
            self.release.set()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.channel.close()
        self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextmanager
def flooded(address: str) -> Iterator[Flood]:
    flood = Flood(address)
    try:
        yield flood
    finally:
        flood.close()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def timed(call) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def test_status_and_heartbeats_answer_while_watches_long_polls_and_stalled_uploads_are_open(tmp_path):
    with coordinator(tmp_path / "coord", policy=LONG, security=ServerSecurity(token=TOKEN)) as (server, address), \
            Credentials(token=TOKEN).channel(address) as channel:
        coord, gate = server.coordinator, server.gate
        campaigns = farm_pb2_grpc.CampaignServiceStub(channel)
        honest = ProtocolAgent(channel, "cpu-a", name="honest")
        honest.register()
        idle = []
        for i in range(LONG_POLLS):       # idle agents of a class with no work: each holds a long-poll
            agent = ProtocolAgent(channel, "cpu-idle", name=f"idle-{i}")
            agent.register()
            idle.append(agent.identity)
        with flooded(address) as flood:
            flood.start("watch", flood._watch, WATCHES)
            identities = iter(idle)
            flood.start("lease", lambda: flood._lease(next(identities)), LONG_POLLS)
            flood.start("upload", flood._upload, STALLED_UPLOADS)
            limits = coord.config.limits
            wait_until(lambda: coord.waiters.waiting("cpu-idle") == LONG_POLLS, 30, "every long-poll to wait")
            wait_until(lambda: gate.calls.in_progress(Pool.STREAM) == limits.max_streams_per_peer, 30,
                       "the stalled uploads to be admitted")
            wait_until(lambda: len(flood.outcomes["upload"]) == STALLED_UPLOADS - limits.max_streams_per_peer, 30,
                       "the uploads over the per-peer cap to be refused")
            wait_until(lambda: len(flood.outcomes["watch"]) == WATCHES - limits.max_open_calls_per_peer, 30,
                       "the watches over the per-peer cap to be refused")
            assert gate.calls.in_progress(Pool.OPEN) == limits.max_open_calls_per_peer

            status_s = [timed(lambda: campaigns.GetStatus(farm_pb2.GetStatusRequest(), timeout=10))
                        for _ in range(10)]
            heartbeat_s = [timed(lambda: honest.heartbeat()) for _ in range(10)]
            # a job for the honest agent is leased at once, whatever else waits
            job = job_pb2.Job(job_id="work@cpu-a", device="cpu-a")
            job.candidate.id = "work"
            coord.scheduler.submit(job, "candidate", PRIORITY_CANDIDATE, "test")
            lease_s = timed(lambda: honest.lease(wait_s=5))
            # a job for the idle class wakes exactly one of its 200 waiters
            spare = job_pb2.Job(job_id="spare@cpu-idle", device="cpu-idle")
            spare.candidate.id = "spare"
            coord.scheduler.submit(spare, "candidate", PRIORITY_CANDIDATE, "test")
            wait_until(lambda: flood.outcomes["lease"] == [grpc.StatusCode.OK], 10, "one long-poll to get the job")
            assert coord.waiters.waiting("cpu-idle") == LONG_POLLS - 1
            refused = {kind: set(flood.outcomes[kind]) for kind in ("watch", "upload")}
        assert max(status_s) < ANSWER_WITHIN_S, status_s
        assert max(heartbeat_s) < ANSWER_WITHIN_S, heartbeat_s
        assert lease_s < ANSWER_WITHIN_S, lease_s
        full = {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert refused == {"watch": full, "upload": full}, flood.outcomes
        wait_until(lambda: not [p for p in (tmp_path / "coord" / "artifacts").rglob("*") if p.is_file()], 10,
                   "the cut uploads' partial files to go")      # the server sees the cancels a moment later


def test_the_refusal_names_the_limit_and_other_peers_budgets_are_untouched(tmp_path):
    limits = Limits(max_open_calls_per_peer=2, max_open_calls=3)
    with coordinator(tmp_path / "coord", limits=limits) as (server, address), flooded(address) as flood:
        flood.start("watch", flood._watch, 4)
        wait_until(lambda: len(flood.outcomes["watch"]) == 2, 30, "two watches to be refused")
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as full:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_open_calls_per_peer=2" in full.value.details()
            assert farm_pb2_grpc.CampaignServiceStub(channel).GetStatus(farm_pb2.GetStatusRequest(), timeout=5)


def test_a_stalled_upload_is_cut_and_leaves_nothing(tmp_path):
    with coordinator(tmp_path / "coord", limits=Limits(max_stream_idle_s=1)) as (server, address), \
            flooded(address) as flood:
        started = time.monotonic()
        flood.start("upload", flood._upload, 1)
        wait_until(lambda: flood.outcomes["upload"], 10, "the stalled upload to be cut")
        assert flood.outcomes["upload"] == [grpc.StatusCode.DEADLINE_EXCEEDED]
        assert time.monotonic() - started < 5
        assert server.gate.calls.in_progress(Pool.STREAM) == 0
    assert not [p for p in (tmp_path / "coord" / "artifacts").rglob("*") if p.is_file()]


def test_a_long_poll_is_woken_by_a_new_job_and_a_newer_poll_ends_the_older(tmp_path):
    with coordinator(tmp_path / "coord", policy=LONG) as (server, address), grpc.insecure_channel(address) as channel:
        agent = ProtocolAgent(channel, "cpu-a")
        agent.register()
        job = job_pb2.Job(job_id="late@cpu-a", device="cpu-a")
        job.candidate.id = "late"
        threading.Timer(0.3, lambda: server.coordinator.scheduler.submit(job, "candidate", 0, "t")).start()
        started = time.monotonic()
        [leased] = agent.lease(wait_s=20)
        assert leased.job_id == "late@cpu-a" and time.monotonic() - started < 5     # woken, not timed out
        first: list = []
        thread = threading.Thread(target=lambda: first.append(agent.lease(wait_s=20)))
        thread.start()
        wait_until(lambda: server.coordinator.waiters.waiting("cpu-a") == 1, 10, "the first poll to wait")
        second = threading.Thread(target=lambda: agent.lease(wait_s=0.5))
        started = time.monotonic()
        second.start()
        thread.join(10)
        assert first == [[]] and time.monotonic() - started < 5          # ended by the newer poll
        second.join(10)


def test_waiters_wake_one_per_change_in_arrival_order_and_miss_no_change():
    async def scenario():
        waiters = LeaseWaiters()
        order: list[int] = []

        async def waiter(i: int):
            if await waiters.wait(f"agent-{i}", "cpu", waiters.version("cpu"), 5):
                order.append(i)

        tasks = [asyncio.ensure_future(waiter(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert waiters.waiting("cpu") == 5
        waiters.changed({"cpu"})
        waiters.changed({"other"})
        await asyncio.sleep(0.01)
        assert order == [0] and waiters.waiting("cpu") == 4
        waiters.changed(None)               # any class
        await asyncio.sleep(0.01)
        assert order == [0, 1]
        since = waiters.version("cpu")
        waiters.changed({"cpu"})             # lands between a lease attempt and the wait: not lost
        assert await asyncio.wait_for(waiters.wait("late", "cpu", since, 5), 1) is True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert waiters.waiting() == 0

    asyncio.run(scenario())


def test_idle_heartbeats_skip_the_store_yet_keep_the_agent_alive_and_the_rules_hold(tmp_path):
    policy = LeasePolicy(heartbeat_interval_s=1, missing_after_s=3, evict_after_s=10, lease_ttl_s=5, max_wait_s=1)
    clock = ManualClock()
    with coordinator(tmp_path / "coord", policy=policy, clock=clock) as (server, address), \
            grpc.insecure_channel(address) as channel:
        coord = server.coordinator
        through_store = []
        heartbeat = coord.scheduler.heartbeat_and_idle
        coord.scheduler.heartbeat_and_idle = lambda *a, **k: through_store.append(1) or heartbeat(*a, **k)
        agent = ProtocolAgent(channel, "cpu-a")
        agent.register()

        def state() -> str:
            with grpc.insecure_channel(address) as probe:
                [row] = farm_pb2_grpc.CampaignServiceStub(probe).GetStatus(farm_pb2.GetStatusRequest()).agents
            return row.state

        agent.heartbeat()                                   # through the store: found idle
        for _ in range(4):
            clock.advance(2)                                # 8 s of heartbeats every 2 s
            agent.heartbeat()
            time.sleep(0.25)                                # a few ticks write what was heard
        assert len(through_store) == 1 and state() == "idle"
        impostor = ProtocolAgent(channel, "cpu-a")
        impostor.identity = AgentIdentity(agent.agent_id, "x" * 43)
        with pytest.raises(grpc.RpcError) as denied:
            impostor.heartbeat()                            # a wrong secret is refused, fast path or not
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        clock.advance(policy.missing_after_s + 1)           # silent: missing, and no longer answered from memory
        wait_until(lambda: state() == "missing", 10, "the agent to go missing")
        agent.heartbeat()
        assert len(through_store) == 3 and state() == "idle"    # the impostor's and this one went through it
        clock.advance(policy.evict_after_s + 1)
        wait_until(lambda: state() == "evicted", 10, "the agent to be evicted")
        with pytest.raises(grpc.RpcError) as gone:
            agent.heartbeat()
        assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_short_store_calls_run_on_the_loop_only_while_the_store_is_free(tmp_path):
    """A heartbeat, lease or result runs right on the event loop when the store's lock is free,
    and on the store pool when someone holds it (a tick, a campaign): the loop never waits for it."""
    with coordinator(tmp_path / "coord") as (server, _address):
        coord, loop = server.coordinator, server._loop

        def where() -> str:
            with coord.store.transaction():
                return threading.current_thread().name

        assert server._on_loop(coord.in_short(where), 10) == "farm-grpc"
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with coord.store.transaction():
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(10)
        future = asyncio.run_coroutine_threadsafe(coord.in_short(where), loop)
        ticks = asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop)
        ticks.result(5)                   # the loop kept running while the call waited for the lock
        assert not future.done()
        release.set()
        assert future.result(10).startswith("store")
        holder.join(10)
