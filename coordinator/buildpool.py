"""Where the coordinator's heavy work runs: a pool of build worker processes, each with an
address-space limit, and a timeout per task.

Preparing a model and its data, calibrating, building candidates and the sensitivity pass take a
hostile model's and data set's memory and CPU; in the coordinator's own process a 413-byte model
whose ConstantOfShape expands during calibration, or 8 images resized to 16k pixels, would take
the server with them. Here each task is a call `module:function(*args, **kwargs)` run by one of
`workers` long-lived processes (`python -m coordinator.build_child --serve`, the same sandbox the
agent runs its jobs in, shared/sandbox.py). A task that runs out of memory, times out or kills
its worker raises `BuildCrashed` with its cause (`oom`, `timeout`, `signal:SIGSEGV`); a typed
error of the task (ModelError, DataError, ...) is raised again here as the same type. The
worker that failed is replaced, and the next task runs as if nothing happened.

Several builds run at once (`workers`, default cores - 1), so building keeps up with agents
instead of holding the coordinator's one busy core; `workers=0` runs tasks in the calling
process, unbounded (debugging, and the benchmarks' before/after comparison).

Requests are pickled by this process (trusted direction); answers come back as JSON only, so a
worker subverted by a hostile model cannot hand the coordinator an object to unpickle."""
from __future__ import annotations

import copyreg
import importlib
import json
import logging
import os
import pickle
import queue
import shutil
import sys
import threading
import types
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import errors
from shared.errors import InvalidArgument, ModelError, QfarmError
from shared.results import CrashCause, CrashKind
from shared.sandbox import ChildWorker

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CHILD_MODULE = "coordinator.build_child"



def read_only(mapping: dict) -> types.MappingProxyType:
    return types.MappingProxyType(mapping)


# frozen settings hold their free-form parts as read-only mappings; requests carry them as such
copyreg.pickle(types.MappingProxyType, lambda proxy: (read_only, (dict(proxy),)))


def default_workers() -> int:
    """One core stays with the coordinator (gRPC, scheduling, the tuner); the others build."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class BuildLimits:
    """`coordinator serve|tune --build-workers N --build-memory-mb MB --build-timeout-s S`."""

    workers: int = default_workers()    # processes building at once; 0: in the calling process (unbounded)
    # address space of each worker (0: unlimited). EfficientNet-Lite0's ranking pass over 16 images
    # keeps every activation of both models: 3.5 GB resident, 5.2 GB of address space
    memory_mb: int = 8192
    timeout_s: float = 3600.0           # one task (a build, a calibration, the ranking pass)
    max_tasks: int = 200                # a worker is replaced after this many tasks (bounds slow leaks)

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 0:
            raise InvalidArgument(f"--build-workers {self.workers!r} must be an integer >= 0", step="config")
        if not isinstance(self.memory_mb, int) or self.memory_mb < 0 or 0 < self.memory_mb < 256:
            raise InvalidArgument(f"--build-memory-mb {self.memory_mb!r} must be 0 (unlimited) or >= 256: "
                                  "a build worker with onnxruntime loaded needs about 250 MB", step="config")
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s < float("inf")):
            raise InvalidArgument(f"--build-timeout-s {self.timeout_s!r} must be a positive finite number",
                                  step="config")
        if self.max_tasks < 1:
            raise InvalidArgument(f"max_tasks {self.max_tasks!r} must be >= 1", step="config")

    def describe(self) -> str:
        memory = f"{self.memory_mb} MB" if self.memory_mb else "unlimited memory"
        where = f"{self.workers} build worker(s)" if self.workers else "in-process builds"
        return f"{where}, {memory}, {self.timeout_s:g} s per task"


class BuildCrashed(ModelError):
    """A build task's worker ran out of memory, timed out or died; `cause` says which."""

    def __init__(self, what: str, cause: CrashCause, limits: BuildLimits, stderr_tail: str = ""):
        hint = {CrashKind.OOM: f" (the build workers' limit is --build-memory-mb {limits.memory_mb})",
                CrashKind.TIMEOUT: f" (the build workers' limit is --build-timeout-s {limits.timeout_s:g})"}
        last = next((line.strip() for line in reversed(stderr_tail.splitlines()) if line.strip()), "")
        detail = f"; last output: {last[:300]}" if last and cause.kind not in hint else ""
        super().__init__(f"{what} failed in a build worker: crash {cause}{hint.get(cause.kind, '')}{detail}",
                         step="build")
        self.cause = cause
        self.stderr_tail = stderr_tail


def _error_from_answer(error: dict) -> QfarmError:
    """A typed error a task raised in its worker, raised again here as the same type."""
    kind = getattr(errors, str(error.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, QfarmError)):
        kind = QfarmError
    return kind(str(error.get("message", "")), step=error.get("step"))


