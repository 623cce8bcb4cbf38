"""The coordinator's durable state: one SQLite database (WAL mode) in the data dir.

Agents, campaigns, candidates, jobs, results and artifact records live here, so a restarted
coordinator loses nothing. One connection guarded by a lock; every change runs inside
`transaction()` (BEGIN IMMEDIATE ... COMMIT), and every state column is changed only through
`set_*_state`, which checks the move with `states.require_transition`."""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from coordinator.farm.states import FINISHED, AgentState, CampaignState, JobState, require_transition
from shared.errors import FailedPrecondition, NotFound
from shared.pb.qfarm.v1 import job_pb2
from shared.results import DeviceResult

# Indexes follow the hot queries: `jobs_queue_order` is the queue in lease order (priority first,
# then arrival), so a lease reads the head of its class's queue instead of sorting all of it (the
# former `jobs_queue` lacked the DESC); `jobs_leased` holds only the leased jobs, so the clock's
# tick reads the leases that ran out, not every job ever run.
SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY, name TEXT NOT NULL, device TEXT NOT NULL, state TEXT NOT NULL,
    capabilities BLOB NOT NULL, registered_at REAL NOT NULL, last_heartbeat REAL NOT NULL,
    free_slots INTEGER NOT NULL DEFAULT 0, busy_slots INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '',
    secret_hash TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS agents_by_device ON agents(device, state);
