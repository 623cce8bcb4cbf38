"""Lease, heartbeat, eviction and result rules of the scheduler, with an injected clock (no sleeps)."""
from __future__ import annotations

import pytest

from coordinator.farm.scheduler import LeasePolicy, Scheduler
from coordinator.farm.states import AgentState, JobState
from coordinator.farm.store import Store, Tx
from shared.auth import AgentIdentity
from shared.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from shared.pb.qfarm.v1 import job_pb2

POLICY = LeasePolicy(heartbeat_interval_s=1, missing_after_s=3, evict_after_s=10, lease_ttl_s=8)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def farm(tmp_path):
    clock = Clock()
    store = Store(tmp_path / "data")
    sched = Scheduler(store, POLICY, clock)
    yield sched, clock, store
    store.close()


def make_job(job_id: str, device: str = "cpu-a", candidate: str = "cand") -> job_pb2.Job:
    job = job_pb2.Job(job_id=job_id, device=device)
    job.candidate.id = candidate
    return job


def result_for(job: job_pb2.Job, accuracy: float = 0.9) -> job_pb2.DeviceResult:
    return job_pb2.DeviceResult(job_id=job.job_id, attempt=job.attempt, candidate_id=job.candidate.id,
                                device=job.device, status=job_pb2.RESULT_STATUS_OK, top1_agreement=accuracy)


def agent_state(store: Store, agent: AgentIdentity) -> AgentState:
    with store.transaction() as c:
        return c.agent(agent.agent_id).state


def job_row(store: Store, job_id: str):
    with store.transaction() as c:
        return c.job(job_id)


def test_lease_goes_to_matching_device_class_in_priority_order(farm):
    sched, clock, store = farm
    sched.submit(make_job("j1"), "candidate", 0, "camp")
    sched.submit(make_job("ref", candidate="base"), "reference", 10, "camp")
    sched.submit(make_job("other", device="mali"), "candidate", 0, "camp")
    a = sched.register("cpu-a", "agent-a", b"", 1)
    jobs = sched.lease(a, 5)
    assert [j.job_id for j in jobs] == ["ref", "j1"]          # reference first, other class untouched
    assert all(j.attempt == 1 for j in jobs)
    assert agent_state(store, a) == AgentState.BUSY
    assert job_row(store, "other").state == JobState.QUEUED


def test_heartbeat_renews_lease_and_expiry_requeues(farm):
    sched, clock, store = farm
    sched.submit(make_job("j1"), "candidate", 0, "camp")
    a = sched.register("cpu-a", "agent-a", b"", 1)
    [job] = sched.lease(a, 1)
    clock.now += 6
    assert sched.heartbeat(a, [(job.job_id, job.attempt)]) == []
    clock.now += 6                                             # 12 s after the lease, 6 after renewal
    assert sched.tick().requeued == ()
    assert job_row(store, "j1").state == JobState.LEASED
    clock.now += 1
    sched.heartbeat(a, [])                                     # alive, but no longer lists the job
    clock.now += 2.5                                           # deadline = renewal + 8 passed
    assert sched.tick().requeued == ("j1",)
    assert job_row(store, "j1").state == JobState.QUEUED
    assert agent_state(store, a) == AgentState.IDLE


def test_silent_agent_goes_missing_then_evicted_and_job_is_released(farm):
    sched, clock, store = farm
    sched.submit(make_job("j1"), "candidate", 0, "camp")
    a = sched.register("cpu-a", "agent-a", b"", 1)
    b = sched.register("cpu-a", "agent-b", b"", 1)
    [job] = sched.lease(a, 1)
    clock.now += 3.5
    assert sched.tick().missing == (a.agent_id, b.agent_id)
    assert agent_state(store, a) == AgentState.MISSING
    sched.heartbeat(b, [])                                      # b comes back
    assert agent_state(store, b) == AgentState.IDLE
    clock.now += 7                                              # a silent 10.5 s > evict_after
    outcome = sched.tick()
    assert outcome.evicted == (a.agent_id,) and outcome.requeued == ("j1",)
    assert agent_state(store, a) == AgentState.EVICTED
    [again] = sched.lease(b, 1)
    assert (again.job_id, again.attempt) == ("j1", 2)
    with pytest.raises(FailedPrecondition, match="evicted"):
        sched.heartbeat(a, [])


