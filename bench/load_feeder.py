"""`coordinator serve` with a job source, for bench/load.py: the real command, in its own process,
plus one thread that takes commands on stdin.

A campaign would measure the tuner (building candidates, reports) along with dispatch; to measure
dispatch alone, jobs go in through the scheduler's public API (`Scheduler.submit_many`, what the
farm's evaluator calls for each candidate), one transaction per job (a one-device campaign) or per
batch. The jobs
are shaped like real candidate jobs (artifact references, settings, excluded nodes). The thread
also counts what the scheduler's tick returns (agents it marked missing or evicted), so the bench
sees every such change and not only the states a status call happens to catch, and the lease
transactions (and those that found nothing: wasted work per job).

Commands are JSON lines on stdin; each answer is one stdout line starting with MARK:

    {"op": "submit", "device": "load-k16", "count": 2000, "prefix": "k16-ab12", "batch": 1}
      -> {"submitted": 2000, "cpu_s": ..., "wall_s": ...}     (cpu_s: this thread's CPU time)
    {"op": "ticks"} -> {"missing": {agent id: times}, "evicted": {...}}
    {"op": "pauses", "tick": 0, "gc": 0, "loop_lag": 0} -> durations of the scheduler's ticks, of full
      garbage collections and of the server loop's lag (a 20 ms sleep's lateness) after those
      counts, and the counts now: what holds calls up
    {"op": "counters", "device": "load-k16"} -> the scheduler's result counters, lease transactions
      (all, empty), Lease long-polls and Work streams waiting (of that class; all without "device"), idle agents
      answered from memory

End of stdin stops the coordinator (SIGTERM to itself): the bench cannot leave it behind."""
from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.farm.scheduler import PRIORITY_CANDIDATE  # noqa: E402
from shared.pb.qfarm.v1 import job_pb2  # noqa: E402

MARK = "@@load-feeder "
CAMPAIGN = "load-bench"


def _sha(label: str) -> str:
    import hashlib

    return hashlib.sha256(label.encode()).hexdigest()


def bench_job(job_id: str, device: str, index: int) -> job_pb2.Job:
    """A candidate job as the farm's evaluator queues one: model, FP32 model, data and reference
    outputs by reference, the settings and the nodes kept in float."""
    def artifact(kind: str, name: str, size: int) -> job_pb2.Artifact:
        return job_pb2.Artifact(sha256=_sha(f"{kind}:{name}"), size_bytes=size, kind=kind, name=name)

    base = artifact("model", "model.onnx", 4_500_000)
    job = job_pb2.Job(job_id=job_id, device=device)
    job.candidate.id = f"cand-{job_id}"
    job.candidate.base_model.CopyFrom(base)
    job.candidate.model.CopyFrom(artifact("model", f"candidate-{index}.onnx", 1_300_000))
    job.candidate.settings.CopyFrom(job_pb2.QuantSettings(
        mode=job_pb2.QUANT_MODE_STATIC, format=job_pb2.QUANT_FORMAT_QDQ, per_channel=True,
        calibrate=job_pb2.CALIBRATION_METHOD_MINMAX, activation_type=job_pb2.QUANT_TYPE_UINT8,
        weight_type=job_pb2.QUANT_TYPE_INT8, calibration_images=64))
    job.candidate.excluded_nodes.extend(f"/features/block{b}/conv/Conv" for b in range(index % 12))
    job.data.inputs.CopyFrom(artifact("inputs", "eval.npz", 9_600_000))
    job.data.labels.CopyFrom(artifact("labels", "labels.npy", 1_000))
    job.data.latency_runs = 50
    job.data.task = "classification"
    job.fp32_outputs.CopyFrom(artifact("fp32_outputs", f"fp32 {device}", 400_000))
    job.fp32_model.CopyFrom(base)
    return job