def run_task(request: dict) -> Any:
    """Call `request["fn"]` with its arguments (in a worker, or inline when workers=0)."""
    module, _, name = request["fn"].partition(":")
    function = getattr(importlib.import_module(module), name)
    return function(*request.get("args", ()), **request.get("kwargs", {}))


@dataclass
class _Task:
    request: dict
    what: str
    future: Future


class BuildPool:
    """`submit(fn, *args, what=...)` -> a Future of the task's JSON-able return value."""

    def __init__(self, limits: BuildLimits = BuildLimits(), work_dir: Path | None = None):
        self.limits = limits
        self._owns_dir = work_dir is None
        import tempfile

        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="qfarm-build-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._cwd = Path.cwd()
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._serve, args=(slot,), name=f"build-{slot}", daemon=True)
                         for slot in range(limits.workers)]
        self._workers: dict[int, ChildWorker] = {}
        self._lock = threading.Lock()
        for thread in self._threads:
            thread.start()

    # -- use ----------------------------------------------------------------------------------
    def submit(self, fn: str, *args: Any, what: str, **kwargs: Any) -> Future:
        future: Future = Future()
        request = {"fn": fn, "args": args, "kwargs": kwargs}
        if self._closing.is_set():
            raise QfarmError("the build pool is closed", step="build")
        if not self.limits.workers:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(json.loads(json.dumps(run_task(request))))   # the same shapes as a worker's
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                    future.set_exception(exc)
            return future
        self._queue.put(_Task(request, what, future))
        return future

    def call(self, fn: str, *args: Any, what: str, **kwargs: Any) -> Any:
        return self.submit(fn, *args, what=what, **kwargs).result()

    def worker_pids(self) -> list[int]:
        """Process ids of the live build workers (tests, benchmarks)."""
        with self._lock:
            return [w.proc.pid for w in self._workers.values() if w.proc is not None and w.proc.poll() is None]

    def close(self) -> None:
        """Stop taking tasks; running ones are killed, queued ones cancelled."""
        if self._closing.is_set():
            return
        self._closing.set()
        while True:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task.future.cancel()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(30)
        if self._owns_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "BuildPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the worker threads -------------------------------------------------------------------
    def _serve(self, slot: int) -> None:
        """One thread per worker process: the process is started (and restarted) from this
        long-lived thread, so its die-with-parent signal is tied to a thread that lives as long
        as the pool."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONHASHSEED": "0"}
        worker = ChildWorker(sys.executable, env, self.work_dir / f"worker{slot}.log", self.limits.memory_mb,
                             module=CHILD_MODULE, cwd=self._cwd)   # relative paths mean what they mean here
        with self._lock:
            self._workers[slot] = worker
        tasks = 0
        try:
            while True:
                task = self._queue.get()
                if task is None:
                    return
                if not task.future.set_running_or_notify_cancel():
                    continue
                if tasks >= self.limits.max_tasks:
                    worker.close()
                    tasks = 0
                tasks += 1
                try:
                    task.future.set_result(self._run(worker, task))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                    task.future.set_exception(exc)
        finally:
            worker.close(timeout=2.0)

    def _run(self, worker: ChildWorker, task: _Task) -> Any:
        folder = self.work_dir / "tasks" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            request = folder / "request.pkl"
            request.write_bytes(pickle.dumps({**task.request, "out": str(folder)}))
            outcome = worker.run(request, self.limits.timeout_s, self._closing.is_set)
            answer_path = folder / "answer.json"
            if not outcome.finished or not answer_path.is_file():
                cause = outcome.crash_cause or CrashCause(CrashKind.ERROR, "the build worker gave no answer")
                if cause.kind == CrashKind.CANCELLED:
                    raise QfarmError(f"{task.what}: cancelled (the coordinator is stopping)", step="build")
                raise BuildCrashed(task.what, cause, self.limits, outcome.stderr_tail)
            answer = json.loads(answer_path.read_text())
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        for record in answer.get("log", ()):     # the task's warnings, as if logged here (third-party.log)
            name = str(record.get("name", ""))
            logging.getLogger(None if name == "root" else name).log(int(record.get("level", logging.WARNING)), "%s",
                                                                    record.get("message", ""))
        if "crash" in answer:               # the worker exits after answering: wait for it, the next task gets a new one
            worker.close()
            raise BuildCrashed(task.what, CrashCause.parse(answer["crash"]), self.limits, answer.get("stderr", ""))
        if "error" in answer:
            raise _error_from_answer(answer["error"])
        return answer["value"]


_default: BuildPool | None = None
_default_lock = threading.Lock()


def default_pool() -> BuildPool:
    """The process-wide pool of a `Tuner` given none (default limits); warm across tunes."""
    global _default
    with _default_lock:
        if _default is None or _default._closing.is_set():
            import atexit

            _default = BuildPool(BuildLimits())
            atexit.register(_default.close)
        return _default
