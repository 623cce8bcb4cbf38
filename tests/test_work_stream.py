"""The Work stream (farm.proto): jobs and results on one call per agent, under the same rules as
Lease and ReportResult. Real server on 127.0.0.1 port 0, the agent played message by message
with the harness (coordinator/testing.py's ProtocolWork), a real Agent for the end to end case."""
from __future__ import annotations

import secrets
import threading
import time

import grpc
import pytest

from coordinator.farm.scheduler import LeasePolicy
from coordinator.farm.states import JobState
from coordinator.testing import ManualClock, ProtocolAgent, coordinator, ok_result
from shared.auth import AgentIdentity, Credentials, ServerSecurity
from shared.limits import MAX_WORK_CREDIT
from shared.pb.qfarm.v1 import farm_pb2, job_pb2
from tests.security_support import coordinator_never_errs  # noqa: F401  (autouse fixture)

POLICY = LeasePolicy(heartbeat_interval_s=1, missing_after_s=30, evict_after_s=60, lease_ttl_s=60, max_wait_s=30)


def make_job(job_id: str, device: str = "cpu-a") -> job_pb2.Job:
    job = job_pb2.Job(job_id=job_id, device=device)
    job.candidate.id = f"cand-{job_id}"
    return job


def submit(server, *job_ids: str, device: str = "cpu-a") -> None:
    for job_id in job_ids:
        server.coordinator.scheduler.submit(make_job(job_id, device), "candidate", 0, "t")


def job_state(server, job_id: str):
    with server.coordinator.store.transaction() as c:
        return c.job(job_id)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def farm(tmp_path):
    with coordinator(tmp_path / "coord", policy=POLICY) as (server, address), grpc.insecure_channel(address) as channel:
        agent = ProtocolAgent(channel, "cpu-a")
        agent.register()
        yield server, agent, channel


def test_credit_brings_jobs_each_result_is_answered_and_frees_the_next_job(farm):
    server, agent, _ = farm
    submit(server, "j1", "j2", "j3")
    work = agent.work()
    work.send(more_jobs=2)
    first = work.receive()
    assert [j.job_id for j in first.jobs] == ["j1", "j2"] and not first.HasField("result_of")
    assert all(j.attempt == 1 for j in first.jobs)
    work.send(result=ok_result(first.jobs[0]), more_jobs=1)        # one message: a result and its slot's credit
    answer = work.receive()
    assert (answer.result_of.job_id, answer.result_of.attempt) == ("j1", 1)
    assert answer.result.accepted and not answer.result.duplicate
    assert [j.job_id for j in answer.jobs] == ["j3"]                # leased in the same transaction
    work.send(result=ok_result(first.jobs[0]))                       # the same result again: a duplicate
    again = work.receive()
    assert again.result.duplicate and not again.result.accepted and not again.jobs
    assert job_state(server, "j1").state == JobState.DONE
    assert job_state(server, "j3").state == JobState.LEASED and job_state(server, "j3").agent_id == agent.agent_id
    assert server.coordinator.scheduler.counters == {"results_accepted": 1, "results_duplicate": 1}
    work.close()
    assert work.receive() is None                                    # half-closed: it ends normally


def test_an_idle_stream_waits_for_jobs_without_a_thread_and_is_woken_by_a_new_job(farm):
    server, agent, _ = farm
    work = agent.work()
    work.send(more_jobs=1)
    wait_until(lambda: server.coordinator.waiters.waiting("cpu-a") == 1, 10, "the stream to wait")
    threading.Timer(0.2, lambda: submit(server, "late")).start()
    started = time.monotonic()
    response = work.receive()
    assert [j.job_id for j in response.jobs] == ["late"] and time.monotonic() - started < 5
    work.cancel()


def test_half_closing_takes_the_credit_back(farm):
    server, agent, _ = farm
    work = agent.work()
    work.send(more_jobs=3)
    wait_until(lambda: server.coordinator.waiters.waiting("cpu-a") == 1, 10, "the stream to wait")
    work.close()
    assert work.receive() is None
    wait_until(lambda: server.coordinator.waiters.waiting("cpu-a") == 0, 10, "the wait to end")
    submit(server, "after")
    assert job_state(server, "after").state == JobState.QUEUED


