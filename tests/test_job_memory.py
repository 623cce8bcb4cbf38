"""The per-job memory limit (`agent register --job-memory-mb`): a job that allocates past it is
reported as crash with cause `oom`, and the same worker (and agent) keeps serving. The hog is a
tiny ONNX model whose ConstantOfShape asks for 1 GiB; the control run shows the limit, not the
host, is what stops it."""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.runtimes import RuntimeOptions
from agent.sandbox import ChildWorker
from agent.worker import Agent, AgentConfig
from shared.evaluate import EvalSpec
from shared.feeds import npz_bytes, save_npz
from coordinator.farm.scheduler import PRIORITY_REFERENCE
from shared.pb.qfarm.v1 import job_pb2
from shared.results import is_oom
from tests.farm_support import ROOT, coordinator, wait_for
from tests.models import make_classifier

LIMIT_MB = 640          # a warm worker with onnxruntime loaded uses ~230 MB of address space
HOG_FLOATS = 1 << 28    # 1 GiB of float32


def make_memory_hog(path: Path, floats: int = HOG_FLOATS) -> Path:
    """input -> Flatten + ReduceSum(ConstantOfShape([1, floats])): valid, tiny on disk, huge in memory."""
    shape = numpy_helper.from_array(np.array([1, floats], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
             helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("Add", ["flat", "total"], ["logits"])]
    graph = helper.make_graph(nodes, "hog", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3072])],
                              initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def files(tmp_path):
    inputs = tmp_path / "inputs.npz"
    save_npz(inputs, {"input": np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)})
    return make_classifier(tmp_path / "tiny.onnx"), make_memory_hog(tmp_path / "hog.onnx"), inputs


def _request(tmp_path: Path, name: str, model: Path, inputs: Path) -> Path:
    out = tmp_path / name
    out.mkdir()
    request = {"out": str(out), "reference": True, "model": str(model), "inputs": str(inputs), "labels": None,
               "fp32_outputs": None, "fp32_model": None, "eval": EvalSpec(latency_runs=1).to_dict(),
               "runtime": RuntimeOptions(threads=1).to_dict()}
    (out / "request.json").write_text(json.dumps(request))
    return out / "request.json"


def _result(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / name / "result.json").read_text())


def test_a_job_over_the_limit_is_oom_and_the_worker_keeps_serving(tmp_path, files):
    tiny, hog, inputs = files
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = ChildWorker(sys.executable, env, tmp_path / "limited.log", memory_limit_mb=LIMIT_MB)
    try:
        assert worker.run(_request(tmp_path, "before", tiny, inputs), 60, lambda: False).finished
        assert _result(tmp_path, "before")["status"] == "ok"
        pid = worker.proc.pid
        outcome = worker.run(_request(tmp_path, "hog", hog, inputs), 60, lambda: False)
        result = _result(tmp_path, "hog")
        assert (result["status"], result["crash_cause"]) == ("crash", "oom"), result
        assert "out of memory" in outcome.stderr_tail and "1073741824" in outcome.stderr_tail
        assert worker.run(_request(tmp_path, "after", tiny, inputs), 60, lambda: False).finished
        assert _result(tmp_path, "after")["status"] == "ok" and worker.proc.pid == pid   # same worker
    finally:
        worker.close()
    control = ChildWorker(sys.executable, env, tmp_path / "unlimited.log")
    try:                                          # without the limit the host has room: the limit did it
        assert control.run(_request(tmp_path, "control", hog, inputs), 120, lambda: False).finished
        assert _result(tmp_path, "control")["status"] == "ok"
    finally:
        control.close()


def test_oom_text_from_each_layer_is_recognised():
    assert is_oom("terminate called after throwing an instance of 'std::bad_alloc'")
    assert is_oom("numpy.core._exceptions._ArrayMemoryError: Unable to allocate 8.00 GiB ... MemoryError")
    assert is_oom("BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer of size 42")
    assert is_oom("OSError: [Errno 12] Cannot allocate memory")
    assert not is_oom("Segmentation fault") and not is_oom("")


def test_agent_reports_oom_as_a_crash_and_serves_the_next_job(tmp_path, files):
    tiny, hog, _ = files
    inputs = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)
    with coordinator(tmp_path / "coord") as (server, address):
        ctx, sched = server.coordinator.ctx, server.coordinator.scheduler
        data = job_pb2.EvalData(latency_runs=1)
        data.inputs.CopyFrom(ctx.register_bytes(npz_bytes({"input": inputs}), "inputs", "inputs"))
        agent = Agent(AgentConfig(device="cpu-a", coordinator=address, work_dir=tmp_path / "agent",
                                  runtime=RuntimeOptions(threads=1), backoff_s=(0.1, 0.5),
                                  job_memory_mb=LIMIT_MB))
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        try:
            rows = {}
            for name, model in (("hog", hog), ("tiny", tiny)):
                job = job_pb2.Job(job_id=f"{name}@cpu-a", device="cpu-a", reference=True, data=data)
                job.candidate.id = name
                job.candidate.model.CopyFrom(ctx.register_file(model, "model", model.name))
                sched.submit(job, "reference", PRIORITY_REFERENCE, "test")
                rows[name] = wait_for(lambda: sched.results([job.job_id]).get(job.job_id), 60, f"{name}'s result")
        finally:
            agent.stop()
            thread.join(30)
    hog_result = job_pb2.DeviceResult.FromString(rows["hog"].payload)
    assert hog_result.status == job_pb2.RESULT_STATUS_CRASH and hog_result.crash_cause == "oom"
    assert "Failed to allocate memory" in hog_result.stderr_tail
    assert rows["tiny"].status == "ok" and agent.counters["registrations"] == 1
