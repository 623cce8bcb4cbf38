"""The agent-local TVM RPC tracker: phones (TVM RPC app / `tvm_rpc`) and `python -m tvm.exec.rpc_server`
register with it under a key; the agent asks it how many devices of its key are free or busy and
requests sessions from it. The agent either owns the tracker (started here) or attaches to one."""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from shared.errors import EvaluationError, InvalidArgument

log = logging.getLogger(__name__)

PORT_SEARCH = 100     # a started tracker takes the first free port in [port, port + PORT_SEARCH)


class DeviceUnreachable(Exception):
    """The tracker handed out a device that did not answer: a session failure of that device."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"device {address} did not answer: {reason}")
        self.address = address


class DeviceCounts(NamedTuple):
    free: int      # registered and idle: a request would be served now
    busy: int      # registered and serving a session


@dataclass(frozen=True)
class TrackerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> "TrackerAddress":
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"tracker address {text!r} is not HOST:PORT")
        return cls(host, int(port))


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (for port 0: tests and ad-hoc agents)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def counts_from_summary(summary: dict[str, Any], key: str) -> DeviceCounts:
    """Free/busy devices of `key` in a tracker summary. `queue_info[key].free` counts idle servers;
    `server_info` lists every connected server as `server:<key>`; busy = connected - free."""
    free = int(summary.get("queue_info", {}).get(key, {}).get("free", 0))
    connected = sum(1 for s in summary.get("server_info", []) if s.get("key") == f"server:{key}")
    return DeviceCounts(free, max(connected - free, 0))


class TvmTracker:
    """A tracker this agent started (owned: `close()` stops it) or one it attached to."""

    def __init__(self, address: TrackerAddress, owned: Any | None = None):
        self.address = address
        self._owned = owned            # tvm.rpc.tracker.Tracker when we started it

    @property
    def owned(self) -> bool:
        return self._owned is not None

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 9190) -> "TvmTracker":
        """Start a tracker in a TVM popen worker process; port 0 picks a free port."""
        from tvm.rpc.tracker import Tracker

        if not 0 <= port < 65536:
            raise InvalidArgument(f"tracker port {port} must be 0..65535")
        first = free_port(host) if port == 0 else port
        try:
            tracker = Tracker(host, port=first, port_end=min(first + PORT_SEARCH, 65536), silent=True)
        except Exception as exc:  # Tracker re-raises the worker's bind error as a plain exception
            raise EvaluationError(f"cannot start a TVM tracker on {host}:{first}: {exc}", step="tracker") from exc
        address = TrackerAddress(host, tracker.port)
        log.info("TVM tracker listening on %s", address)
        return cls(address, owned=tracker)

    @classmethod
    def attach(cls, address: TrackerAddress, timeout: float = 5.0) -> "TvmTracker":
        """Use a tracker someone else runs; fails now (not at the first job) when nothing answers."""
        tracker = cls(address)
        tracker.summary(timeout=timeout)
        return tracker

    def summary(self, timeout: float = 5.0) -> dict[str, Any]:
        from tvm import rpc

        self.probe(timeout)
        try:
            session = rpc.connect_tracker(self.address.host, self.address.port)
        except Exception as exc:  # RuntimeError "... is not RPC Tracker", or OSError
            raise EvaluationError(f"{self.address} is not a TVM RPC tracker: {exc}", step="tracker") from exc
        try:
            return session.summary()
        finally:
            session.close()

    def device_counts(self, key: str) -> DeviceCounts:
        return counts_from_summary(self.summary(), key)

    def wait_for_devices(self, key: str, count: int, timeout: float, *, free: bool = False,
                         clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], None] = time.sleep, poll: float = 0.1) -> DeviceCounts:
        """Block until at least `count` devices of `key` are registered (or free, with free=True)."""
        what = "free" if free else "registered"
        deadline = clock() + timeout
        while True:
            counts = self.device_counts(key)
            have = counts.free if free else counts.free + counts.busy
            if have >= count:
                return counts
            if clock() >= deadline:
                raise EvaluationError(f"only {have} device(s) {what} under key {key!r} at tracker "
                                      f"{self.address} after {timeout:g}s; wanted {count}", step="tracker")
            sleep(poll)

    def request(self, key: str, session_timeout: float, timeout: float) -> tuple[Any, str]:
        """An RPC session to the next free device of `key` and that device's address. Waits at most
        `timeout` seconds for one to be free (TVM's own request waits forever): TimeoutError."""
        from tvm import rpc
        from tvm.rpc import base

        self.probe(min(timeout, 5.0))
        try:
            sock = socket.create_connection((self.address.host, self.address.port), timeout=timeout)
        except OSError as exc:
            raise EvaluationError(f"no TVM tracker answers at {self.address}: {exc}", step="tracker") from exc
        try:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                raise EvaluationError(f"{self.address} is not a TVM RPC tracker", step="tracker")
            base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
            reply = base.recvjson(sock)
        except TimeoutError as exc:
            raise TimeoutError(f"no device under key {key!r} became free within {timeout:g}s at tracker "
                               f"{self.address}") from exc
        finally:
            sock.close()   # also withdraws a request still queued at the tracker
        if not isinstance(reply, list) or reply[0] != base.TrackerCode.SUCCESS:
            raise EvaluationError(f"tracker {self.address} refused the request for {key!r}: {reply!r}",
                                  step="tracker")
        host, port, matchkey = reply[1]
        where = f"{host}:{port}"
        try:
            return rpc.connect(host, port, matchkey, session_timeout), where
        except Exception as exc:  # TVMError/RuntimeError/OSError: the device went away after the tracker chose it
            raise DeviceUnreachable(where, str(exc).strip().splitlines()[0] if str(exc).strip() else
                                    type(exc).__name__) from exc

    def probe(self, timeout: float = 5.0) -> None:
        """Fail fast: TVM's own connect retries a refused port for 60 s."""
        try:
            with socket.create_connection((self.address.host, self.address.port), timeout=timeout):
                pass
        except OSError as exc:
            raise EvaluationError(f"no TVM tracker answers at {self.address}: {exc.strerror or exc}",
                                  step="tracker") from exc

    def close(self) -> None:
        """Stop the tracker if this agent started it; attached trackers are left running."""
        if self._owned is not None:
            tracker, self._owned = self._owned, None
            try:
                tracker.terminate()
            except OSError as exc:   # it got the signal too (Ctrl-C, a signal to the process group) and is gone
                log.info("TVM tracker on %s had already stopped (%s)", self.address, exc)
                if tracker.proc is not None:
                    tracker.proc.kill()
                return
            log.info("TVM tracker on %s stopped", self.address)

    def __enter__(self) -> "TvmTracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def jobs_for(counts: DeviceCounts, running: int) -> int:
    """How many more jobs a TVM agent may start: one per free device of its key, but never more jobs
    than devices (a job still compiling holds no device yet, so it must not count as free)."""
    return max(0, min(counts.free, counts.free + counts.busy - running))


class DeviceSlots:
    """The TVM agent's parallelism: the tracker's free/busy devices of `key`, re-read every `poll_s`
    on a thread. A tracker that stops answering counts as no devices (no new jobs) until it is back."""

    def __init__(self, tracker: TvmTracker, key: str, poll_s: float = 1.0):
        self.tracker = tracker
        self.key = key
        self.poll_s = poll_s
        self._counts = DeviceCounts(0, 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def counts(self) -> DeviceCounts:
        with self._lock:
            return self._counts

    def available(self, running: int) -> int:
        return jobs_for(self.counts, running)

    def refresh(self) -> DeviceCounts:
        """Read the tracker now; log (once per outage) when it does not answer."""
        try:
            counts = self.tracker.device_counts(self.key)
        except (EvaluationError, OSError, RuntimeError) as exc:
            if not self._failing:
                log.warning("TVM tracker %s does not answer (%s): no new jobs until it does", self.tracker.address, exc)
            self._failing = True
            counts = DeviceCounts(0, 0)
        else:
            if self._failing:
                log.info("TVM tracker %s answers again", self.tracker.address)
            self._failing = False
        with self._lock:
            changed, self._counts = counts != self._counts, counts
        if changed:
            log.info("devices of key %r at tracker %s: %d free, %d busy", self.key, self.tracker.address, *counts)
        return counts

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name=f"tvm-slots-{self.key}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
