"""Job queue per device class with leases.

A job is (candidate, device class). An agent of that class leases it for `lease_ttl_s`;
heartbeats listing the job renew the lease. An agent whose heartbeats stop goes missing, then
evicted, and its leased jobs return to the queue; a lease that simply runs out returns too.
Results are idempotent by (job_id, attempt): the first report of any leased attempt becomes the
job's one result; every later report (a retry of the same attempt, or a late report of an older
attempt after a re-lease) is answered `duplicate` and changes nothing.

Time comes from an injected `clock`, so the lease/heartbeat/eviction rules are tested without
sleeping; `tick()` applies them and is called periodically by the server."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from coordinator.farm.states import ALIVE, ON_TIME, AgentState, JobState, is_alive
from coordinator.farm.store import JobRow, ResultRow, Store, Tx
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.pb.qfarm.v1 import job_pb2
from shared.results import CrashCause, CrashKind, DeviceResult

log = logging.getLogger(__name__)

PRIORITY_REFERENCE = 10   # FP32 reference jobs unblock every candidate of their class: run them first
PRIORITY_CANDIDATE = 0


@dataclass(frozen=True)
class LeasePolicy:
    heartbeat_interval_s: float = 2.0
    missing_after_s: float = 6.0     # no heartbeat this long: missing (leases kept)
    evict_after_s: float = 20.0      # no heartbeat this long: evicted (leases re-queued)
    lease_ttl_s: float = 30.0        # a lease not renewed this long returns to the queue
    max_wait_s: float = 5.0          # cap of a Lease long-poll
    max_attempts: int = 5            # leases of one job that may end without a result before it counts as crashed

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval_s", "missing_after_s", "evict_after_s", "lease_ttl_s"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name}={getattr(self, name)} must be > 0", step="config")
        if not self.heartbeat_interval_s < self.missing_after_s <= self.evict_after_s:
            raise InvalidArgument(
                f"need heartbeat_interval_s ({self.heartbeat_interval_s}) < missing_after_s "
                f"({self.missing_after_s}) <= evict_after_s ({self.evict_after_s})", step="config")
        if self.max_attempts < 1:
            raise InvalidArgument(f"max_attempts={self.max_attempts} must be >= 1", step="config")
        if self.lease_ttl_s <= self.heartbeat_interval_s:
            raise InvalidArgument(f"lease_ttl_s ({self.lease_ttl_s}) must exceed heartbeat_interval_s "
                                  f"({self.heartbeat_interval_s})", step="config")


@dataclass(frozen=True)
class ReportOutcome:
    accepted: bool
    duplicate: bool
    reason: str = ""


@dataclass(frozen=True)
class TickOutcome:
    missing: tuple[str, ...] = ()
    evicted: tuple[str, ...] = ()
    requeued: tuple[str, ...] = ()


class Scheduler:
    """All lease and result rules, over the Store; thread-safe."""

    def __init__(self, store: Store, policy: LeasePolicy = LeasePolicy(),
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.policy = policy
        self.clock = clock
        self._changed = threading.Condition()
        self._version = 0
        self.counters = {"results_accepted": 0, "results_duplicate": 0}

    # ---------------------------------------------------------------- notifications
    def _notify(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def version(self) -> int:
        with self._changed:
            return self._version

    def wait_change(self, since: int, timeout: float) -> int:
        """Block (real time) until something changed after `since` or the timeout; returns the version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != since, timeout=timeout)
            return self._version

    # ---------------------------------------------------------------- lifecycle
    def on_boot(self) -> None:
        """After a restart: every agent must register again; leases get a fresh deadline so the
        agents still running them can re-register and keep them."""
        now = self.clock()
        with self.store.transaction() as c:
            for agent in c.agents(ALIVE):
                c.set_agent_state(agent.agent_id, AgentState.GONE, "coordinator restarted")
            for job in c.leased_jobs():
                c.renew_lease(job.job_id, job.agent_id or "", now + self.policy.lease_ttl_s)

    # ---------------------------------------------------------------- agents
    def register(self, device: str, name: str, capabilities: bytes, slots: int,
                 running: Sequence[tuple[str, int]] = ()) -> str:
        if not device or not device.strip():
            raise InvalidArgument("device class key is empty", step="register")
        if slots < 1:
            raise InvalidArgument(f"slots={slots} must be >= 1", step="register")
        agent_id = uuid.uuid4().hex[:16]
        now = self.clock()
        with self.store.transaction() as c:
            for old in c.agents(ALIVE):
                if old.name == name and old.device == device:  # the same agent, restarted
                    self._release_agent(c, old.agent_id, AgentState.GONE, "registered again", now)
            c.insert_agent(agent_id, name, device, capabilities, now, slots)
            self._adopt(c, agent_id, device, running, now)
            self._refresh_busy(c, agent_id)
        log.info("agent %s (%s) registered for device class %s", agent_id, name, device)
        self._notify()
        return agent_id

    def heartbeat(self, agent_id: str, running: Sequence[tuple[str, int]], free_slots: int = 0,
                  busy_slots: int = 0) -> list[tuple[str, int]]:
        """Renew the leases the agent still runs; return those it must stop."""
        now = self.clock()
        with self.store.transaction() as c:
            agent = self._live_agent(c, agent_id)
            c.touch_agent(agent_id, now, free_slots, busy_slots)
            if agent.state == AgentState.MISSING:
                c.set_agent_state(agent_id, AgentState.IDLE, "heartbeat resumed")
            cancel = self._adopt(c, agent_id, agent.device, running, now)
            self._refresh_busy(c, agent_id)
        return cancel

    def deregister(self, agent_id: str) -> None:
        now = self.clock()
        with self.store.transaction() as c:
            agent = c.agent(agent_id)
            if is_alive(agent.state):
                self._release_agent(c, agent_id, AgentState.GONE, "deregistered", now)
        log.info("agent %s (%s) deregistered", agent_id, agent.name)
        self._notify()

    # ---------------------------------------------------------------- leases
    def lease(self, agent_id: str, max_jobs: int) -> list[job_pb2.Job]:
        """Hand up to `max_jobs` queued jobs of the agent's class to it, each as a new attempt."""
        if max_jobs < 1:
            raise InvalidArgument(f"max_jobs={max_jobs} must be >= 1", step="lease")
        now = self.clock()
        jobs: list[job_pb2.Job] = []
        with self.store.transaction() as c:
            agent = self._live_agent(c, agent_id)
            c.touch_agent(agent_id, now)
            if agent.state == AgentState.MISSING:
                c.set_agent_state(agent_id, AgentState.IDLE, "calls resumed")
            for row in c.queued_jobs(agent.device, max_jobs):
                leased = c.set_job_state(row.job_id, JobState.LEASED, now, agent_id=agent_id,
                                         lease_deadline=now + self.policy.lease_ttl_s, attempt=row.attempt + 1)
                jobs.append(self.job_message(leased))
            self._refresh_busy(c, agent_id)
        return jobs

    def wait_lease(self, agent_id: str, max_jobs: int, wait_s: float) -> list[job_pb2.Job]:
        """Long-poll: lease now, or wait (real time, capped) for a job of the agent's class."""
        deadline = time.monotonic() + max(0.0, min(wait_s, self.policy.max_wait_s))
        while True:
            seen = self.version()
            jobs = self.lease(agent_id, max_jobs)
            left = deadline - time.monotonic()
            if jobs or left <= 0:
                return jobs
            self.wait_change(seen, left)

    @staticmethod
    def job_message(row: JobRow) -> job_pb2.Job:
        job = job_pb2.Job.FromString(row.payload)
        job.attempt = row.attempt
        return job

    # ---------------------------------------------------------------- jobs
    def submit(self, job: job_pb2.Job, kind: str, priority: int, campaign_id: str) -> JobState:
        """Queue a job unless it exists; a cancelled one is queued again. Links it to the campaign."""
        if not job.job_id or not job.device:
            raise InvalidArgument("a job needs a job_id and a device", step="submit")
        now = self.clock()
        with self.store.transaction() as c:
            existing = c.job(job.job_id)
            if existing is None:
                stored = job_pb2.Job()
                stored.CopyFrom(job)
                stored.attempt = 0
                c.insert_job(job.job_id, job.device, kind, job.candidate.id, stored.SerializeToString(),
                             priority, now)
                state = JobState.QUEUED
            elif existing.state == JobState.CANCELLED:
                state = c.set_job_state(job.job_id, JobState.QUEUED, now).state
            else:
                state = existing.state
            c.link_job(campaign_id, job.job_id)
        self._notify()
        return state

    def cancel_unwanted(self, campaign_id: str) -> int:
        """Cancel the campaign's unfinished jobs that no other live campaign wants."""
        now = self.clock()
        cancelled = 0
        with self.store.transaction() as c:
            ids = c.campaign_job_ids(campaign_id)
            keep = c.jobs_wanted_elsewhere(campaign_id, ids)
            for job_id in ids:
                job = c.job(job_id)
                if job is not None and job_id not in keep and job.state in (JobState.QUEUED, JobState.LEASED):
                    holder = job.agent_id
                    c.set_job_state(job_id, JobState.CANCELLED, now)
                    if holder:
                        self._refresh_busy(c, holder)
                    cancelled += 1
        self._notify()
        return cancelled

    def release(self, agent_id: str, job_id: str, attempt: int) -> bool:
        """The agent gives a lease back without a result (e.g. it could not fetch an artifact)."""
        now = self.clock()
        with self.store.transaction() as c:
            job = c.job(job_id)
            if job is None or job.state != JobState.LEASED or job.attempt != attempt or job.agent_id != agent_id:
                return False
            self._requeue(c, job, now, "given back by its agent")
            self._refresh_busy(c, agent_id)
        self._notify()
        return True

    # ---------------------------------------------------------------- results
    def report(self, agent_id: str, result: job_pb2.DeviceResult, fp32_sha256: str = "") -> ReportOutcome:
        """Record a job's result exactly once; see the module docstring for the rules."""
        try:
            status = DeviceResult.from_proto(result).status
        except KeyError:
            raise InvalidArgument(f"result status {result.status} of job {result.job_id!r} is not ok, crash or "
                                  f"unsupported", step="result") from None
        now = self.clock()
        with self.store.transaction() as c:
            job = c.job(result.job_id)
            if job is None:
                raise NotFound(f"job {result.job_id!r} does not exist", step="result")
            if result.attempt < 1 or result.attempt > job.attempt:
                raise FailedPrecondition(f"job {result.job_id!r} attempt {result.attempt} was never leased "
                                         f"(latest attempt {job.attempt})", step="result")
            if result.device != job.device:
                raise InvalidArgument(f"result for job {result.job_id!r} names device {result.device!r}, the job "
                                      f"is for {job.device!r}", step="result")
            if result.candidate_id != job.candidate_id:
                raise InvalidArgument(f"result for job {result.job_id!r} names candidate {result.candidate_id!r}, "
                                      f"the job is for {job.candidate_id!r}", step="result")
            if job.kind == "reference" and result.status == job_pb2.RESULT_STATUS_OK:
                if not fp32_sha256 or not c.has_artifacts([fp32_sha256]):
                    raise InvalidArgument(f"reference job {result.job_id!r} reported ok without an uploaded FP32 "
                                          f"outputs artifact ({fp32_sha256 or 'none given'})", step="result")
            existing = c.result(result.job_id)
            if existing is not None:
                same = existing.attempt == result.attempt
                self.counters["results_duplicate"] += 1
                return ReportOutcome(False, True, "this attempt's result is already recorded" if same else
                                     f"job already has the result of attempt {existing.attempt}")
            holder = job.agent_id
            c.insert_result(ResultRow(result.job_id, result.attempt, agent_id, status.value,
                                      result.SerializeToString(), fp32_sha256, now))
            c.set_job_state(result.job_id, JobState.DONE, now)
            for aid in {holder, agent_id} - {None}:
                if self._is_known_live(c, aid):
                    self._refresh_busy(c, aid)
            self.counters["results_accepted"] += 1
        self._notify()
        return ReportOutcome(True, False)

    def results(self, job_ids: Iterable[str]) -> dict[str, ResultRow]:
        with self.store.transaction() as c:
            return c.results(list(job_ids))

    # ---------------------------------------------------------------- time
    def tick(self) -> TickOutcome:
        """Apply the clock: late agents go missing, then evicted (leases re-queued); expired leases
        return to the queue."""
        now = self.clock()
        missing, evicted, requeued = [], [], []
        with self.store.transaction() as c:
            for agent in c.agents(ALIVE):
                age = now - agent.last_heartbeat
                if age > self.policy.evict_after_s:
                    if agent.state != AgentState.MISSING:
                        c.set_agent_state(agent.agent_id, AgentState.MISSING, f"no heartbeat for {age:.1f}s")
                    requeued += [j.job_id for j in c.jobs_of_agent(agent.agent_id)]
                    self._release_agent(c, agent.agent_id, AgentState.EVICTED, f"no heartbeat for {age:.1f}s", now)
                    evicted.append(agent.agent_id)
                elif age > self.policy.missing_after_s and agent.state != AgentState.MISSING:
                    c.set_agent_state(agent.agent_id, AgentState.MISSING, f"no heartbeat for {age:.1f}s")
                    missing.append(agent.agent_id)
            for job in c.leased_jobs():
                if job.lease_deadline is not None and job.lease_deadline < now:
                    self._requeue(c, job, now, "lease expired")
                    if job.agent_id and self._is_known_live(c, job.agent_id):
                        self._refresh_busy(c, job.agent_id)
                    requeued.append(job.job_id)
        if missing or evicted or requeued:
            log.info("tick: missing %s, evicted %s, re-queued %s", missing, evicted, requeued)
            self._notify()
        return TickOutcome(tuple(missing), tuple(evicted), tuple(requeued))

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _live_agent(c: Tx, agent_id: str):
        agent = c.agent(agent_id)
        if not is_alive(agent.state):
            raise FailedPrecondition(f"agent {agent_id} is {agent.state.value} ({agent.reason}): register again",
                                     step="agent")
        return agent

    @staticmethod
    def _is_known_live(c: Tx, agent_id: str) -> bool:
        row = c.execute("SELECT state FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        return row is not None and is_alive(AgentState(row[0]))

    def _adopt(self, c: Tx, agent_id: str, device: str, running: Sequence[tuple[str, int]],
               now: float) -> list[tuple[str, int]]:
        """Renew (or take over, after a re-registration) the leases of jobs the agent still runs;
        a job re-queued meanwhile but not yet leased again is taken back. Return the rest."""
        cancel = []
        deadline = now + self.policy.lease_ttl_s
        for job_id, attempt in running:
            job = c.job(job_id)
            if job is None or job.device != device or job.attempt != attempt:
                cancel.append((job_id, attempt))
            elif job.state == JobState.LEASED:
                previous = job.agent_id
                c.renew_lease(job_id, agent_id, deadline)
                if previous and previous != agent_id and self._is_known_live(c, previous):
                    self._refresh_busy(c, previous)
            elif job.state == JobState.QUEUED:
                c.set_job_state(job_id, JobState.LEASED, now, agent_id=agent_id, lease_deadline=deadline,
                                attempt=attempt)
            else:
                cancel.append((job_id, attempt))
        return cancel

    def _release_agent(self, c: Tx, agent_id: str, target: AgentState, reason: str, now: float) -> None:
        for job in c.jobs_of_agent(agent_id):
            self._requeue(c, job, now, f"agent {target.value}: {reason}")
        c.set_agent_state(agent_id, target, reason)

    def _requeue(self, c: Tx, job: JobRow, now: float, why: str) -> None:
        """Back to the queue, unless it has been leased `max_attempts` times without a result: a job
        that keeps killing or losing its agents is recorded as a crash instead of looping forever."""
        if job.attempt < self.policy.max_attempts:
            c.set_job_state(job.job_id, JobState.QUEUED, now)
            return
        lost = DeviceResult.failure(CrashCause(CrashKind.LOST, f"{job.attempt} leases ended without a result "
                                                                f"(last: {why})"))
        result = lost.to_proto(job_id=job.job_id, attempt=job.attempt, candidate_id=job.candidate_id,
                               device=job.device)
        c.insert_result(ResultRow(job.job_id, job.attempt, "coordinator", lost.status.value,
                                  result.SerializeToString(), "", now))
        c.set_job_state(job.job_id, JobState.DONE, now)
        log.warning("job %s given up: %s", job.job_id, lost.crash_cause)

    @staticmethod
    def _refresh_busy(c: Tx, agent_id: str) -> None:
        agent = c.agent(agent_id)
        if agent.state not in ON_TIME:
            return
        busy = bool(c.jobs_of_agent(agent_id))
        c.set_agent_state(agent_id, AgentState.BUSY if busy else AgentState.IDLE)