def test_only_the_current_attempt_s_holder_reports_and_only_once(farm):
    sched, clock, store = farm
    sched.submit(make_job("j1"), "candidate", 0, "camp")
    a = sched.register("cpu-a", "agent-a", b"", 1)
    b = sched.register("cpu-a", "agent-b", b"", 1)
    [first] = sched.lease(a, 1)
    clock.now += 11
    sched.heartbeat(b, [])
    sched.tick()                                                # a evicted, j1 re-queued
    [second] = sched.lease(b, 1)
    assert second.attempt == 2
    with pytest.raises(PermissionDenied, match="not leased to agent"):
        sched.report(a, result_for(first, 0.5))                 # the evicted agent's late result of attempt 1
    with pytest.raises(PermissionDenied, match="not leased to agent"):
        sched.report(a, result_for(second, 0.5))                # nor may it report b's attempt
    newer = sched.report(b, result_for(second, 0.7))
    assert newer.accepted and not newer.duplicate
    again = sched.report(b, result_for(second, 0.7))            # retried report of the same attempt
    assert again.duplicate and not again.accepted
    rows = sched.results(["j1"])
    assert (rows["j1"].attempt, rows["j1"].agent_id) == (2, b.agent_id)
    assert job_pb2.DeviceResult.FromString(rows["j1"].payload).top1_agreement == pytest.approx(0.7)
    assert job_row(store, "j1").state == JobState.DONE
    assert sched.heartbeat(b, [("j1", 2)]) == [("j1", 2)]      # b is told to stop
    assert agent_state(store, b) == AgentState.IDLE


def test_results_for_unknown_or_never_leased_jobs_are_refused(farm):
    sched, clock, store = farm
    sched.submit(make_job("j1"), "candidate", 0, "camp")
    a = sched.register("cpu-a", "agent-a", b"", 1)
    never = make_job("j1")
    never.attempt = 1
    with pytest.raises(PermissionDenied, match="not leased"):
        sched.report(a, result_for(never))
    ghost = make_job("nope")
    ghost.attempt = 1
    with pytest.raises(PermissionDenied, match="nope"):
        sched.report(a, result_for(ghost))
    [job] = sched.lease(a, 1)
    wrong = result_for(job)
    wrong.device = "mali"
    with pytest.raises(InvalidArgument, match="mali"):
        sched.report(a, wrong)
    assert job_row(store, "j1").state == JobState.LEASED


def test_reference_ok_requires_uploaded_outputs(farm):
    sched, clock, store = farm
    sched.submit(make_job("ref", candidate="base"), "reference", 10, "camp")
    a = sched.register("cpu-a", "agent-a", b"", 1)
    [job] = sched.lease(a, 1)
    with pytest.raises(InvalidArgument, match="FP32 outputs"):
        sched.report(a, result_for(job), fp32_sha256="ab" * 32)
    with store.transaction() as c:
        c.put_artifact("ab" * 32, 10, "fp32_outputs", "x", clock())
    assert sched.report(a, result_for(job), fp32_sha256="ab" * 32).accepted
    assert sched.results(["ref"])["ref"].fp32_sha256 == "ab" * 32


def test_reregistration_adopts_running_jobs_after_restart(farm, tmp_path):
    sched, clock, store = farm
    sched.submit(make_job("j1"), "candidate", 0, "camp")
    a = sched.register("cpu-a", "agent-a", b"", 1)
    [job] = sched.lease(a, 1)
    restarted = Scheduler(store, POLICY, clock)                 # same data, new process
    restarted.on_boot()
    assert agent_state(store, a) == AgentState.GONE
    with pytest.raises(FailedPrecondition, match="register again"):
        restarted.heartbeat(a, [("j1", 1)])
    stranger = restarted.register("cpu-a", "agent-a", b"", 1, running=[("j1", job.attempt)])
    assert job_row(store, "j1").agent_id == a.agent_id          # the same name proves nothing
    a2 = restarted.register("cpu-a", "agent-a", b"", 1, running=[("j1", job.attempt)], previous=a)
    row = job_row(store, "j1")
    assert (row.state, row.agent_id, row.attempt, a2.replaced) == (JobState.LEASED, a2.agent_id, 1, a.agent_id)
    with pytest.raises(PermissionDenied):
        restarted.report(stranger, result_for(job))
    with pytest.raises(PermissionDenied):
        restarted.report(a, result_for(job))                    # the replaced identity holds nothing now
    assert restarted.report(a2, result_for(job)).accepted


def test_requeued_job_is_taken_back_by_a_returning_agent(farm):
    sched, clock, store = farm
    sched.submit(make_job("j1"), "candidate", 0, "camp")
    a = sched.register("cpu-a", "agent-a", b"", 1)
    [job] = sched.lease(a, 1)
    clock.now += 9                                              # lease expired, agent only missing
    sched.tick()
    assert job_row(store, "j1").state == JobState.QUEUED
    assert sched.heartbeat(a, [("j1", 1)]) == []
    row = job_row(store, "j1")
    assert (row.state, row.agent_id, row.attempt) == (JobState.LEASED, a.agent_id, 1)