@pytest.mark.parametrize("more", [-1, MAX_WORK_CREDIT + 1])
def test_credit_out_of_bounds_ends_the_stream_naming_the_value(farm, more):
    _, agent, _ = farm
    work = agent.work()
    work.send(more_jobs=more)
    with pytest.raises(grpc.RpcError) as err:
        work.receive()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"more_jobs={more}" in err.value.details()


def test_a_result_for_a_job_it_does_not_hold_ends_the_stream_and_records_nothing(farm):
    server, agent, channel = farm
    other = ProtocolAgent(channel, "cpu-a", name="other")
    other.register()
    submit(server, "theirs")
    [job] = other.lease()
    work = agent.work()
    work.send(result=ok_result(job), more_jobs=1)
    with pytest.raises(grpc.RpcError) as err:
        work.receive()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'theirs'" in err.value.details()
    assert job_state(server, "theirs").state == JobState.LEASED and not server.coordinator.scheduler.results(["theirs"])


def test_a_result_naming_another_agent_is_refused(farm):
    server, agent, _ = farm
    submit(server, "j")
    work = agent.work()
    work.send(more_jobs=1)
    [job] = work.receive().jobs
    request = farm_pb2.WorkRequest(result=farm_pb2.ReportResultRequest(agent_id="someone-else", result=ok_result(job)))
    work._outbox.put(request)
    with pytest.raises(grpc.RpcError) as err:
        work.receive()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "someone-else" in err.value.details()
    assert not server.coordinator.scheduler.results(["j"])


def test_a_stream_without_a_proven_identity_or_with_the_client_token_is_refused(tmp_path):
    agent_token, client_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    security = ServerSecurity(agent_token=agent_token, client_token=client_token)
    with coordinator(tmp_path / "coord", policy=POLICY, security=security) as (server, address):
        for token, lie, code in ((client_token, False, grpc.StatusCode.PERMISSION_DENIED),
                                 (agent_token, True, grpc.StatusCode.PERMISSION_DENIED),
                                 (None, False, grpc.StatusCode.UNAUTHENTICATED)):
            with Credentials(token=token).channel(address) as channel:
                agent = ProtocolAgent(channel, "cpu-a")
                if lie:
                    agent.register()
                    agent.identity = AgentIdentity(agent.agent_id, "not-the-secret")
                work = agent.work()
                work.send(more_jobs=1)
                with pytest.raises(grpc.RpcError) as err:
                    work.receive()
                assert err.value.code() == code


def test_an_evicted_agent_has_its_result_recorded_then_is_told_to_register_again(tmp_path):
    clock = ManualClock()
    policy = LeasePolicy(heartbeat_interval_s=1, missing_after_s=3, evict_after_s=10, lease_ttl_s=5, max_wait_s=30)
    with coordinator(tmp_path / "coord", policy=policy, clock=clock, tick_interval_s=3600) as (server, address), \
            grpc.insecure_channel(address) as channel:
        agent = ProtocolAgent(channel, "cpu-a")
        agent.register()
        submit(server, "j")
        work = agent.work()
        work.send(more_jobs=1)
        [job] = work.receive().jobs
        clock.advance(11)
        server.coordinator.scheduler.tick()           # evicted; its lease goes back to the queue as attempt 1
        with server.coordinator.store.transaction() as c:
            c.set_job_state("j", JobState.LEASED, clock(), agent_id=agent.agent_id, lease_deadline=clock() + 5,
                            attempt=1)                 # ... and is still its attempt (nobody leased it since)
        work.send(result=ok_result(job), more_jobs=1)
        answer = work.receive()
        assert answer.result.accepted and not answer.jobs
        with pytest.raises(grpc.RpcError) as err:
            work.receive()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "register again" in err.value.details()


def test_a_newer_wait_of_the_same_agent_ends_the_older_stream(farm):
    server, agent, _ = farm
    first = agent.work()
    first.send(more_jobs=1)
    wait_until(lambda: server.coordinator.waiters.waiting("cpu-a") == 1, 10, "the first stream to wait")
    second = agent.work()
    second.send(more_jobs=1)
    with pytest.raises(grpc.RpcError) as err:
        first.receive()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "newer" in err.value.details()
    submit(server, "j")
    assert [j.job_id for j in second.receive().jobs] == ["j"]
    second.cancel()


