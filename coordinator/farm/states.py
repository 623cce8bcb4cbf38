"""Explicit lifecycles of agents, jobs and campaigns. Every state change anywhere in the farm goes
through `require_transition`, so an illegal move is one error in one place instead of a silent
corruption found hours later."""
from __future__ import annotations

from enum import Enum
from typing import Mapping, TypeVar

from shared.errors import FailedPrecondition


class AgentState(str, Enum):
    IDLE = "idle"          # registered, heartbeating, no lease
    BUSY = "busy"          # holds at least one lease
    MISSING = "missing"    # heartbeats late: leases kept for now
    EVICTED = "evicted"    # heartbeats gone too long: leases returned to the queue (terminal)
    GONE = "gone"          # deregistered, replaced, or the coordinator restarted (terminal)


class JobState(str, Enum):
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"          # has exactly one result (ok, crash or unsupported) (terminal)
    CANCELLED = "cancelled"  # no campaign wants it any more; wanted again -> queued


class CampaignState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped by `coordinator cancel` (terminal)


#: campaigns that will not change any more
FINISHED: tuple[CampaignState, ...] = (CampaignState.DONE, CampaignState.FAILED, CampaignState.CANCELLED)
#: agents that may still hold leases and come back (evicted and gone never do)
ALIVE: tuple[AgentState, ...] = (AgentState.IDLE, AgentState.BUSY, AgentState.MISSING)
#: agents heartbeating on time: idle or busy follows the leases they hold
ON_TIME: tuple[AgentState, ...] = (AgentState.IDLE, AgentState.BUSY)

TRANSITIONS: Mapping[type, Mapping[Enum | None, frozenset[Enum]]] = {
    AgentState: {
        None: frozenset({AgentState.IDLE}),
        AgentState.IDLE: frozenset({AgentState.BUSY, AgentState.MISSING, AgentState.GONE}),
        AgentState.BUSY: frozenset({AgentState.IDLE, AgentState.MISSING, AgentState.GONE}),
        AgentState.MISSING: frozenset({AgentState.IDLE, AgentState.BUSY, AgentState.EVICTED, AgentState.GONE}),
        AgentState.EVICTED: frozenset(),
        AgentState.GONE: frozenset(),
    },
    JobState: {
        None: frozenset({JobState.QUEUED}),
        JobState.QUEUED: frozenset({JobState.LEASED, JobState.DONE, JobState.CANCELLED}),
        JobState.LEASED: frozenset({JobState.QUEUED, JobState.DONE, JobState.CANCELLED}),
        JobState.DONE: frozenset(),
        JobState.CANCELLED: frozenset({JobState.QUEUED, JobState.DONE}),
    },
    CampaignState: {
        None: frozenset({CampaignState.QUEUED}),
        CampaignState.QUEUED: frozenset({CampaignState.RUNNING, CampaignState.FAILED, CampaignState.CANCELLED}),
        CampaignState.RUNNING: frozenset({CampaignState.DONE, CampaignState.FAILED, CampaignState.CANCELLED}),
        CampaignState.DONE: frozenset(),
        CampaignState.FAILED: frozenset(),
        CampaignState.CANCELLED: frozenset(),
    },
}

S = TypeVar("S", AgentState, JobState, CampaignState)


def require_transition(current: S | None, target: S, *, what: str = "") -> S:
    """Return `target` if moving from `current` (None = not yet created) is allowed, else raise
    FailedPrecondition naming the entity and both states."""
    table = TRANSITIONS[type(target)]
    if current is not None and type(current) is not type(target):
        raise TypeError(f"cannot compare {type(current).__name__} with {type(target).__name__}")
    if target not in table[current]:
        kind = type(target).__name__.replace("State", "").lower()
        label = f"{kind} {what}".strip()
        frm = current.value if current is not None else "(new)"
        raise FailedPrecondition(f"{label} cannot move from {frm} to {target.value}", step="state")
    return target


def is_alive(state: AgentState) -> bool:
    """Alive agents may still hold leases and come back; evicted and gone never do."""
    return state in ALIVE