def test_cancel_unwanted_keeps_jobs_other_campaigns_need(farm):
    sched, clock, store = farm
    with store.transaction() as c:
        c.insert_campaign("c1", "one", "{}", clock())
        c.insert_campaign("c2", "two", "{}", clock())
    sched.submit(make_job("shared"), "candidate", 0, "c1")
    sched.submit(make_job("shared"), "candidate", 0, "c2")
    sched.submit(make_job("mine"), "candidate", 0, "c1")
    assert sched.cancel_unwanted("c1") == 1
    assert job_row(store, "mine").state == JobState.CANCELLED
    assert job_row(store, "shared").state == JobState.QUEUED
    assert sched.submit(make_job("mine"), "candidate", 0, "c2") == JobState.QUEUED


def test_policy_validation_names_the_field():
    with pytest.raises(InvalidArgument, match="lease_ttl_s"):
        LeasePolicy(heartbeat_interval_s=1, missing_after_s=3, evict_after_s=10, lease_ttl_s=0.5)


def test_job_lost_max_attempts_times_becomes_a_crash_result(farm):
    sched, clock, store = farm
    sched.submit(make_job("killer"), "candidate", 0, "camp")
    for attempt in range(1, POLICY.max_attempts + 1):
        agent = sched.register("cpu-a", f"agent-{attempt}", b"", 1)
        [job] = sched.lease(agent, 1)
        assert job.attempt == attempt
        clock.now += 11                                        # the agent dies with the job
        sched.tick()
    row = sched.results(["killer"])["killer"]
    result = job_pb2.DeviceResult.FromString(row.payload)
    assert (row.status, result.attempt) == ("crash", POLICY.max_attempts)
    assert result.crash_cause.startswith(f"lost:{POLICY.max_attempts} leases ended without a result")
    assert job_row(store, "killer").state == JobState.DONE


class _Recording:
    """A connection that remembers the statements a Tx runs through it."""

    def __init__(self, conn):
        self.conn, self.seen = conn, []

    def execute(self, sql, params=()):
        self.seen.append((sql, params))
        return self.conn.execute(sql, params)


