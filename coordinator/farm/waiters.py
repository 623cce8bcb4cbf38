"""Agents long-polling for jobs (Lease), as futures on the event loop: an idle agent costs a few
hundred bytes, not a thread.

Per device class, waiters queue in arrival order. When jobs of a class become leasable
(`changed`), ONE waiter is woken; a woken waiter that gets jobs wakes the next, and one that finds
the queue empty stops the chain. So a thousand idle agents of one class cost one lease attempt per
queued job, not a thousand, and they are served first come, first served.

A change that lands while a waiter is between its lease attempt and its wait is not lost: the
waiter samples the class's version before the attempt and does not wait if it moved. An agent
has at most one wait: a new Lease call from it ends its older one (empty), so retries after a
client-side timeout cannot pile up. Everything here runs on the event loop thread."""
from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from typing import Iterable


class LeaseWaiters:
    def __init__(self) -> None:
        self._versions: defaultdict[str, int] = defaultdict(int)
        self._queues: defaultdict[str, deque[asyncio.Future]] = defaultdict(deque)
        self._live: defaultdict[str, int] = defaultdict(int)       # not yet done futures per class
        self._by_agent: dict[str, asyncio.Future] = {}

    def version(self, device: str) -> int:
        return self._versions[device]

    def waiting(self, device: str | None = None) -> int:
        return sum(self._live.values()) if device is None else self._live[device]

    def changed(self, devices: Iterable[str] | None) -> None:
        """Jobs of `devices` (None: of any class) may have become leasable: wake one waiter each."""
        targets = list(self._queues) if devices is None else list(devices)
        if devices is None:
            for device in list(self._versions):
                self._versions[device] += 1
        for device in targets:
            if devices is not None:
                self._versions[device] += 1
            self.wake_one(device)

    def wake_one(self, device: str) -> None:
        queue = self._queues.get(device)
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(True)
                return

    async def wait(self, agent_id: str, device: str, since: int, timeout: float) -> bool:
        """Wait until woken (True), or the timeout or a newer Lease of the same agent (False).
        Returns True at once when the class changed after `since`."""
        if self._versions[device] != since:
            return True
        older = self._by_agent.get(agent_id)
        if older is not None and not older.done():
            older.set_result(False)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        timer = loop.call_later(timeout, _expire, future)      # cheaper than wait_for: no task per wait
        self._queues[device].append(future)
        self._live[device] += 1
        self._by_agent[agent_id] = future
        try:
            return await future
        finally:
            timer.cancel()
            self._live[device] -= 1
            if self._by_agent.get(agent_id) is future:
                del self._by_agent[agent_id]
            if not future.done():
                future.cancel()
            self._compact(device)

    def _compact(self, device: str) -> None:
        """Drop finished futures once they outnumber the live ones (amortised O(1) per wait)."""
        queue = self._queues[device]
        if len(queue) > 2 * self._live[device] + 16:
            self._queues[device] = deque(f for f in queue if not f.done())
        if not self._queues[device] and not self._live[device]:
            del self._queues[device], self._live[device]


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(False)
