"""The tuner's Evaluator for the farm: candidates become jobs, one per device class, and results
come back from agents. Same interface as coordinator.evaluators.LocalEvaluator, so `Tuner` runs
the same code path locally and on the farm.

Building and evaluating overlap: `evaluate` pulls one candidate from the (lazy) iterable, which
hands back candidates as the build pool finishes them (the next ones keep building meanwhile),
queues its jobs, hands back whatever results are already in, and only then pulls the next, so
agents measure candidate k while the build workers build k+1 and beyond. Jobs are keyed by
(candidate, device, data), so a result already in the store is reused, never measured twice.

Results are read from the store with a cursor (the results stored since the last look), so
handling one result costs the same whatever the number of jobs still waiting."""
from __future__ import annotations

import hashlib
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from coordinator.farm.scheduler import PRIORITY_CANDIDATE, PRIORITY_REFERENCE, Scheduler
from coordinator.farm.states import ALIVE
from coordinator.farm.store import ResultRow, Store
from shared.artifacts import ArtifactStore, sha256_file
from shared.errors import EvaluationError, QfarmError
from shared.feeds import BATCHED, npz_bytes
from shared.pb.qfarm.v1 import job_pb2
from shared.results import DeviceResult
from shared.settings import QuantSettings

log = logging.getLogger(__name__)

_MODES = {"static": job_pb2.QUANT_MODE_STATIC, "dynamic": job_pb2.QUANT_MODE_DYNAMIC}
_FORMATS = {"qdq": job_pb2.QUANT_FORMAT_QDQ, "qoperator": job_pb2.QUANT_FORMAT_QOPERATOR}
_CALIB = {"minmax": job_pb2.CALIBRATION_METHOD_MINMAX, "entropy": job_pb2.CALIBRATION_METHOD_ENTROPY,
          "percentile": job_pb2.CALIBRATION_METHOD_PERCENTILE}
_TYPES = {"uint8": job_pb2.QUANT_TYPE_UINT8, "int8": job_pb2.QUANT_TYPE_INT8,
          "uint16": job_pb2.QUANT_TYPE_UINT16, "int16": job_pb2.QUANT_TYPE_INT16}


class CampaignStopped(Exception):
    """The coordinator is shutting down: leave the campaign running, resume it on the next start."""


class CampaignCancelled(CampaignStopped):
    """A client cancelled the campaign: stop for good."""


@dataclass(frozen=True)
class FarmContext:
    """What every campaign shares: state, queue, artifact files, time."""

    store: Store
    scheduler: Scheduler
    artifacts: ArtifactStore
    stop: threading.Event
    poll_s: float = 0.5

    def register_file(self, path: Path, kind: str, name: str) -> job_pb2.Artifact:
        sha = sha256_file(path)
        if not self.artifacts.has(sha):
            stored = self.artifacts.put_file(path)
            sha = stored.sha256
        return self._record(sha, kind, name)

    def register_bytes(self, data: bytes, kind: str, name: str) -> job_pb2.Artifact:
        stored = self.artifacts.put_bytes(data)
        return self._record(stored.sha256, kind, name)

    def _record(self, sha: str, kind: str, name: str) -> job_pb2.Artifact:
        size = self.artifacts.path_of(sha).stat().st_size
        with self.store.transaction() as c:
            c.put_artifact(sha, size, kind, name, self.scheduler.clock())
        return job_pb2.Artifact(sha256=sha, size_bytes=size, kind=kind, name=name)


def settings_to_proto(settings: QuantSettings) -> job_pb2.QuantSettings:
    return job_pb2.QuantSettings(
        mode=_MODES[settings.mode], format=_FORMATS[settings.format], per_channel=settings.per_channel,
        reduce_range=settings.reduce_range, calibrate=_CALIB[settings.calibrate],
        activation_type=_TYPES[settings.activation_type], weight_type=_TYPES[settings.weight_type],
        calibration_images=settings.calibration_images, recipe=dict(settings.recipe))