def test_the_hot_job_queries_read_an_index_and_never_sort_the_queue(farm):
    """A lease reads the head of its class's queue and the tick reads only the expired leases,
    whatever the number of jobs queued or done: no table scan, no sort of the queue."""
    sched, clock, store = farm
    for i in range(60):
        sched.submit(make_job(f"j{i:02d}"), "candidate", i % 3, "camp")
    agent = sched.register("cpu-a", "agent-a", b"", 1)
    [job] = sched.lease(agent, 1)
    sched.report(agent, result_for(job))
    sched.lease(agent, 1)
    with store.transaction() as c:
        recording = _Recording(c.execute("SELECT 1").connection)
        tx = Tx(recording)
        assert [j.job_id for j in tx.queued_jobs("cpu-a", 2)] == ["j08", "j11"]   # priority 2, in arrival order
        assert [j.job_id for j in tx.leased_jobs()] == ["j05"]                     # j02 is done
        assert tx.expired_leases(clock.now) == [] and [j.job_id for j in tx.expired_leases(clock.now + 9)] == ["j05"]
        assert tx.holds_lease(agent.agent_id)
        for sql, params in recording.seen:
            plan = " / ".join(row[3] for row in recording.conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            assert "SCAN" not in plan and "TEMP B-TREE" not in plan, (sql, plan)


def test_leases_follow_priority_then_arrival_over_a_long_queue(farm):
    sched, clock, store = farm
    priorities = [(i * 7) % 4 for i in range(40)]
    for i, priority in enumerate(priorities):
        sched.submit(make_job(f"j{i:02d}"), "candidate", priority, "camp")
    agent = sched.register("cpu-a", "agent-a", b"", 1)
    order = []
    for _ in priorities:
        [job] = sched.lease(agent, 1)
        order.append(job.job_id)
        sched.report(agent, result_for(job))
    assert order == [f"j{i:02d}" for i in sorted(range(40), key=lambda i: (-priorities[i], i))]


def test_an_older_database_gets_the_current_indexes(tmp_path):
    data = tmp_path / "data"
    Store(data).close()
    import sqlite3

    with sqlite3.connect(data / "qfarm.sqlite3") as db:            # as the first release left it
        db.execute("DROP INDEX jobs_queue_order")
        db.execute("DROP INDEX jobs_leased")
        db.execute("CREATE INDEX jobs_queue ON jobs(device, state, priority)")
    store = Store(data)
    with store.transaction() as c:
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    store.close()
    assert {"jobs_queue_order", "jobs_leased"} <= names and "jobs_queue" not in names


def test_the_tick_writes_what_was_heard_in_memory_and_revives_a_missing_agent(farm):
    sched, clock, store = farm
    quiet, missing, gone = (sched.register("cpu-a", name, b"", 1) for name in ("quiet", "missing", "gone"))
    clock.now += POLICY.missing_after_s + 1
    sched.tick({quiet.agent_id: clock.now - 1})               # heard in memory a second ago: alive
    assert agent_state(store, quiet) == AgentState.IDLE and agent_state(store, missing) == AgentState.MISSING
    clock.now += POLICY.evict_after_s
    sched.tick({quiet.agent_id: clock.now, missing.agent_id: clock.now - 1})
    assert agent_state(store, missing) == AgentState.IDLE and agent_state(store, gone) == AgentState.EVICTED
    with store.transaction() as c:
        before = c.agent(quiet.agent_id).last_heartbeat
    sched.tick({quiet.agent_id: before - 5, gone.agent_id: clock.now, "no-such-agent": clock.now})
    with store.transaction() as c:
        assert c.agent(quiet.agent_id).last_heartbeat == before        # a late report never moves time back
        assert c.agent(gone.agent_id).state == AgentState.EVICTED      # an evicted agent is not revived


def test_a_lease_and_a_result_cost_a_bounded_number_of_statements(farm):
    """The per-job path reads each row once: a lease 7 statements (BEGIN, the agent, the queue's
    head, the job, the agent's state, COMMIT, and the heartbeat time), a result 9, whatever the queue."""
    sched, clock, store = farm
    for i in range(50):
        sched.submit(make_job(f"j{i:02d}"), "candidate", 0, "camp")
    agent = sched.register("cpu-a", "agent-a", b"", 1)
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    for _ in range(3):
        seen.clear()
        [job] = sched.lease(agent, 1)
        leased = len(seen)
        seen.clear()
        assert sched.report(agent, result_for(job)).accepted
        assert (leased, len(seen)) == (7, 9), seen
        assert agent_state(store, agent) == AgentState.IDLE and job_row(store, job.job_id).state == JobState.DONE
    store._conn.set_trace_callback(None)


def test_the_checkpoint_runs_off_the_commits_and_keeps_what_they_wrote(tmp_path):
    """Once the tick checkpoints, a commit only appends to the log (no automatic checkpoint inside
    it); a checkpoint copies the log into the database and a fresh reader sees every commit."""
    import sqlite3

    store = Store(tmp_path / "data")
    sched = Scheduler(store, POLICY, Clock())
    sched.submit(make_job("first"), "candidate", 0, "camp")
    pages, copied = store.checkpoint()
    assert pages == copied and pages > 0
    with store.transaction() as c:
        assert c.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(200):
        sched.submit(make_job(f"j{i:03d}"), "candidate", 0, "camp")
    pages, copied = store.checkpoint()
    assert pages == copied and pages > 0
    with sqlite3.connect(f"file:{store.path}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 201
    store.close()


def test_a_sqlite_too_old_for_the_store_is_named_before_anything_is_made(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 37, 2))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.37.2")
    with pytest.raises(FailedPrecondition, match=r"SQLite 3\.37\.2 is too old .* needs 3\.38\.0 or newer"):
        Store(tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_a_work_message_records_its_result_and_leases_the_next_job_in_one_transaction(farm):
    """On the Work stream a result and the next lease share one transaction: fewer statements than
    a ReportResult and a Lease (10 instead of 9 + 7), and the agent busy with the new job."""
    sched, clock, store = farm
    for i in range(5):
        sched.submit(make_job(f"j{i:02d}"), "candidate", 0, "camp")
    agent = sched.register("cpu-a", "agent-a", b"", 1)
    [job] = sched.work(agent, None, "", 1).jobs
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    for _ in range(3):
        seen.clear()
        outcome = sched.work(agent, result_for(job), "", 1)
        assert outcome.report.accepted and len(outcome.jobs) == 1 and outcome.not_alive is None
        assert len(seen) == 10, seen
        assert job_row(store, job.job_id).state == JobState.DONE and agent_state(store, agent) == AgentState.BUSY
        job = outcome.jobs[0]
    store._conn.set_trace_callback(None)
    last = sched.work(agent, result_for(job), "", 0)          # no credit: the result only
    assert last.report.accepted and last.jobs == [] and agent_state(store, agent) == AgentState.IDLE
