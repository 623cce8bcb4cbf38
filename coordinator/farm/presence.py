"""Heartbeats of idle agents, answered from memory.

An idle agent's heartbeat changes one thing: the time it was last heard. Once a heartbeat that
went through the store has found an agent idle (alive, no lease, nothing running, the same free
and busy slots), the agent's next heartbeats with the same identity and slot counts only record
the time here, on the event loop, with no store transaction and no thread. The scheduler's tick
writes the recorded times in its own transaction before it judges who is missing (and turns a
missing agent heard again back to idle), so the lease and eviction rules see every heartbeat.

Anything else goes through the store again: a heartbeat listing running jobs or other slot
counts, an agent that leased, deregistered, was replaced, or went missing or evicted (the server
forgets it here as each of those happens)."""
from __future__ import annotations

import threading

from shared.auth import AgentIdentity


class Presence:
    def __init__(self) -> None:
        self._lock = threading.Lock()                       # the loop records, the tick thread collects
        self._idle: dict[str, tuple[str, int, int]] = {}    # agent id -> (secret hash, free, busy)
        self._heard: dict[str, float] = {}

    def heard(self, agent: AgentIdentity, free_slots: int, busy_slots: int, now: float) -> bool:
        """Record an idle agent's heartbeat; False when it must go through the store."""
        with self._lock:
            known = self._idle.get(agent.agent_id)
            if known is None or known[1:] != (free_slots, busy_slots) or not agent.matches(known[0]):
                return False
            self._heard[agent.agent_id] = now
            return True

    def idle(self, agent_id: str, secret_hash: str, free_slots: int, busy_slots: int) -> None:
        """The store found this agent idle: its next heartbeats like this one need no transaction."""
        with self._lock:
            self._idle[agent_id] = (secret_hash, free_slots, busy_slots)

    def forget(self, *agent_ids: str) -> None:
        with self._lock:
            for agent_id in agent_ids:
                self._idle.pop(agent_id, None)

    def collect(self) -> dict[str, float]:
        """The times heard since the last call (agent id -> clock time), for the tick to write."""
        with self._lock:
            heard, self._heard = self._heard, {}
            return heard

    def __len__(self) -> int:
        return len(self._idle)
