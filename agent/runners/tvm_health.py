"""Which devices of a key keep dropping their sessions. After `unhealthy_after` consecutive session
failures a device address is unhealthy for `quarantine_s` seconds, and the TVM runner skips it
while another device of the key is free. A success clears the count; once the quarantine is over
the count stays high, so the next failure quarantines the device again at once (probation).

The record is one small JSON file in the agent's TVM cache folder, shared under a file lock by
every slot worker (separate processes) and by later jobs of the same agent."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from shared.atomic import atomic_write_text
from shared.errors import InvalidArgument

log = logging.getLogger(__name__)

HEALTH_FILE = "device-health.json"


@dataclass(frozen=True)
class HealthPolicy:
    unhealthy_after: int = 3          # consecutive session failures of one device address
    quarantine_s: float = 600.0       # how long an unhealthy device is skipped

    def __post_init__(self) -> None:
        if self.unhealthy_after < 1:
            raise InvalidArgument(f"unhealthy_after {self.unhealthy_after} must be >= 1")
        if self.quarantine_s < 0:
            raise InvalidArgument(f"quarantine {self.quarantine_s} must be >= 0 seconds")


@dataclass(frozen=True)
class DeviceRecord:
    failures: int            # consecutive session failures
    unhealthy_until: float   # unix seconds; 0 when never quarantined
    last_error: str = ""


def device_id(key: str, address: str) -> str:
    return f"{key}@{address}"


class DeviceHealth:
    """Session failures per (key, device address), persisted in `path` (created on first failure)."""

    def __init__(self, path: Path, policy: HealthPolicy = HealthPolicy(),
                 clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.policy = policy
        self._clock = clock

    def is_unhealthy(self, key: str, address: str) -> bool:
        record = self.records().get(device_id(key, address))
        return record is not None and record.unhealthy_until > self._clock()

    def failed(self, key: str, address: str, error: str = "") -> bool:
        """Count one session failure; True when it makes the device unhealthy (quarantine starts)."""
        name = device_id(key, address)
        with self._edit() as data:
            old = data.get(name, {})
            failures = int(old.get("failures", 0)) + 1
            until = float(old.get("unhealthy_until", 0.0))
            now = self._clock()
            starts = failures >= self.policy.unhealthy_after and until <= now
            if starts:
                until = now + self.policy.quarantine_s
            data[name] = {"failures": failures, "unhealthy_until": until, "last_error": error[:300]}
        if starts:
            log.warning("TVM device %s is unhealthy after %d consecutive session failures (last: %s): "
                        "skipped for %g s while other devices of key %r are free",
                        address, failures, error, self.policy.quarantine_s, key)
        return starts

    def succeeded(self, key: str, address: str) -> None:
        """A session that did its work: the device is healthy again."""
        name = device_id(key, address)
        if name not in self.records():        # the common case: nothing to write
            return
        with self._edit() as data:
            data.pop(name, None)

    def records(self) -> dict[str, DeviceRecord]:
        return {name: DeviceRecord(int(r["failures"]), float(r["unhealthy_until"]), str(r.get("last_error", "")))
                for name, r in self._read().items()}

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:     # a damaged record only costs the history
            log.warning("ignoring unreadable device health file %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under an exclusive lock; the file is replaced atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self._read()
                yield data
                atomic_write_text(self.path, json.dumps(data, sort_keys=True))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