CREATE TABLE IF NOT EXISTS artifacts (
    sha256 TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id TEXT PRIMARY KEY, name TEXT NOT NULL, spec_json TEXT NOT NULL, state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    candidate_id TEXT PRIMARY KEY, model_sha256 TEXT NOT NULL, payload BLOB NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, device TEXT NOT NULL, kind TEXT NOT NULL, candidate_id TEXT NOT NULL,
    payload BLOB NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, agent_id TEXT,
    lease_deadline REAL, priority INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    holder TEXT
);
DROP INDEX IF EXISTS jobs_queue;
CREATE INDEX IF NOT EXISTS jobs_queue_order ON jobs(device, state, priority DESC);
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs(state) WHERE state = '{leased}';
CREATE INDEX IF NOT EXISTS jobs_by_agent ON jobs(agent_id, state);
CREATE TABLE IF NOT EXISTS campaign_jobs (
    campaign_id TEXT NOT NULL, job_id TEXT NOT NULL, PRIMARY KEY (campaign_id, job_id)
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT PRIMARY KEY, attempt INTEGER NOT NULL, agent_id TEXT NOT NULL, status TEXT NOT NULL,
    payload BLOB NOT NULL, fp32_sha256 TEXT NOT NULL DEFAULT '', received_at REAL NOT NULL
);
""".replace("{leased}", JobState.LEASED.value)
# columns added after the first release, added to an older database when it is opened
ADDED_COLUMNS = (("agents", "secret_hash", "TEXT NOT NULL DEFAULT ''"), ("jobs", "holder", "TEXT"))


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    name: str
    device: str
    state: AgentState
    capabilities: bytes
    registered_at: float
    last_heartbeat: float
    free_slots: int
    busy_slots: int
    reason: str
    secret_hash: str = field(default="", repr=False)     # SHA-256 of the secret the agent got at registration


@dataclass(frozen=True)
class JobRow:
    job_id: str
    device: str
    kind: str                 # "reference" | "candidate"
    candidate_id: str
    payload: bytes            # serialized qfarm.v1.Job with attempt 0
    state: JobState
    attempt: int
    agent_id: str | None
    lease_deadline: float | None
    priority: int
    holder: str | None = None   # the agent that leased the current attempt (kept after the lease ends)
    updated_at: float = 0.0     # when its state last changed


@dataclass(frozen=True)
class ResultRow:
    job_id: str
    attempt: int
    agent_id: str
    status: str
    payload: bytes            # serialized qfarm.v1.DeviceResult
    fp32_sha256: str
    received_at: float

    def result(self) -> DeviceResult:
        return DeviceResult.from_proto(job_pb2.DeviceResult.FromString(self.payload))


@dataclass(frozen=True)
class CampaignRow:
    campaign_id: str
    name: str
    spec_json: str
    state: CampaignState
    message: str
    created_at: float
    updated_at: float


#: the oldest SQLite the store's statements run on (JSON1's json_each in UPDATE ... FROM, built in since 3.38)
MIN_SQLITE = (3, 38, 0)


class Store:
    """Thread-safe access to the database; methods taking `c` must run inside `transaction()`."""

    def __init__(self, data_dir: Path):
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise FailedPrecondition(f"SQLite {sqlite3.sqlite_version} is too old for the coordinator's store: it "
                                     f"needs {'.'.join(map(str, MIN_SQLITE))} or newer (a newer Python build or "
                                     "system libsqlite3)", step="store")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "qfarm.sqlite3"
        self._lock = threading.RLock()
        #: called after each commit for every job that changed state in it: (device, before, after,
        #: seconds spent in `before`); e.g. the dashboard's latency histograms
        self.job_listeners: list[Callable[[str, JobState, JobState, float], None]] = []
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._checkpointer: sqlite3.Connection | None = None
        with self.transaction() as c:
            c.executescript_safe(SCHEMA)
            for table, column, declaration in ADDED_COLUMNS:
                if column not in {r[1] for r in c.execute(f"PRAGMA table_info({table})")}:
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._checkpointer is not None:
                self._checkpointer.close()

    def hold_if_free(self, wait_s: float = 0.0) -> bool:
        """Take the store's lock if it is free now or within `wait_s` (then `release` it)."""
        return self._lock.acquire(timeout=wait_s) if wait_s > 0 else self._lock.acquire(blocking=False)

    def release(self) -> None:
        self._lock.release()

    def checkpoint(self) -> tuple[int, int]:
        """Copy the write-ahead log into the database, on a connection of its own and without the
        store's lock. From the first call on, commits no longer checkpoint by themselves (SQLite's
        automatic one runs inside the commit that crosses 1000 pages, fsyncs included, while the
        lock is held): the caller (the server's tick) checkpoints periodically instead. PASSIVE:
        it never waits for readers or writers; what it cannot copy now, the next call does.
        Returns the log's pages and those copied."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                                 timeout=30)
            with self._lock:
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
        _busy, pages, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return pages, copied

    @contextmanager
    def transaction(self) -> Iterator["Tx"]:
        """One atomic unit: committed when the block ends, rolled back if it raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            tx = Tx(self._conn)
            try:
                yield tx
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        for listener in self.job_listeners:
            for transition in tx.transitions:
                listener(*transition)

    def journal_mode(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA journal_mode").fetchone()[0]


class Tx:
    """Queries and state changes inside one transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn
        self.transitions: list[tuple[str, JobState, JobState, float]] = []

    def executescript_safe(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self._c.execute(statement)

    def execute(self, sql: str, params: Sequence = ()) -> sqlite3.Cursor:
        return self._c.execute(sql, params)

    # ---------------------------------------------------------------- agents
    def insert_agent(self, agent_id: str, name: str, device: str, capabilities: bytes, now: float,
                     free_slots: int, secret_hash: str = "") -> None:
        require_transition(None, AgentState.IDLE, what=agent_id)
        self._c.execute(
            "INSERT INTO agents (agent_id, name, device, state, capabilities, registered_at, last_heartbeat, "
            "free_slots, secret_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (agent_id, name, device, AgentState.IDLE.value, capabilities, now, now, free_slots, secret_hash))

    def find_agent(self, agent_id: str) -> AgentRow | None:
        row = self._c.execute("SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        return _agent(row) if row is not None else None

    def count_agents(self, states: Sequence[AgentState]) -> int:
        return self._c.execute(f"SELECT COUNT(*) FROM agents WHERE state IN ({','.join('?' * len(states))})",
                               [s.value for s in states]).fetchone()[0]

    def forget_agents(self, states: Sequence[AgentState], heard_before: float) -> int:
        """Delete agents in `states` not heard from since `heard_before` (their results keep their id)."""
        return self._c.execute(f"DELETE FROM agents WHERE state IN ({','.join('?' * len(states))}) "
                               "AND last_heartbeat < ?", [*(s.value for s in states), heard_before]).rowcount

    def agent(self, agent_id: str) -> AgentRow:
        row = self.find_agent(agent_id)
        if row is None:
            raise NotFound(f"agent {agent_id!r} is not registered: register again", step="agent")
        return row

    def agents(self, states: Sequence[AgentState] | None = None, device: str | None = None,
               heard_before: float | None = None) -> list[AgentRow]:
        """Agents in `states`, of `device`, last heard before `heard_before` (each: None for any)."""
        sql, params = "SELECT * FROM agents WHERE 1=1", []
        if states is not None:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params += [s.value for s in states]
        if device is not None:
            sql += " AND device = ?"
            params.append(device)
        if heard_before is not None:
            sql += " AND last_heartbeat < ?"
            params.append(heard_before)
        return [_agent(r) for r in self._c.execute(sql + " ORDER BY registered_at", params)]

    def set_agent_state(self, agent_id: str, target: AgentState, reason: str = "",
                        current: AgentState | None = None) -> AgentState:
        """Move an agent, checked; `current`: its state as already read in this transaction."""
        if current is None:
            current = self.agent(agent_id).state
        if current == target:
            return current
        require_transition(current, target, what=agent_id)
        self._c.execute("UPDATE agents SET state = ?, reason = ? WHERE agent_id = ?",
                        (target.value, reason, agent_id))
        return target

    def touch_agent(self, agent_id: str, now: float, free_slots: int | None = None,
                    busy_slots: int | None = None) -> None:
        if free_slots is None:
            self._c.execute("UPDATE agents SET last_heartbeat = ? WHERE agent_id = ?", (now, agent_id))
        else:
            self._c.execute("UPDATE agents SET last_heartbeat = ?, free_slots = ?, busy_slots = ? WHERE agent_id = ?",
                            (now, free_slots, busy_slots or 0, agent_id))

    def touch_agents(self, heard: Mapping[str, float], states: Sequence[AgentState]) -> None:
        """Record when agents in `states` were last heard (agent id -> time), never moving a time back:
        one statement for all of them, the times passed as one JSON object (half the time of one
        UPDATE per agent; the clock's tick writes what presence.py recorded)."""
        marks = ",".join("?" * len(states))
        self._c.execute(f"UPDATE agents SET last_heartbeat = MAX(agents.last_heartbeat, heard.value) "
                        f"FROM json_each(?) AS heard WHERE agents.agent_id = heard.key AND agents.state IN ({marks})",
                        (json.dumps(heard), *(s.value for s in states)))

    # ---------------------------------------------------------------- jobs
    def job(self, job_id: str) -> JobRow | None:
        row = self._c.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def insert_job(self, job_id: str, device: str, kind: str, candidate_id: str, payload: bytes,
                   priority: int, now: float) -> None:
        require_transition(None, JobState.QUEUED, what=job_id)
        self._c.execute(
            "INSERT INTO jobs (job_id, device, kind, candidate_id, payload, state, priority, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, device, kind, candidate_id, payload, JobState.QUEUED.value, priority, now, now))

    def set_job_state(self, job_id: str, target: JobState, now: float, *, agent_id: str | None = None,
                      lease_deadline: float | None = None, attempt: int | None = None,
                      current: JobRow | None = None) -> JobRow:
        """Move a job, checked; leased jobs carry an agent and a deadline, all others none. The
        agent that leased the current attempt stays recorded as its `holder` after the lease ends.
        `current`: the job's row as already read in this transaction (saves reading it again)."""
        job = current if current is not None and current.job_id == job_id else self.job(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} does not exist", step="job")
        require_transition(job.state, target, what=job_id)
        self.transitions.append((job.device, job.state, target, now - job.updated_at))
        holder = job.holder
        if target == JobState.LEASED:
            holder = agent_id
        else:
            agent_id, lease_deadline = None, None
        attempt = job.attempt if attempt is None else attempt
        self._c.execute(
            "UPDATE jobs SET state = ?, agent_id = ?, lease_deadline = ?, attempt = ?, holder = ?, updated_at = ? "
            "WHERE job_id = ?", (target.value, agent_id, lease_deadline, attempt, holder, now, job_id))
        return dataclasses.replace(job, state=target, agent_id=agent_id, lease_deadline=lease_deadline,
                                   attempt=attempt, holder=holder, updated_at=now)

    def renew_lease(self, job_id: str, agent_id: str, lease_deadline: float) -> None:
        self._c.execute("UPDATE jobs SET agent_id = ?, holder = ?, lease_deadline = ? WHERE job_id = ? AND state = ?",
                        (agent_id, agent_id, lease_deadline, job_id, JobState.LEASED.value))

    def queued_jobs(self, device: str, limit: int) -> list[JobRow]:
        rows = self._c.execute(
            "SELECT * FROM jobs WHERE device = ? AND state = ? ORDER BY priority DESC, rowid LIMIT ?",
            (device, JobState.QUEUED.value, limit))
        return [_job(r) for r in rows]

    def holds_lease(self, agent_id: str) -> bool:
        """Whether the agent holds any lease (what `jobs_of_agent` would list, without reading it)."""
        return self._c.execute("SELECT 1 FROM jobs WHERE agent_id = ? AND state = ? LIMIT 1",
                               (agent_id, JobState.LEASED.value)).fetchone() is not None

    def jobs_of_agent(self, agent_id: str) -> list[JobRow]:
        rows = self._c.execute("SELECT * FROM jobs WHERE agent_id = ? AND state = ? ORDER BY rowid",
                               (agent_id, JobState.LEASED.value))
        return [_job(r) for r in rows]

    # both through the partial index `jobs_leased` (the state is in the text, as in the index's)
    def leased_jobs(self) -> list[JobRow]:
        return [_job(r) for r in self._c.execute(f"SELECT * FROM jobs WHERE state = '{JobState.LEASED.value}' "
                                                  "ORDER BY rowid")]

    def expired_leases(self, now: float) -> list[JobRow]:
        """Leased jobs whose lease deadline is before `now`."""
        return [_job(r) for r in self._c.execute(f"SELECT * FROM jobs WHERE state = '{JobState.LEASED.value}' "
                                                  "AND lease_deadline < ? ORDER BY rowid", (now,))]

    # ---------------------------------------------------------------- results
    def result(self, job_id: str) -> ResultRow | None:
        row = self._c.execute("SELECT * FROM results WHERE job_id = ?", (job_id,)).fetchone()
        return ResultRow(**dict(row)) if row is not None else None

    def insert_result(self, row: ResultRow) -> None:
        self._c.execute(
            "INSERT INTO results (job_id, attempt, agent_id, status, payload, fp32_sha256, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.job_id, row.attempt, row.agent_id, row.status, row.payload, row.fp32_sha256, row.received_at))

    def results(self, job_ids: Sequence[str]) -> dict[str, ResultRow]:
        out: dict[str, ResultRow] = {}
        ids = list(job_ids)
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            rows = self._c.execute(f"SELECT * FROM results WHERE job_id IN ({','.join('?' * len(part))})", part)
            out.update({r["job_id"]: ResultRow(**dict(r)) for r in rows})
        return out

    def last_result_rowid(self) -> int:
        return self._c.execute("SELECT COALESCE(MAX(rowid), 0) FROM results").fetchone()[0]

    def results_after(self, rowid: int, limit: int = 1000) -> tuple[int, list[ResultRow]]:
        """Results stored after `rowid`, in arrival order, and the rowid to continue from: a reader
        keeping this cursor reads each result once, whatever the number of jobs it waits on
        (results are never deleted, so rowids only grow)."""
        rows = self._c.execute("SELECT rowid, * FROM results WHERE rowid > ? ORDER BY rowid LIMIT ?",
                               (rowid, limit)).fetchall()
        if not rows:
            return rowid, []
        return rows[-1]["rowid"], [ResultRow(**{k: r[k] for k in r.keys() if k != "rowid"}) for r in rows]

    # ---------------------------------------------------------------- artifacts
    def put_artifact(self, sha256: str, size_bytes: int, kind: str, name: str, now: float) -> None:
        self._c.execute("INSERT OR IGNORE INTO artifacts (sha256, size_bytes, kind, name, created_at) "
                        "VALUES (?, ?, ?, ?, ?)", (sha256, size_bytes, kind, name, now))

    def has_artifacts(self, shas: Sequence[str]) -> set[str]:
        found: set[str] = set()
        ids = list(shas)
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            rows = self._c.execute(f"SELECT sha256 FROM artifacts WHERE sha256 IN ({','.join('?' * len(part))})",
                                   part)
            found.update(r[0] for r in rows)
        return found

    # ---------------------------------------------------------------- candidates
    def put_candidate(self, candidate_id: str, model_sha256: str, payload: bytes, now: float) -> None:
        self._c.execute("INSERT OR IGNORE INTO candidates (candidate_id, model_sha256, payload, created_at) "
                        "VALUES (?, ?, ?, ?)", (candidate_id, model_sha256, payload, now))

    def candidate(self, candidate_id: str) -> bytes | None:
        row = self._c.execute("SELECT payload FROM candidates WHERE candidate_id = ?", (candidate_id,)).fetchone()
        return row[0] if row is not None else None

    # ---------------------------------------------------------------- campaigns
    def insert_campaign(self, campaign_id: str, name: str, spec_json: str, now: float) -> None:
        require_transition(None, CampaignState.QUEUED, what=campaign_id)
        self._c.execute("INSERT INTO campaigns (campaign_id, name, spec_json, state, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (campaign_id, name, spec_json, CampaignState.QUEUED.value, now, now))

    def campaign(self, campaign_id: str) -> CampaignRow:
        row = self._c.execute("SELECT * FROM campaigns WHERE campaign_id = ?", (campaign_id,)).fetchone()
        if row is None:
            raise NotFound(f"campaign {campaign_id!r} does not exist", step="campaign")
        return _campaign(row)

    def campaigns(self, states: Sequence[CampaignState] | None = None) -> list[CampaignRow]:
        sql, params = "SELECT * FROM campaigns", []
        if states is not None:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params = [s.value for s in states]
        return [_campaign(r) for r in self._c.execute(sql + " ORDER BY created_at, rowid", params)]

    def set_campaign_state(self, campaign_id: str, target: CampaignState, message: str, now: float) -> None:
        current = self.campaign(campaign_id).state
        if current != target:
            require_transition(current, target, what=campaign_id)
        self._c.execute("UPDATE campaigns SET state = ?, message = ?, updated_at = ? WHERE campaign_id = ?",
                        (target.value, message, now, campaign_id))

    def set_campaign_message(self, campaign_id: str, message: str, now: float) -> None:
        """A progress line; a finished campaign keeps the message it finished with."""
        self._c.execute("UPDATE campaigns SET message = ?, updated_at = ? WHERE campaign_id = ? AND state NOT IN "
                        "(?, ?, ?)", (message, now, campaign_id, *(s.value for s in FINISHED)))

    def link_job(self, campaign_id: str, job_id: str) -> None:
        self._c.execute("INSERT OR IGNORE INTO campaign_jobs (campaign_id, job_id) VALUES (?, ?)",
                        (campaign_id, job_id))

    def campaign_progress(self, campaign_id: str) -> dict[str, dict[str, int]]:
        """{device: {job state: count}} over the campaign's jobs."""
        rows = self._c.execute(
            "SELECT j.device, j.state, COUNT(*) FROM campaign_jobs cj JOIN jobs j ON j.job_id = cj.job_id "
            "WHERE cj.campaign_id = ? GROUP BY j.device, j.state", (campaign_id,))
        out: dict[str, dict[str, int]] = {}
        for device, state, count in rows:
            out.setdefault(device, {})[state] = count
        return out

    def jobs_wanted_elsewhere(self, campaign_id: str, job_ids: Sequence[str]) -> set[str]:
        """Jobs also linked to another campaign that is still queued or running."""
        wanted: set[str] = set()
        for job_id in job_ids:
            row = self._c.execute(
                "SELECT 1 FROM campaign_jobs cj JOIN campaigns c ON c.campaign_id = cj.campaign_id "
                "WHERE cj.job_id = ? AND cj.campaign_id != ? AND c.state IN (?, ?) LIMIT 1",
                (job_id, campaign_id, CampaignState.QUEUED.value, CampaignState.RUNNING.value)).fetchone()
            if row is not None:
                wanted.add(job_id)
        return wanted

    def campaign_candidate_ids(self, campaign_id: str) -> set[str]:
        """The distinct candidates the campaign's jobs measure (reference jobs excluded)."""
        rows = self._c.execute("SELECT DISTINCT j.candidate_id FROM campaign_jobs cj JOIN jobs j "
                               "ON j.job_id = cj.job_id WHERE cj.campaign_id = ? AND j.kind = 'candidate'",
                               (campaign_id,))
        return {r[0] for r in rows}

    def campaign_job_ids(self, campaign_id: str) -> list[str]:
        return [r[0] for r in self._c.execute("SELECT job_id FROM campaign_jobs WHERE campaign_id = ?",
                                              (campaign_id,))]


def _agent(row: sqlite3.Row) -> AgentRow:
    data = dict(row)
    data["state"] = AgentState(data["state"])
    return AgentRow(**data)


_JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(JobRow))


def _job(row: sqlite3.Row) -> JobRow:
    data = {k: row[k] for k in _JOB_COLUMNS}
    data["state"] = JobState(data["state"])
    return JobRow(**data)


def _campaign(row: sqlite3.Row) -> CampaignRow:
    data = dict(row)
    data["state"] = CampaignState(data["state"])
    return CampaignRow(**data)
