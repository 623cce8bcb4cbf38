"""The agent's pieces on real processes: the job worker survives nothing it should not (a SIGSEGV,
a hang), and artifacts are fetched once per agent, verified, and fetched again when corrupted."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.runtimes import RuntimeOptions
from agent.sandbox import ChildWorker
from shared.evaluate import EvalSpec
from shared.feeds import load_npz, npz_bytes, save_npz
from coordinator.farm.scheduler import PRIORITY_CANDIDATE, PRIORITY_REFERENCE
from shared.pb.qfarm.v1 import job_pb2
from tests.farm_support import ROOT, AgentThread, coordinator, wait_for
from tests.models import make_classifier


@pytest.fixture()
def job_files(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    inputs = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    save_npz(tmp_path / "inputs.npz", {"input": inputs})
    return model, tmp_path / "inputs.npz"


def _request(tmp_path: Path, name: str, model: Path, inputs: Path, latency_runs: int) -> Path:
    out = tmp_path / name
    out.mkdir()
    request = {"out": str(out), "reference": True, "model": str(model), "inputs": str(inputs), "labels": None,
               "fp32_outputs": None, "fp32_model": None, "eval": EvalSpec(latency_runs=latency_runs).to_dict(),
               "runtime": RuntimeOptions(threads=1).to_dict()}
    (out / "request.json").write_text(json.dumps(request))
    return out / "request.json"


def _worker(tmp_path: Path) -> ChildWorker:
    return ChildWorker(sys.executable, {**os.environ, "PYTHONPATH": str(ROOT)}, tmp_path / "worker.log")


def test_worker_measures_and_a_segfault_costs_one_job_only(tmp_path, job_files):
    model, inputs = job_files
    worker = _worker(tmp_path)
    try:
        first = worker.run(_request(tmp_path, "j1", model, inputs, 2), 60, lambda: False)
        assert first.finished
        result = json.loads((tmp_path / "j1" / "result.json").read_text())
        assert result["status"] == "ok" and result["num_images"] == 8
        assert load_npz(tmp_path / "j1" / "fp32.npz")["logits"].shape == (8, 1000)
        pid = worker.proc.pid
        outcome = {}
        slow = _request(tmp_path, "j2", model, inputs, 10_000_000)
        thread = threading.Thread(target=lambda: outcome.update(o=worker.run(slow, 60, lambda: False)))
        thread.start()
        threading.Event().wait(0.5)                                   # j2 measures for minutes: kill it inside
        os.kill(pid, signal.SIGSEGV)                                  # the runtime "crashes" mid-job
        thread.join(30)
        assert outcome["o"].finished is False and str(outcome["o"].crash_cause) == "signal:SIGSEGV"
        after = worker.run(_request(tmp_path, "j3", model, inputs, 2), 60, lambda: False)
        assert after.finished and worker.proc.pid != pid                # a fresh worker took over
    finally:
        worker.close()


def test_worker_timeout_and_cancel_kill_the_job_not_the_agent(tmp_path, job_files):
    model, inputs = job_files
    worker = _worker(tmp_path)
    try:
        hung = worker.run(_request(tmp_path, "j1", model, inputs, 10_000_000), 3.0, lambda: False)
        assert (hung.finished, str(hung.crash_cause)) == (False, "timeout")
        assert worker.proc is None
        flag = threading.Event()
        threading.Timer(2.0, flag.set).start()
        cancelled = worker.run(_request(tmp_path, "j2", model, inputs, 10_000_000), 60, flag.is_set)
        assert str(cancelled.crash_cause) == "cancelled"
        assert worker.run(_request(tmp_path, "j3", model, inputs, 1), 60, lambda: False).finished
    finally:
        worker.close()


def test_agent_fetches_each_artifact_once_and_refetches_a_corrupted_one(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    other = make_classifier(tmp_path / "other.onnx", seed=1)
    inputs = np.random.default_rng(0).normal(size=(6, 3, 32, 32)).astype(np.float32)
    with coordinator(tmp_path / "coord") as (server, address):
        ctx, sched = server.coordinator.ctx, server.coordinator.scheduler
        base = ctx.register_file(model, "model", "tiny.onnx")
        data = job_pb2.EvalData(latency_runs=1)
        data.inputs.CopyFrom(ctx.register_bytes(npz_bytes({"input": inputs}), "inputs", "inputs"))

        def run_job(job: job_pb2.Job, kind: str, priority: int):
            sched.submit(job, kind, priority, "test")
            return wait_for(lambda: sched.results([job.job_id]).get(job.job_id), 60, f"result of {job.job_id}")

        ref = job_pb2.Job(job_id="ref@cpu-a", device="cpu-a", reference=True, data=data)
        ref.candidate.id = "fp32"
        ref.candidate.model.CopyFrom(base)
        cand = job_pb2.Job(job_id="c1@cpu-a", device="cpu-a", data=data)
        cand.candidate.id = "c1"
        cand.candidate.model.CopyFrom(ctx.register_file(other, "model", "other.onnx"))
        cand.fp32_model.CopyFrom(base)        # timed alongside: already in the cache from the reference job
        with AgentThread("cpu-a", address, tmp_path / "agent") as agent:
            ref_row = run_job(ref, "reference", PRIORITY_REFERENCE)
            assert ref_row.status == "ok" and ctx.artifacts.has(ref_row.fp32_sha256)
            cand.fp32_outputs.CopyFrom(job_pb2.Artifact(sha256=ref_row.fp32_sha256))
            after_ref = agent.counters["bytes_fetched"]
            assert after_ref == base.size_bytes + data.inputs.size_bytes
            cand_row = run_job(cand, "candidate", PRIORITY_CANDIDATE)
            assert cand_row.status == "ok"
            fp32_size = ctx.artifacts.path_of(ref_row.fp32_sha256).stat().st_size
            assert agent.counters["bytes_fetched"] == after_ref + cand.candidate.model.size_bytes + fp32_size
        cached_inputs = agent.cache.path_of(data.inputs.sha256)
        cached_inputs.write_bytes(b"garbage" + cached_inputs.read_bytes()[7:])    # bit rot on the agent
        again = job_pb2.Job()
        again.CopyFrom(cand)
        again.job_id = "c1-again@cpu-a"
        with AgentThread("cpu-a", address, tmp_path / "agent") as restarted:     # same cache, new process state
            row = run_job(again, "candidate", PRIORITY_CANDIDATE)
            assert row.status == "ok"
            assert restarted.counters["bytes_fetched"] == data.inputs.size_bytes   # only the corrupted file
        result = job_pb2.DeviceResult.FromString(row.payload)
        assert result.top1_agreement == pytest.approx(
            job_pb2.DeviceResult.FromString(cand_row.payload).top1_agreement)