class Feeder:
    def __init__(self) -> None:
        self.server = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.missing: Counter[str] = Counter()
        self.evicted: Counter[str] = Counter()
        self.leases: Counter[str] = Counter()      # lease transactions, and those that found no job
        self.pauses: dict[str, list[float]] = {"tick": [], "gc": [], "loop_lag": []}    # seconds each
        self._gc_started = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict) -> None:
        """Collections of the oldest generation stop every thread that needs the GIL: time them."""
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            with self._lock:
                self.pauses["gc"].append(time.perf_counter() - self._gc_started)

    def capture(self, build):
        """`build_server`, keeping the server it builds (the scheduler's tick counted)."""
        def build_and_keep(config):
            server, port = build(config)
            self._attach(server)
            return server, port
        return build_and_keep

    def _attach(self, server) -> None:
        scheduler = server.coordinator.scheduler
        tick = scheduler.tick

        def counted_tick(heard=None):
            started = time.perf_counter()
            outcome = tick(heard)
            took = time.perf_counter() - started
            with self._lock:
                self.missing.update(outcome.missing)
                self.evicted.update(outcome.evicted)
                self.pauses["tick"].append(took)
            return outcome

        scheduler.tick = counted_tick
        work = scheduler.work

        def counted_work(agent, result, fp32, max_jobs):
            outcome = work(agent, result, fp32, max_jobs)
            if max_jobs:
                with self._lock:
                    self.leases["transactions"] += 1
                    self.leases["empty"] += not outcome.jobs
            return outcome

        scheduler.work = counted_work
        self.server = server
        asyncio.run_coroutine_threadsafe(self._loop_lag(), server._loop)    # the server's event loop
        self._ready.set()

    async def _loop_lag(self, every_s: float = 0.02) -> None:
        """How late the server's event loop wakes a 20 ms sleep: the time every call on it waited."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + every_s
            await asyncio.sleep(every_s)
            with self._lock:
                self.pauses["loop_lag"].append(max(0.0, loop.time() - due))

    def submit(self, device: str, count: int, prefix: str, batch: int = 1) -> dict:
        """Queue `count` jobs, `batch` per transaction (1: as a one-device campaign queues its candidates)."""
        scheduler = self.server.coordinator.scheduler
        cpu0, wall0 = time.thread_time(), time.monotonic()
        for start in range(0, count, batch):      # a campaign per round: campaigns have a cap on their candidates
            jobs = [bench_job(f"{prefix}-{index:06d}", device, index) for index in range(start, min(count, start + batch))]
            scheduler.submit_many(jobs, "candidate", PRIORITY_CANDIDATE, f"{CAMPAIGN}-{prefix}")
        return {"submitted": count, "cpu_s": time.thread_time() - cpu0, "wall_s": time.monotonic() - wall0}

    def ticks(self) -> dict:
        with self._lock:
            return {"missing": dict(self.missing), "evicted": dict(self.evicted)}

    def pauses_since(self, **counts: int) -> dict:
        """Durations (s) of the scheduler's ticks, full garbage collections and the event loop's lag
        after the given counts of each, and the counts now."""
        with self._lock:
            return {**{k: v[counts.get(k, 0):] for k, v in self.pauses.items()},
                    "counts": {k: len(v) for k, v in self.pauses.items()}}

    def counters(self, device: str | None = None) -> dict:
        """Results counted by the scheduler, Lease long-polls and Work streams waiting (of one class, or all), idle
        agents whose heartbeats are answered from memory."""
        coord = self.server.coordinator

        async def waiting() -> int:        # the waiters live on the server's event loop: read them there
            return coord.waiters.waiting(device)

        with self._lock:
            leases = {f"lease_transactions_{k}": v for k, v in self.leases.items()}
        return {**coord.scheduler.counters, **leases, "lease_waiters": self.server._on_loop(waiting(), 10),
                "idle_in_memory": len(coord.presence)}

    def serve_commands(self) -> None:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                command = json.loads(line)
                self._ready.wait()
                op = command.pop("op")
                answer = {"submit": self.submit, "ticks": self.ticks, "counters": self.counters,
                          "pauses": self.pauses_since}[op](**command)
            except Exception as exc:  # noqa: BLE001 - the bench gets the error as the answer, and stops
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(MARK + json.dumps(answer), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)       # the bench has gone: stop serving


def main(argv: list[str] | None = None) -> int:
    import coordinator.farm.server as server_module
    from coordinator.cli import main as coordinator_main

    feeder = Feeder()
    server_module.build_server = feeder.capture(server_module.build_server)
    threading.Thread(target=feeder.serve_commands, name="load-feeder", daemon=True).start()
    return coordinator_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
