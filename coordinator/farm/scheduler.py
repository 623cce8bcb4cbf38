"""Job queue per device class with leases.

A job is (candidate, device class). An agent of that class leases it for `lease_ttl_s`;
heartbeats listing the job renew the lease. An agent whose heartbeats stop goes missing, then
evicted, and its leased jobs return to the queue; a lease that simply runs out returns too.
Agents prove who they are: every call after registration carries the agent id and the secret the
registration handed out (`AgentIdentity`; the store keeps only its hash). Only the agent holding a
job's current attempt (job id + attempt; its `holder`) may renew it by heartbeat or report its
result; anything else is PERMISSION_DENIED and changes nothing. A registration under a name
already in use does not touch the other agent; only a registration that proves the identity it
replaces (an agent re-registering after a coordinator restart, or restarted itself) takes over
that agent's leases of the jobs it lists as running.

Results are idempotent: the holder's first report of its attempt becomes the job's one result; a
retry of that report is answered `duplicate` and changes nothing.

Time comes from an injected `clock`, so the lease/heartbeat/eviction rules are tested without
sleeping; `tick()` applies them and is called periodically by the server."""
from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from coordinator.farm.states import ALIVE, ON_TIME, AgentState, JobState, is_alive
from coordinator.farm.store import AgentRow, JobRow, ResultRow, Store, Tx
from shared.auth import AgentIdentity, hash_secret, new_agent_secret
from shared.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted
from shared.pb.qfarm.v1 import job_pb2
from shared.results import CrashCause, CrashKind, DeviceResult, status_of

log = logging.getLogger(__name__)

PRIORITY_REFERENCE = 10   # FP32 reference jobs unblock every candidate of their class: run them first
PRIORITY_CANDIDATE = 0


@dataclass(frozen=True)
class LeasePolicy:
    heartbeat_interval_s: float = 2.0
    missing_after_s: float = 6.0     # no heartbeat this long: missing (leases kept)
    evict_after_s: float = 20.0      # no heartbeat this long: evicted (leases re-queued)
    lease_ttl_s: float = 30.0        # a lease not renewed this long returns to the queue
    max_wait_s: float = 30.0         # cap of a Lease long-poll (a waiting call holds no thread)
    max_attempts: int = 5            # leases of one job that may end without a result before it counts as crashed

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval_s", "missing_after_s", "evict_after_s", "lease_ttl_s", "max_wait_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidArgument(f"{name}={value!r} must be a finite number > 0", step="config")
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
class Registration(AgentIdentity):
    """A new agent's identity (its secret is handed out once; the store keeps its hash)."""

    replaced: str | None = None         # the registration whose identity it proved and took over


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


@dataclass(frozen=True)
class WorkOutcome:
    """What one Work message did: its result's outcome (None: it carried none), the jobs leased,
    the agent's device class, and, for an agent no longer alive, the error that ends its stream."""

    report: ReportOutcome | None
    jobs: list[job_pb2.Job]
    device: str
    not_alive: FailedPrecondition | None = None


def _status(result: job_pb2.DeviceResult):
    try:
        return status_of(result)
    except KeyError:
        raise InvalidArgument(f"result status {result.status} of job {result.job_id!r} is not ok, crash or "
                              f"unsupported", step="result") from None


def _not_alive(row: AgentRow) -> FailedPrecondition:
    return FailedPrecondition(f"agent {row.agent_id} is {row.state.value} ({row.reason}): register again",
                              step="agent")


#: dead agents are forgotten this long after their last call (results keep their id)
FORGET_AGENTS_AFTER_S = 3600.0