def npy_bytes(array: np.ndarray) -> bytes:
    """Deterministic .npy bytes: the same array always gives the same artifact."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class FarmEvaluator:
    """Evaluator over the farm for one campaign; `devices` are its device classes."""

    def __init__(self, ctx: FarmContext, campaign_id: str, devices: tuple[str, ...], device_timeout_s: float,
                 on_status: Callable[[str], None] = lambda message: None,
                 cancelled: threading.Event | None = None):
        self.ctx = ctx
        self.cancelled = cancelled or threading.Event()
        self.campaign_id = campaign_id
        self.devices = tuple(devices)
        # strategies see one evaluation at a time on the farm too; the agents' count is not used yet
        self.parallelism = 1
        self.device_timeout_s = device_timeout_s
        self.on_status = on_status
        self._fp32: dict[str, job_pb2.Artifact] = {}
        self._base: job_pb2.Artifact | None = None
        self._data: dict[str, tuple[str, job_pb2.EvalData]] = {}
        self._last_data: tuple[object, tuple[str, job_pb2.EvalData]] | None = None   # hashing data is O(data)
        self._waiting_since: dict[str, float] = {}
        self._last_message = ""
        self._cursor: int | None = None         # the last result row read from the store
        self._ready: dict[str, ResultRow] = {}  # results of pending jobs, read but not yet handed back

    # -- Evaluator interface ------------------------------------------------------------------
    def reference(self, model: Path, model_sha256: str, data) -> dict[str, DeviceResult]:
        """FP32 outputs and metrics, measured once per device class by an agent of that class."""
        self._check_stop()
        self._base = self.ctx.register_file(model, "model", Path(model).name)
        key, evaldata = self._eval_data(data)
        self._start_cursor()
        pending: dict[str, tuple[str, str]] = {}
        for device in self.devices:
            job = job_pb2.Job(job_id=f"fp32-{model_sha256[:16]}@{device}/{key}", device=device, reference=True)
            job.candidate.id = f"fp32-{model_sha256[:16]}"
            job.candidate.base_model.CopyFrom(self._base)
            job.candidate.model.CopyFrom(self._base)
            job.data.CopyFrom(evaldata)
            self.ctx.scheduler.submit(job, "reference", PRIORITY_REFERENCE, self.campaign_id)
            pending[job.job_id] = (job.candidate.id, device)
        self._take_stored(pending)
        metrics: dict[str, DeviceResult] = {}
        self._status(f"measuring the FP32 reference on {', '.join(self.devices)}")
        while pending:
            for job_id, row in self._collect(pending, block=True):
                _, device = pending.pop(job_id)
                result = row.result()
                if not result.ok:
                    raise EvaluationError(
                        f"the FP32 model {Path(model).name} fails on device class {device!r} "
                        f"({result.status.value}: {result.crash_cause}); no candidate can be compared there",
                        step="reference")
                self._fp32[device] = job_pb2.Artifact(
                    sha256=row.fp32_sha256, kind="fp32_outputs", name=f"fp32 {device}",
                    size_bytes=self.ctx.artifacts.path_of(row.fp32_sha256).stat().st_size)
                metrics[device] = result
        return {device: metrics[device] for device in self.devices}

    def evaluate(self, candidates: Iterable, data) -> Iterator[tuple[str, str, DeviceResult]]:
        """Queue each candidate's jobs as it is built; yield results as they arrive."""
        if len(self._fp32) != len(self.devices) or self._base is None:
            raise EvaluationError("reference() must run before evaluate()", step="evaluate")
        key, evaldata = self._eval_data(data)
        self._start_cursor()
        source = iter(candidates)
        exhausted = False
        pending: dict[str, tuple[str, str]] = {}
        while not exhausted or pending:
            self._check_stop()
            if not exhausted:
                cand = next(source, None)
                if cand is None:
                    exhausted = True
                else:
                    submitted = self._submit(cand, key, evaldata)
                    pending.update(submitted)
                    self._take_stored(submitted)
            for job_id, row in self._collect(pending, block=exhausted):
                cid, device = pending.pop(job_id)
                yield cid, device, row.result()

    # -- helpers ------------------------------------------------------------------------------
    def _eval_data(self, data) -> tuple[str, job_pb2.EvalData]:
        """The inputs/labels artifacts and the data key that enters every job id (memoised: the same
        data object, as every batch of a tune passes, is not hashed again)."""
        if self._last_data is not None and self._last_data[0] is data:
            return self._last_data[1]
        digest = f"{data.digest()}|{data.latency_runs}|{data.task}|{data.metric or ''}"
        if digest in self._data:
            self._last_data = (data, self._data[digest])
            return self._data[digest]
        evaldata = job_pb2.EvalData(latency_runs=data.latency_runs, task=data.task, metric=data.metric or "",
                                    data_layout="" if data.layout == BATCHED else data.layout)
        if data.source is not None and data.source.is_file():   # a build worker wrote npz_bytes(feeds): no copy
            evaldata.inputs.CopyFrom(self.ctx.register_file(data.source, "inputs", "eval inputs"))
        else:
            evaldata.inputs.CopyFrom(self.ctx.register_bytes(npz_bytes(data.feeds), "inputs", "eval inputs"))
        if data.labels is not None:
            evaldata.labels.CopyFrom(self.ctx.register_bytes(npy_bytes(np.asarray(data.labels, np.int64)),
                                                             "labels", "eval labels"))
        text = f"{evaldata.inputs.sha256}|{evaldata.labels.sha256}|{data.latency_runs}|{data.task}|{data.metric or ''}"
        if data.layout != BATCHED:           # the same arrays are other inferences whole-feed
            text += f"|{data.layout}"
        key = hashlib.sha256(text.encode()).hexdigest()[:12]
        self._data[digest] = (key, evaldata)
        self._last_data = (data, (key, evaldata))
        return key, evaldata

    def _submit(self, cand, key: str, evaldata: job_pb2.EvalData) -> dict[str, tuple[str, str]]:
        candidate = job_pb2.Candidate(id=cand.id, settings=settings_to_proto(cand.spec.settings),
                                      excluded_nodes=list(cand.spec.excluded_nodes),
                                      int16_nodes=list(cand.spec.int16_nodes))
        candidate.base_model.CopyFrom(self._base)
        candidate.model.CopyFrom(self.ctx.register_file(cand.path, "model", f"candidate {cand.id}"))
        with self.ctx.store.transaction() as c:
            c.put_candidate(cand.id, cand.spec.model_sha256, candidate.SerializeToString(),
                            self.ctx.scheduler.clock())
        pending, jobs = {}, []
        for device in self.devices:
            job = job_pb2.Job(job_id=f"{cand.id}@{device}/{key}", device=device, data=evaldata)
            job.candidate.CopyFrom(candidate)
            job.fp32_outputs.CopyFrom(self._fp32[device])
            job.fp32_model.CopyFrom(self._base)          # timed interleaved with the candidate
            jobs.append(job)
            pending[job.job_id] = (cand.id, device)
        self.ctx.scheduler.submit_many(jobs, "candidate", PRIORITY_CANDIDATE, self.campaign_id)
        return pending

    def _start_cursor(self) -> None:
        """Read results from here on (before the first job is submitted: nothing is missed)."""
        if self._cursor is None:
            with self.ctx.store.transaction() as c:
                self._cursor = c.last_result_rowid()

    def _take_stored(self, jobs: dict[str, tuple[str, str]]) -> None:
        """Results the store already holds for just-submitted jobs (measured for another campaign,
        or before a restart): the cursor has gone past them."""
        self._ready.update(self.ctx.scheduler.results(list(jobs)))

    def _collect(self, pending: dict[str, tuple[str, str]], block: bool) -> list[tuple[str, ResultRow]]:
        """Results of pending jobs that are in; when `block`, wait until at least one is."""
        sched = self.ctx.scheduler
        while True:
            self._check_stop()
            seen = sched.version()
            while True:
                with self.ctx.store.transaction() as c:
                    self._cursor, rows = c.results_after(self._cursor)
                self._ready.update((row.job_id, row) for row in rows if row.job_id in pending)
                if not rows:
                    break
            found = {job_id: self._ready.pop(job_id) for job_id in [j for j in self._ready if j in pending]}
            if found or not block or not pending:
                return sorted(found.items())
            self._check_devices({device for _, device in pending.values()})
            sched.wait_change(seen, self.ctx.poll_s)

    def _check_stop(self) -> None:
        if self.cancelled.is_set():
            raise CampaignCancelled()
        if self.ctx.stop.is_set():
            raise CampaignStopped()

    def _check_devices(self, devices: set[str]) -> None:
        """A device class with no live agent that can run a job (a TVM agent whose tracker has no
        device of its key runs none) waits visibly, then fails the campaign after the timeout."""
        now = self.ctx.scheduler.clock()
        with self.ctx.store.transaction() as c:
            live = {d: c.agents(ALIVE, device=d)
                    for d in sorted(devices)}
        waiting = []
        for device, agents in live.items():
            if any(a.free_slots + a.busy_slots > 0 for a in agents):
                self._waiting_since.pop(device, None)
                continue
            since = self._waiting_since.setdefault(device, now)
            if agents:
                why = (f"{len(agents)} agent(s) of device class {device!r} connected, but none has a device "
                       f"to run on (is a phone registered with the agent's TVM tracker under its key?)")
            else:
                why = f"no agent of device class {device!r} connected"
            if now - since > self.device_timeout_s:
                raise EvaluationError(
                    f"{why} within {self.device_timeout_s:g} s "
                    f"(start one with: agent register --device {device} --coordinator HOST:PORT)",
                    step="schedule")
            waiting.append(f"waiting for an agent of device class {device!r}: {why} "
                           f"({now - since:.0f} s of {self.device_timeout_s:g} s)")
        if waiting:
            self._status("; ".join(waiting))
        elif self._last_message.startswith("waiting for an agent"):
            self._status("agents connected: evaluating")

    def _status(self, message: str) -> None:
        if message != self._last_message:
            self._last_message = message
            try:
                self.on_status(message)
            except QfarmError:
                log.exception("could not record campaign status")