def test_the_agents_stream_brings_jobs_answers_results_and_hands_unanswered_ones_back(tmp_path):
    """agent/work_stream.py against a real coordinator: jobs reach `on_jobs`, a result is answered on
    the stream; once half-closed (or broken) it answers nothing, so the agent reports by unary call."""
    from agent.work_stream import WorkStream

    with coordinator(tmp_path / "coord", policy=POLICY) as (server, address), grpc.insecure_channel(address) as channel:
        agent = ProtocolAgent(channel, "cpu-a")
        agent.register()
        submit(server, "j1", "j2")
        jobs: list[job_pb2.Job] = []
        arrived, ended = threading.Event(), threading.Event()
        stream = WorkStream(agent.stub, agent.metadata(), lambda got: (jobs.extend(got), arrived.set()), ended.set)
        stream.grant(1)
        assert arrived.wait(10) and [j.job_id for j in jobs] == ["j1"]
        arrived.clear()
        request = farm_pb2.ReportResultRequest(agent_id=agent.agent_id, result=ok_result(jobs[0]))
        answer = stream.report(request, more_jobs=1, timeout=10)
        assert answer is not None and answer.accepted
        assert arrived.wait(10) and [j.job_id for j in jobs] == ["j1", "j2"]      # the result's credit
        stream.close()
        assert ended.wait(10) and stream.error is None and not stream.open
        late = farm_pb2.ReportResultRequest(agent_id=agent.agent_id, result=ok_result(jobs[1]))
        assert stream.report(late, more_jobs=0, timeout=10) is None                  # goes by ReportResult
        assert agent.report(ok_result(jobs[1])).accepted

        broken_end = threading.Event()
        broken = WorkStream(agent.stub, agent.metadata(), lambda got: None, broken_end.set)
        broken.grant(MAX_WORK_CREDIT + 1)                       # refused: the stream ends with the error
        assert broken_end.wait(10) and broken.error is not None
        assert broken.error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_agent_with_more_slots_than_a_stream_keeps_grants_what_the_stream_keeps(tmp_path, caplog):
    """A real Agent with 100 slots: it grants the stream's 64 jobs, and more as they are taken,
    instead of a grant the coordinator refuses (which would end and reopen its stream forever)."""
    from coordinator.testing import AgentThread

    with coordinator(tmp_path / "coord", policy=POLICY) as (server, address), \
            AgentThread("cpu-a", address, tmp_path / "agent", slots=100) as agent:
        wait_until(lambda: server.coordinator.waiters.waiting("cpu-a") == 1, 30, "the agent's stream to wait")
        with agent._lock:
            assert agent._owed == MAX_WORK_CREDIT and agent._stream is not None
        stream = agent._stream
        time.sleep(0.5)                 # a refused grant would have ended this stream by now
        assert agent._stream is stream and stream.error is None and agent.counters["registrations"] == 1
    assert "work stream failed" not in caplog.text


def test_messages_without_a_result_or_credit_cost_no_transaction(farm):
    """A message with neither a result nor credit changes nothing, so it opens no transaction."""
    server, agent, _ = farm
    submit(server, "j")
    [job] = agent.lease()
    store = server.coordinator.store
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    work = agent.work()
    for _ in range(20):
        work.send(more_jobs=0)
    work.send(result=ok_result(job))                 # answered after the 20 before it: messages keep order
    assert work.receive().result.accepted
    store._conn.set_trace_callback(None)
    assert sum(sql.startswith("BEGIN") for sql in seen) == 1, seen       # the result's, and no other
    work.close()


def test_an_oversize_or_out_of_bounds_result_on_the_stream_is_refused_and_the_coordinator_serves_on(tmp_path):
    """A message above max_message_bytes is refused by gRPC; a result whose text breaks its bound
    is refused by the result check, as by ReportResult; neither records anything."""
    from shared.limits import Limits

    limits = Limits(max_message_bytes=2 << 20)
    with coordinator(tmp_path / "coord", policy=POLICY, limits=limits) as (server, address), \
            grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        agent = ProtocolAgent(channel, "cpu-a")
        agent.register()
        submit(server, "j")
        [job] = agent.lease()
        for text, code in (("x" * (3 << 20), grpc.StatusCode.RESOURCE_EXHAUSTED),
                           ("y" * 5000, grpc.StatusCode.INVALID_ARGUMENT)):
            work = agent.work()
            work.send(result=ok_result(job, crash_cause=text))
            with pytest.raises(grpc.RpcError) as err:
                work.receive()
            assert err.value.code() == code
        assert not server.coordinator.scheduler.results(["j"]) and job_state(server, "j").state == JobState.LEASED
        assert agent.report(ok_result(job)).accepted                  # and it serves on