class Scheduler:
    """All lease and result rules, over the Store; thread-safe. `max_agents` caps the agents alive
    at once (None: no cap)."""

    def __init__(self, store: Store, policy: LeasePolicy = LeasePolicy(),
                 clock: Callable[[], float] = time.time, max_agents: int | None = None):
        self.store = store
        self.policy = policy
        self.clock = clock
        self.max_agents = max_agents
        self._changed = threading.Condition()
        self._version = 0
        self._listeners: list[Callable[[frozenset[str] | None], None]] = []
        self.counters = {"results_accepted": 0, "results_duplicate": 0}

    # ---------------------------------------------------------------- notifications
    def add_listener(self, listener: Callable[[frozenset[str] | None], None]) -> None:
        """`listener(devices)` is called (on the changing thread) whenever jobs of those device
        classes may have become leasable (None: any class); the server wakes lease waiters with it."""
        self._listeners.append(listener)

    def _notify(self, queued: Iterable[str] | None = ()) -> None:
        """Wake threads waiting for any change; tell listeners which classes got queued jobs."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()
        devices = None if queued is None else frozenset(queued)
        if devices is None or devices:
            for listener in self._listeners:
                listener(devices)

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
                 running: Sequence[tuple[str, int]] = (), previous: AgentIdentity | None = None) -> Registration:
        """A new registration with its own id and secret. With `previous` (the identity of the
        registration it replaces, proven by its secret) it takes over that agent's leases of the
        jobs in `running` and the old registration is gone; without, no other agent is touched."""
        if not device or not device.strip():
            raise InvalidArgument("device class key is empty", step="register")
        if slots < 1:
            raise InvalidArgument(f"slots={slots} must be >= 1", step="register")
        agent_id = secrets.token_hex(8)
        secret = new_agent_secret()
        now = self.clock()
        requeued: list[str] = []
        with self.store.transaction() as c:
            old = self._predecessor(c, previous, device)
            alive = c.count_agents(ALIVE) - (1 if old is not None and is_alive(old.state) else 0)
            if self.max_agents is not None and alive >= self.max_agents:
                raise ResourceExhausted(f"{alive} agents are registered, the limit max_agents={self.max_agents}",
                                        step="register")
            c.insert_agent(agent_id, name, device, capabilities, now, slots, hash_secret(secret))
            if old is not None:
                self._adopt(c, agent_id, device, running, now, owners={agent_id, old.agent_id})
                for job in c.jobs_of_agent(old.agent_id):      # leases it does not run any more
                    self._requeue(c, job, now, f"its agent registered again as {agent_id}")
                    requeued.append(job.device)
                if is_alive(old.state):
                    c.set_agent_state(old.agent_id, AgentState.GONE, f"replaced by {agent_id}")
            self._refresh_busy(c, agent_id)
        log.info("agent %s (%s) registered for device class %s%s", agent_id, name, device,
                 f", replacing {old.agent_id}" if old is not None else "")
        self._notify(requeued)
        return Registration(agent_id, secret, old.agent_id if old is not None else None)

    @staticmethod
    def _predecessor(c: Tx, previous: AgentIdentity | None, device: str) -> AgentRow | None:
        if previous is None:
            return None
        old = c.find_agent(previous.agent_id)
        if old is None or not previous.matches(old.secret_hash) or old.device != device:
            log.warning("a registration for %s named previous identity %s, which does not check out: registered "
                        "as a new agent, nothing taken over", device, previous.agent_id)
            return None
        return old

    def heartbeat(self, agent: AgentIdentity, running: Sequence[tuple[str, int]], free_slots: int = 0,
                  busy_slots: int = 0) -> list[tuple[str, int]]:
        """Renew the leases the agent holds and still runs; return the listed jobs it must stop."""
        return self.heartbeat_and_idle(agent, running, free_slots, busy_slots)[0]

    def heartbeat_and_idle(self, agent: AgentIdentity, running: Sequence[tuple[str, int]], free_slots: int = 0,
                           busy_slots: int = 0) -> tuple[list[tuple[str, int]], str | None]:
        """`heartbeat`, and the agent's secret hash when it is idle now (no lease, nothing running):
        its next heartbeats can then be recorded in memory (presence.py)."""
        now = self.clock()
        with self.store.transaction() as c:
            row = self._live_agent(c, agent)
            c.touch_agent(row.agent_id, now, free_slots, busy_slots)
            state = row.state
            if state == AgentState.MISSING:
                state = c.set_agent_state(row.agent_id, AgentState.IDLE, "heartbeat resumed", current=state)
            cancel = self._adopt(c, row.agent_id, row.device, running, now, owners={row.agent_id})
            idle = self._refresh_busy(c, row.agent_id, state) == AgentState.IDLE and not running
        return cancel, row.secret_hash if idle else None

    def deregister(self, agent: AgentIdentity) -> None:
        now = self.clock()
        with self.store.transaction() as c:
            row = self._proven_agent(c, agent)
            requeued = [j.device for j in c.jobs_of_agent(row.agent_id)] if is_alive(row.state) else []
            if is_alive(row.state):
                self._release_agent(c, row.agent_id, AgentState.GONE, "deregistered", now)
        log.info("agent %s (%s) deregistered", row.agent_id, row.name)
        self._notify(requeued)

    # ---------------------------------------------------------------- leases
    def lease(self, agent: AgentIdentity, max_jobs: int) -> list[job_pb2.Job]:
        """Hand up to `max_jobs` queued jobs of the agent's class to it, each as a new attempt."""
        return self.lease_and_device(agent, max_jobs)[0]

    def lease_and_device(self, agent: AgentIdentity, max_jobs: int) -> tuple[list[job_pb2.Job], str]:
        """`lease`, and the agent's device class (what a long-poll then waits for)."""
        if max_jobs < 1:
            raise InvalidArgument(f"max_jobs={max_jobs} must be >= 1", step="lease")
        outcome = self.work(agent, None, "", max_jobs)
        if outcome.not_alive is not None:
            raise outcome.not_alive
        return outcome.jobs, outcome.device

    def _lease_to(self, c: Tx, row: AgentRow, state: AgentState, max_jobs: int, now: float) -> list[job_pb2.Job]:
        """Lease up to `max_jobs` queued jobs of its class to a live agent whose state (in this
        transaction) is `state`; its heard time and busy/idle state follow."""
        c.touch_agent(row.agent_id, now)
        if state == AgentState.MISSING:
            state = c.set_agent_state(row.agent_id, AgentState.IDLE, "calls resumed", current=state)
        jobs: list[job_pb2.Job] = []
        for queued in c.queued_jobs(row.device, max_jobs):
            leased = c.set_job_state(queued.job_id, JobState.LEASED, now, agent_id=row.agent_id,
                                     lease_deadline=now + self.policy.lease_ttl_s, attempt=queued.attempt + 1,
                                     current=queued)
            jobs.append(self.job_message(leased))
        self._refresh_busy(c, row.agent_id, state, holds=True if jobs else None)
        return jobs

    def check_artifact_access(self, agent: AgentIdentity, sha256: str) -> None:
        """An agent may fetch only the artifacts of the jobs it holds leases on."""
        with self.store.transaction() as c:
            row = self._live_agent(c, agent)
            for job in c.jobs_of_agent(row.agent_id):
                if sha256 in job_artifacts(job_pb2.Job.FromString(job.payload)):
                    return
        raise PermissionDenied(f"artifact {sha256} belongs to no job leased to agent {row.agent_id}", step="artifact")

    def check_upload(self, agent: AgentIdentity) -> None:
        """An agent uploads what its jobs produce (FP32 outputs): only while it holds a lease."""
        with self.store.transaction() as c:
            row = self._live_agent(c, agent)
            if not c.jobs_of_agent(row.agent_id):
                raise PermissionDenied(f"agent {row.agent_id} holds no lease: it has nothing to upload",
                                       step="upload")

    @staticmethod
    def job_message(row: JobRow) -> job_pb2.Job:
        job = job_pb2.Job.FromString(row.payload)
        job.attempt = row.attempt
        return job

    # ---------------------------------------------------------------- jobs
    def submit(self, job: job_pb2.Job, kind: str, priority: int, campaign_id: str) -> JobState:
        """Queue a job unless it exists; a cancelled one is queued again. Links it to the campaign."""
        return self.submit_many([job], kind, priority, campaign_id)[0]

    def submit_many(self, jobs: Sequence[job_pb2.Job], kind: str, priority: int, campaign_id: str) -> list[JobState]:
        """`submit` for several jobs in one transaction (a candidate's jobs on every device class)."""
        for job in jobs:
            if not job.job_id or not job.device:
                raise InvalidArgument("a job needs a job_id and a device", step="submit")
        now = self.clock()
        states = []
        with self.store.transaction() as c:
            for job in jobs:
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
                states.append(state)
        self._notify({job.device for job, state in zip(jobs, states) if state == JobState.QUEUED})
        return states

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

    def release(self, agent: AgentIdentity, job_id: str, attempt: int) -> bool:
        """The agent gives a lease it holds back without a result (e.g. it is draining)."""
        now = self.clock()
        with self.store.transaction() as c:
            row = self._live_agent(c, agent)
            job = c.job(job_id)
            if job is None or job.state != JobState.LEASED or job.attempt != attempt or job.agent_id != row.agent_id:
                return False
            self._requeue(c, job, now, "given back by its agent")
            self._refresh_busy(c, row.agent_id)
        self._notify([job.device])
        return True

    # ---------------------------------------------------------------- results
    def report(self, agent: AgentIdentity, result: job_pb2.DeviceResult, fp32_sha256: str = "") -> ReportOutcome:
        """Record the result of a job the agent holds (its current attempt) exactly once; an evicted
        agent may still report the attempt it holds."""
        return self.work(agent, result, fp32_sha256, 0).report

    def work(self, agent: AgentIdentity, result: job_pb2.DeviceResult | None, fp32_sha256: str,
             max_jobs: int) -> WorkOutcome:
        """One message of an agent's Work stream in one transaction: record its result (if any, as
        `report`), then lease up to `max_jobs` jobs (0: none) if the agent is alive. An agent that
        is not gets its result recorded and `not_alive` set instead of jobs."""
        if max_jobs < 0:
            raise InvalidArgument(f"max_jobs={max_jobs} must be >= 0", step="lease")
        status = _status(result) if result is not None else None
        now = self.clock()
        with self.store.transaction() as c:
            row = self._proven_agent(c, agent)
            outcome = self._record(c, row, result, status, fp32_sha256, now) if result is not None else None
            alive, jobs = is_alive(row.state), []       # read in this transaction: recording does not change it
            if alive and max_jobs:
                jobs = self._lease_to(c, row, row.state, max_jobs, now)
            elif alive and outcome is not None and outcome.accepted:
                self._refresh_busy(c, row.agent_id, row.state)
        if outcome is not None and outcome.accepted:
            self._notify()
        return WorkOutcome(outcome, jobs, row.device, None if alive else _not_alive(row))

    def _record(self, c: Tx, row: AgentRow, result: job_pb2.DeviceResult, status, fp32_sha256: str,
                now: float) -> ReportOutcome:
        """The result of a job `row` holds becomes its one result (the caller refreshes the agent's
        busy/idle state); a repeat is a duplicate; anything else raises and records nothing."""
        job = c.job(result.job_id)
        holds = job is not None and job.holder == row.agent_id and job.attempt == result.attempt >= 1
        existing = c.result(result.job_id) if job is not None else None
        if holds and existing is not None:
            self.counters["results_duplicate"] += 1
            same = existing.attempt == result.attempt and existing.agent_id == row.agent_id
            return ReportOutcome(False, True, "this attempt's result is already recorded" if same else
                                 f"job already has the result of attempt {existing.attempt}")
        if not holds or job is None or job.state not in (JobState.LEASED, JobState.QUEUED, JobState.CANCELLED):
            raise PermissionDenied(f"job {result.job_id[:200]!r} attempt {result.attempt} is not leased to agent "
                                   f"{row.agent_id}: nothing recorded", step="result")
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
        c.insert_result(ResultRow(result.job_id, result.attempt, row.agent_id, status.value,
                                  result.SerializeToString(), fp32_sha256, now))
        c.set_job_state(result.job_id, JobState.DONE, now, current=job)
        self.counters["results_accepted"] += 1
        return ReportOutcome(True, False)

    def results(self, job_ids: Iterable[str]) -> dict[str, ResultRow]:
        with self.store.transaction() as c:
            return c.results(list(job_ids))

    # ---------------------------------------------------------------- time
    def tick(self, heard: Mapping[str, float] | None = None) -> TickOutcome:
        """Apply the clock: late agents go missing, then evicted (leases re-queued); expired leases
        return to the queue. `heard`: agents heard since the last tick without a transaction
        (presence.py) and when; written first, so they count as heartbeats."""
        now = self.clock()
        missing, evicted, requeued, devices = [], [], [], set()
        with self.store.transaction() as c:
            if heard:
                c.touch_agents(heard, ALIVE)
                for row in c.agents((AgentState.MISSING,)):
                    if row.agent_id in heard:
                        state = c.set_agent_state(row.agent_id, AgentState.IDLE, "heartbeat resumed",
                                                  current=row.state)
                        self._refresh_busy(c, row.agent_id, state)
            for agent in c.agents(ALIVE, heard_before=now - self.policy.missing_after_s):   # the late ones only
                age = now - agent.last_heartbeat
                if age > self.policy.evict_after_s:
                    if agent.state != AgentState.MISSING:
                        c.set_agent_state(agent.agent_id, AgentState.MISSING, f"no heartbeat for {age:.1f}s")
                    held = c.jobs_of_agent(agent.agent_id)
                    requeued += [j.job_id for j in held]
                    devices.update(j.device for j in held)
                    self._release_agent(c, agent.agent_id, AgentState.EVICTED, f"no heartbeat for {age:.1f}s", now)
                    evicted.append(agent.agent_id)
                elif age > self.policy.missing_after_s and agent.state != AgentState.MISSING:
                    c.set_agent_state(agent.agent_id, AgentState.MISSING, f"no heartbeat for {age:.1f}s")
                    missing.append(agent.agent_id)
            for job in c.expired_leases(now):
                self._requeue(c, job, now, "lease expired")
                if job.agent_id and self._is_known_live(c, job.agent_id):
                    self._refresh_busy(c, job.agent_id)
                requeued.append(job.job_id)
                devices.add(job.device)
            c.forget_agents((AgentState.EVICTED, AgentState.GONE), now - FORGET_AGENTS_AFTER_S)
        if missing or evicted or requeued:
            log.info("tick: missing %s, evicted %s, re-queued %s", missing, evicted, requeued)
            self._notify(devices)
        return TickOutcome(tuple(missing), tuple(evicted), tuple(requeued))

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _proven_agent(c: Tx, agent: AgentIdentity) -> AgentRow:
        """The agent's row, if its secret checks out; unknown ids and wrong secrets read the same."""
        row = c.find_agent(agent.agent_id)
        if row is None or not agent.matches(row.secret_hash):
            raise PermissionDenied(f"agent {agent.agent_id[:64]!r} is unknown or its agent secret is wrong: "
                                   "register again", step="agent")
        return row

    def _live_agent(self, c: Tx, agent: AgentIdentity) -> AgentRow:
        row = self._proven_agent(c, agent)
        if not is_alive(row.state):
            raise _not_alive(row)
        return row

    @staticmethod
    def _is_known_live(c: Tx, agent_id: str) -> bool:
        row = c.execute("SELECT state FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        return row is not None and is_alive(AgentState(row[0]))

    def _adopt(self, c: Tx, agent_id: str, device: str, running: Sequence[tuple[str, int]],
               now: float, owners: set[str]) -> list[tuple[str, int]]:
        """Renew the leases of jobs the agent still runs whose current attempt one of `owners`
        (the agent, or the registration it proved it replaces) holds; a job re-queued meanwhile
        but not yet leased again is taken back. Return the rest: the agent must stop those."""
        cancel = []
        deadline = now + self.policy.lease_ttl_s
        for job_id, attempt in running:
            job = c.job(job_id)
            if job is None or job.device != device or job.attempt != attempt or job.holder not in owners:
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
    def _refresh_busy(c: Tx, agent_id: str, state: AgentState | None = None,
                      holds: bool | None = None) -> AgentState:
        """Busy while it holds a lease, idle otherwise (an agent on time only); its state after.
        `state`, `holds`: what this transaction already knows of the agent (None: read it)."""
        if state is None:
            state = c.agent(agent_id).state
        if state not in ON_TIME:
            return state
        if holds is None:
            holds = c.holds_lease(agent_id)
        target = AgentState.BUSY if holds else AgentState.IDLE
        return c.set_agent_state(agent_id, target, current=state) if state != target else state


def job_artifacts(job: job_pb2.Job) -> set[str]:
    """The sha256 of every artifact a job names (model, inputs, labels, FP32 outputs, ...), found by
    walking the message, so artifacts a later version of Job adds are included without a change here."""
    found: set[str] = set()

    def walk(message) -> None:
        if isinstance(message, job_pb2.Artifact):
            if message.sha256:
                found.add(message.sha256)
            return
        for fd, value in message.ListFields():
            if fd.message_type is None:
                continue
            if fd.message_type.GetOptions().map_entry:
                value_field = fd.message_type.fields_by_name["value"]
                values = value.values() if value_field.message_type is not None else ()
            elif fd.is_repeated:
                values = value
            else:
                values = (value,)
            for item in values:
                walk(item)

    walk(job)
    return found
