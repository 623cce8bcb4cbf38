"""The agent's end of a Work stream (farm.proto): credit and results go out from a queue, a thread
reads the jobs and the answers to results. Transport only: the agent decides how much credit to
grant (agent/worker.py) and reports a result by unary ReportResult when the stream cannot answer
it (not open, half-closed, or broken before its answer came)."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import grpc

from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2


class _Answer:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: farm_pb2.ReportResultResponse | None = None


class WorkStream:
    """One open Work stream. `on_jobs(jobs)` runs on the reading thread for every batch of jobs the
    coordinator leases to this agent; `on_end()` once the stream has ended, however it ended."""

    def __init__(self, stub: farm_pb2_grpc.AgentServiceStub, metadata: tuple[tuple[str, str], ...],
                 on_jobs: Callable[[list[job_pb2.Job]], None], on_end: Callable[[], None]):
        self._outbox: queue.SimpleQueue[farm_pb2.WorkRequest | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, int], _Answer] = {}
        self._closed = False
        self._on_jobs, self._on_end = on_jobs, on_end
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None        # why it ended, unless the agent ended it
        self._cancelled = False
        self._call = stub.Work(self._requests(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name="work-stream", daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[farm_pb2.WorkRequest]:
        while (request := self._outbox.get()) is not None:
            yield request

    def grant(self, jobs: int) -> None:
        """Ask for `jobs` more jobs."""
        with self._lock:
            if not self._closed:
                self._outbox.put(farm_pb2.WorkRequest(more_jobs=jobs))

    def report(self, request: farm_pb2.ReportResultRequest, more_jobs: int,
               timeout: float) -> farm_pb2.ReportResultResponse | None:
        """Send a result (with `more_jobs` credit) and wait for its answer; None when the stream
        cannot give one (the caller reports it by unary call: results are idempotent)."""
        key, answer = (request.result.job_id, request.result.attempt), _Answer()
        with self._lock:
            if self._closed:
                return None
            self._answers[key] = answer
            self._outbox.put(farm_pb2.WorkRequest(more_jobs=more_jobs, result=request))
        answer.done.wait(timeout)
        with self._lock:
            self._answers.pop(key, None)
        return answer.response

    def close(self) -> None:
        """Half-close: the credit goes back; jobs already sent still arrive, then the stream ends."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._outbox.put(None)

    def cancel(self) -> None:
        """End it now (the agent is stopping)."""
        self._cancelled = True
        self.close()
        self._call.cancel()

    @property
    def open(self) -> bool:
        return not self._closed and not self.ended.is_set()

    def _read(self) -> None:
        try:
            for response in self._call:
                if response.jobs:
                    self._on_jobs(list(response.jobs))
                if response.HasField("result_of"):
                    with self._lock:
                        answer = self._answers.get((response.result_of.job_id, response.result_of.attempt))
                    if answer is not None:
                        answer.response = response.result
                        answer.done.set()
        except grpc.RpcError as exc:
            if not self._cancelled:
                self.error = exc
        finally:
            with self._lock:
                if not self._closed:
                    self._closed = True
                    self._outbox.put(None)
                waiting, self._answers = list(self._answers.values()), {}
            for answer in waiting:
                answer.done.set()
            self.ended.set()
            self._on_end()
