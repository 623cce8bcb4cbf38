"""The parent's side of a sandboxed worker process (`python -m MODULE --serve`, shared/child.py):
one long-lived worker per slot, used by the agent for jobs (agent/sandbox.py) and by the
coordinator for builds (coordinator/buildpool.py).

`run` hands the worker one request and waits for its answer line, a timeout, a cancel, or the
worker's death. A dead or killed worker is replaced on the next request, so a crash costs one
request, never the parent. With `memory_limit_mb` the worker caps its own address space
(RLIMIT_AS) before taking requests: one above it fails to allocate and is reported as crash with
cause `oom`."""
from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared.results import CrashCause, CrashKind, is_oom

log = logging.getLogger(__name__)

STDERR_TAIL = 4000
MAX_LOG_BYTES = 16 << 20


@dataclass(frozen=True)
class ChildOutcome:
    finished: bool                        # the worker answered: result.json is there
    crash_cause: CrashCause | None = None  # signal:SIGSEGV, oom, timeout, error:exit 1: ..., cancelled
    stderr_tail: str = ""


class ChildWorker:
    """`module` is the worker's entry point (`python -m module --serve PARENT_PID`); it runs in
    `cwd` (default: the log's folder)."""

    def __init__(self, python: str, env: dict[str, str], log_path: Path, memory_limit_mb: int = 0, *,
                 module: str, cwd: Path | None = None):
        self.python = python
        self.module = module
        self.cwd = cwd
        self.memory_limit_mb = memory_limit_mb
        self.env = env
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self._buffer = b""

    def _ensure(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            big = self.log_path.is_file() and self.log_path.stat().st_size > MAX_LOG_BYTES
            command = [self.python, "-m", self.module, "--serve", str(os.getpid())]
            if self.memory_limit_mb:
                command += ["--memory-mb", str(self.memory_limit_mb)]
            with open(self.log_path, "wb" if big else "ab") as err:   # a new worker starts a fresh log
                self.proc = subprocess.Popen(
                    command, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=err, env=self.env, cwd=self.cwd or self.log_path.parent)
            self._buffer = b""
        return self.proc

    def run(self, request: Path, timeout_s: float, cancelled: Callable[[], bool]) -> ChildOutcome:
        proc = self._ensure()
        offset = self.log_path.stat().st_size
        start = time.monotonic()
        try:
            proc.stdin.write(f"{request}\n".encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            proc.wait()
            return self._died(proc, offset)
        fd = proc.stdout.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                data = os.read(fd, 4096)
                if not data:                                  # EOF: the worker died
                    proc.wait()
                    return self._died(proc, offset)
                self._buffer += data
                if b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    if line.decode(errors="replace") == f"done {request}":
                        return ChildOutcome(True, None, self._tail(offset))
                    log.warning("unexpected line from the job worker: %r", line[:200])
            if cancelled():
                self.kill()
                return ChildOutcome(False, CrashCause(CrashKind.CANCELLED), self._tail(offset))
            if time.monotonic() - start > timeout_s:
                self.kill()
                return ChildOutcome(False, CrashCause(CrashKind.TIMEOUT), self._tail(offset))

    def _died(self, proc: subprocess.Popen, offset: int) -> ChildOutcome:
        tail = self._tail(offset)
        self.proc = None
        code = proc.returncode
        if is_oom(tail):                               # e.g. std::bad_alloc -> abort
            return ChildOutcome(False, CrashCause(CrashKind.OOM), tail)
        if code is not None and code < 0:
            return ChildOutcome(False, CrashCause(CrashKind.SIGNAL, signal.Signals(-code).name), tail)
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "no output")
        return ChildOutcome(False, CrashCause(CrashKind.ERROR, f"exit {code}: {last.strip()}"), tail)

    def _tail(self, offset: int) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(offset)
            return fh.read()[-STDERR_TAIL:].decode(errors="replace")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self, timeout: float = 5.0) -> None:
        """Let the worker finish (stdin closed), or kill it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
