"""TVM runner against real TVM: a real tracker, real `tvm.exec.rpc_server` processes standing in for
phones, tiny classifiers compiled with Relax and compared with onnxruntime."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from agent.runners.tvm import TvmConfig, TvmEvent, TvmRunner
from agent.runners.tvm_compile import fold_constants, unsupported_ops
from agent.tvm_tracker import TrackerAddress, TvmTracker, free_port
from coordinator.data import Preprocess, labels_array, list_images, load_batch
from coordinator.quantize import FeedsReader
from shared.errors import EvaluationError, InvalidArgument
from shared.evaluate import EvalSpec, evaluate_model
from shared.metrics import accuracy_metrics, sqnr_db
from shared.runners.base import UnsupportedModel
from tests.models import make_classifier, make_token_classifier, token_samples

tvm = pytest.importorskip("tvm", reason="the TVM extra is not installed (pip install '.[tvm]')")

KEY = "mali-g68"
SIZE = 32


@dataclass
class Phone:
    proc: subprocess.Popen
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """The whole process group: the server, its popen worker and the forked session."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.proc.wait(timeout=10)


@contextmanager
def phone(tracker: TvmTracker, key: str) -> Iterator[Phone]:
    """A real TVM RPC server registered with the tracker under `key`, as a phone's RPC app would."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", str(tracker.address), "--key", key,
         "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 20), "--silent"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Phone(proc, port)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def tracker() -> Iterator[TvmTracker]:
    with TvmTracker.start(port=0) as started:
        yield started


@pytest.fixture(scope="module")
def device(tracker: TvmTracker) -> Iterator[Phone]:
    with phone(tracker, KEY) as server:
        tracker.wait_for_devices(KEY, 1, timeout=60)
        yield server


@pytest.fixture(scope="module")
def data(images_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12 evaluation images and 8 disjoint calibration images, at the tiny models' 32x32."""
    images = list_images(images_dir)
    pre = Preprocess(input_size=SIZE)
    return (load_batch(images.subset(list(range(12))), pre), labels_array(images.subset(list(range(12)))),
            load_batch(images.subset(list(range(50, 58))), pre))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tvm-models")
    fp32 = make_classifier(root / "fp32.onnx", size=SIZE, classes=10)
    _, _, calibration = data
    out = {"fp32": fp32}
    for name, fmt in (("qdq", QuantFormat.QDQ), ("qop", QuantFormat.QOperator)):
        out[name] = root / f"{name}.onnx"
        quantize_static(str(fp32), str(out[name]), FeedsReader({"input": calibration}), quant_format=fmt,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    out["dyn_conv"] = root / "dyn_conv.onnx"
    quantize_dynamic(str(fp32), str(out["dyn_conv"]), weight_type=QuantType.QUInt8)
    return out


def logits_of(runner: TvmRunner, model: Path, x: np.ndarray) -> np.ndarray:
    return runner.run(model, {"input": x})["logits"]


def ort_logits(model: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def config(tracker: TvmTracker, cache: Path, key: str = KEY, **kw) -> TvmConfig:
    return TvmConfig(rpc_key=key, target={"kind": "llvm"}, tracker_port=tracker.address.port, cache_dir=cache, **kw)


def test_infer_matches_onnxruntime_and_evaluate_model_measures_on_device(tracker, device, data, models, tmp_path):
    x, labels, _ = data
    events: list[TvmEvent] = []
    runner = TvmRunner(config(tracker, tmp_path, chunk=5), on_event=events.append)

    logits = logits_of(runner, models["fp32"], x)           # 12 images: chunks of 5, 5, 2 (padded)
    np.testing.assert_allclose(logits, ort_logits(models["fp32"], x), rtol=1e-4, atol=1e-4)
    assert [e.done for e in events if e.kind == "chunk"] == [5, 10, 12]
    assert [e.device for e in events if e.kind == "session"] == [device.address]

    reference = ort_logits(models["fp32"], x)
    metrics = evaluate_model(runner, models["qdq"], models["fp32"], {"input": x}, {"logits": reference}, labels,
                             EvalSpec(latency_runs=4, latency_lock=tmp_path / "latency.lock"))
    tvm_qdq = logits_of(runner, models["qdq"], x)
    ort_qdq = ort_logits(models["qdq"], x)
    spread = float(ort_qdq.max() - ort_qdq.min())
    assert np.abs(tvm_qdq - ort_qdq).max() < 0.05 * spread, "TVM's QDQ arithmetic drifted from onnxruntime's"
    expected = accuracy_metrics(tvm_qdq, reference, labels)
    assert (metrics.top1_agreement, metrics.top5_agreement, metrics.top1_accuracy) == \
        (expected.top1_agreement, expected.top5_agreement, expected.top1_accuracy)
    assert metrics.num_images == 12 and metrics.runtime.runtime == "tvm" and metrics.task == "classification"
    assert 0 < metrics.latency_ms_p50 <= metrics.latency_ms_p90 and metrics.fp32_latency_ms_p50 > 0
    assert 0 < metrics.latency_ratio_p10 <= metrics.latency_ratio_vs_fp32 <= metrics.latency_ratio_p90
    assert metrics.output_sqnr_db == pytest.approx(sqnr_db(reference, tvm_qdq))


def test_timers_time_both_models_on_the_device_in_one_session(tracker, device, models, data, tmp_path):
    x, _, _ = data
    events: list[TvmEvent] = []
    runner = TvmRunner(config(tracker, tmp_path), on_event=events.append)
    with runner.timers([models["fp32"], models["qdq"]], {"input": x[:1]}) as (fp32, qdq):
        times = [fp32(2), qdq(1), fp32(1), qdq(3)]           # interleaved calls, one session throughout
    assert [len(t) for t in times] == [2, 1, 1, 3] and all(0 < s < 5 for t in times for s in t)
    assert len([e for e in events if e.kind == "session"]) == 1
    with runner.timers([models["fp32"], models["fp32"]], {"input": x[:1]}) as (one, same):   # the reference job
        assert len(one(2) + same(2)) == 4           # one library loaded once: a second load kills the server
    assert tracker.wait_for_devices(KEY, 1, timeout=10, free=True) == (1, 0)


def test_multi_input_int64_model_matches_onnxruntime(tracker, device, tmp_path):
    model = make_token_classifier(tmp_path / "tokens.onnx")
    feeds = token_samples(7)
    got = TvmRunner(config(tracker, tmp_path / "cache", chunk=3)).run(model, feeds)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert list(got) == ["logits", "pooled"]
    np.testing.assert_allclose(got["logits"], want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["pooled"], want[1], rtol=1e-4, atol=1e-4)


def test_compiled_library_cache_hits_across_runners(tracker, device, models, data, tmp_path):
    x, _, _ = data
    first = TvmRunner(config(tracker, tmp_path, chunk=4))
    built = first.compile(models["fp32"], 4, {"input": x})
    assert not built.from_cache and built.compile_seconds > 0 and built.path.is_file()
    stamp = built.path.stat().st_mtime_ns

    events: list[TvmEvent] = []
    second = TvmRunner(config(tracker, tmp_path, chunk=4), on_event=events.append)
    logits_of(second, models["fp32"], x[:4])
    compiled = [e for e in events if e.kind == "compiled"]
    assert len(compiled) == 1 and "cached=True" in compiled[0].detail
    assert built.path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.glob("*.so")) == [built.path.name]


def test_qoperator_and_conv_integer_models_are_unsupported_before_compiling(tracker, device, models, data, tmp_path):
    x, _, _ = data
    runner = TvmRunner(config(tracker, tmp_path))
    with pytest.raises(UnsupportedModel, match="QLinearConv") as qop:
        logits_of(runner, models["qop"], x)
    assert qop.value.step == "unsupported"
    with pytest.raises(UnsupportedModel, match="ConvInteger"):
        logits_of(runner, models["dyn_conv"], x)
    assert list(tmp_path.glob("*.so")) == []            # rejected before any compile
    assert unsupported_ops(onnx.load(str(models["qdq"]))) == []


def test_dynamic_matmul_integer_runs_with_exact_onnx_semantics(tracker, device, tmp_path):
    """Relax does convert DynamicQuantizeLinear + MatMulInteger: such candidates are not rejected."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["logits"])],
        "mm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(rng.normal(0, 0.3, (64, 10)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "mm.onnx"))
    quantize_dynamic(str(tmp_path / "mm.onnx"), str(tmp_path / "mm_dyn.onnx"), weight_type=QuantType.QInt8)
    x = rng.normal(0, 1, (6, 64)).astype(np.float32)
    got = logits_of(TvmRunner(config(tracker, tmp_path / "cache", chunk=3)), tmp_path / "mm_dyn.onnx", x)
    # DynamicQuantizeLinear takes its range from the whole batch: compare chunk by chunk, with ONNX's
    # exact reference runtime (onnxruntime's u8s8 kernels saturate int16 pairs on CPUs without VNNI)
    exact = ReferenceEvaluator(onnx.load(str(tmp_path / "mm_dyn.onnx")))
    want = np.concatenate([exact.run(None, {"input": x[i:i + 3]})[0] for i in (0, 3)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_constant_pad_chains_are_folded_so_relax_can_import_them(tracker, device, tmp_path):
    """EfficientNet's static padding computes Pad's pads from constants, and QDQ quantization puts its
    pad value through Q/DQ; Relax calls both dynamic. Quantized weights must stay int8 (not folded)."""
    rng = np.random.default_rng(4)
    w_q = rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8)

    def const(name, dtype, dims, values):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", dtype, dims, values))

    nodes = [
        const("shape4", TensorProto.INT64, [1], [4]),
        helper.make_node("ConstantOfShape", ["shape4"], ["zeros4"],
                         value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
        const("ones4", TensorProto.INT64, [4], [0, 0, 1, 1]),
        helper.make_node("Concat", ["zeros4", "ones4"], ["pads_raw"], axis=0),
        helper.make_node("Cast", ["pads_raw"], ["pads"], to=TensorProto.INT64),
        const("pad_f", TensorProto.FLOAT, [], [0.5]),
        const("pad_scale", TensorProto.FLOAT, [], [0.25]),
        const("pad_zp", TensorProto.UINT8, [], [0]),
        helper.make_node("QuantizeLinear", ["pad_f", "pad_scale", "pad_zp"], ["pad_q"]),
        helper.make_node("DequantizeLinear", ["pad_q", "pad_scale", "pad_zp"], ["pad_value"]),
        helper.make_node("Pad", ["input", "pads", "pad_value"], ["padded"], mode="constant"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0),
        helper.make_node("Conv", ["padded", "w"], ["conv"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["conv"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp")]
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "pad.onnx"
    onnx.save(model, str(path))
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["Pad", "DequantizeLinear", "Conv", "GlobalAveragePool", "Flatten"]
    assert len(model.graph.node) == 15                   # the caller's model is untouched
    x = rng.normal(0, 1, (3, 3, 8, 8)).astype(np.float32)
    got = logits_of(TvmRunner(config(tracker, tmp_path / "cache", chunk=3)), path, x)
    np.testing.assert_allclose(got, ort_logits(path, x), rtol=1e-4, atol=1e-4)


def test_killed_device_mid_run_is_retried_on_another_device_of_the_key(tracker, models, data, tmp_path):
    x, _, _ = data
    key = "mali-g68-flaky"
    with phone(tracker, key) as first, phone(tracker, key) as second:
        tracker.wait_for_devices(key, 2, timeout=60)
        phones = {first.address: first, second.address: second}
        events: list[TvmEvent] = []
        counts_in_session = []
        slept: list[float] = []

        def on_event(event: TvmEvent) -> None:
            events.append(event)
            if event.kind == "session" and event.attempt == 1:
                counts_in_session.append(tracker.device_counts(key))
            if event.kind == "chunk" and event.attempt == 1:
                serving = [e.device for e in events if e.kind == "session"][-1]
                phones[serving].kill()                   # the phone drops off mid-run

        runner = TvmRunner(config(tracker, tmp_path, key=key, chunk=4, retries=2, backoff=3.0),
                           on_event=on_event, sleep=slept.append)
        logits = logits_of(runner, models["fp32"], x)

    np.testing.assert_allclose(logits, ort_logits(models["fp32"], x), rtol=1e-4, atol=1e-4)
    sessions = [e.device for e in events if e.kind == "session"]
    assert len(sessions) == 2 and set(sessions) == set(phones)
    assert [e.attempt for e in events if e.kind == "retry"] == [2]
    assert [e.done for e in events if e.kind == "chunk"] == [4, 8, 12]   # resumed, not restarted
    assert slept == [3.0]                                # backoff waited (injected, not slept)
    assert counts_in_session == [(1, 1)]                 # one device serving us, the other free


def test_an_error_raised_by_on_event_aborts_the_run_unchanged(tracker, device, models, data, tmp_path):
    """The caller's hook (e.g. its job lease is gone) stops the run; it is not taken for a lost session."""
    x, _, _ = data
    sessions: list[TvmEvent] = []

    class LeaseLost(RuntimeError):    # a plain RuntimeError, like the ones TVM's RPC raises
        pass

    def on_event(event: TvmEvent) -> None:
        sessions.extend([event] if event.kind == "session" else [])
        if event.kind == "chunk":
            raise LeaseLost("lease of job j1 expired")

    runner = TvmRunner(config(tracker, tmp_path, chunk=4, retries=3, backoff=0.0), on_event=on_event)
    with pytest.raises(LeaseLost, match="lease of job j1"):
        logits_of(runner, models["fp32"], x)
    assert len(sessions) == 1


def test_no_free_device_gives_up_after_retries(tracker, models, data, tmp_path):
    x, _, _ = data
    slept: list[float] = []
    runner = TvmRunner(config(tracker, tmp_path, key="nobody-home", request_timeout=0.3, retries=1, backoff=1.0),
                       sleep=slept.append)
    with pytest.raises(EvaluationError, match="nobody-home"):
        logits_of(runner, models["fp32"], x[:2])
    assert slept == [1.0]


def test_tracker_counts_free_and_busy_devices(tracker, device):
    assert tracker.wait_for_devices(KEY, 1, timeout=10, free=True) == (1, 0)
    session, where = tracker.request(KEY, session_timeout=30, timeout=10)
    assert where == device.address
    assert tracker.device_counts(KEY) == (0, 1)
    assert tracker.device_counts("no-such-key") == (0, 0)
    del session


def test_attach_and_address_errors_name_the_bad_value():
    with pytest.raises(EvaluationError, match=r"127\.0\.0\.1:\d+"):
        TvmTracker.attach(TrackerAddress("127.0.0.1", free_port()), timeout=1.0)
    with pytest.raises(InvalidArgument, match="localhost"):
        TrackerAddress.parse("localhost")
    assert TrackerAddress.parse("10.0.0.2:9190") == TrackerAddress("10.0.0.2", 9190)


def test_android_target_needs_the_ndk_at_construction(tmp_path):
    android = {"kind": "opencl", "device": "mali"}
    host = {"kind": "llvm", "mtriple": "aarch64-linux-android"}
    with pytest.raises(InvalidArgument, match="TVM_NDK_CC"):
        TvmRunner(TvmConfig(rpc_key=KEY, target=android, host=host, cache_dir=tmp_path), environ={})
    with pytest.raises(InvalidArgument, match="/no/such/clang"):
        TvmRunner(TvmConfig(rpc_key=KEY, target=android, host=host, cache_dir=tmp_path),
                  environ={"TVM_NDK_CC": "/no/such/clang"})
    with pytest.raises(InvalidArgument, match="nonsense"):
        TvmRunner(TvmConfig(rpc_key=KEY, target={"kind": "nonsense"}, cache_dir=tmp_path), environ={})
    cc = shutil.which("cc")
    runner = TvmRunner(TvmConfig(rpc_key=KEY, target=android, host=host, cache_dir=tmp_path),
                       environ={"TVM_NDK_CC": cc})
    assert runner.ndk_cc == cc


def test_configured_cross_linker_links_the_library(tracker, device, models, data, tmp_path):
    """ndk_cc is the linker export_library uses (here the host cc, so the stand-in phone can load it)."""
    x, _, _ = data
    runner = TvmRunner(config(tracker, tmp_path, chunk=4, ndk_cc=shutil.which("cc")), environ={})
    got = logits_of(runner, models["fp32"], x[:4])
    np.testing.assert_allclose(got, ort_logits(models["fp32"], x[:4]), rtol=1e-4, atol=1e-4)
    other = TvmRunner(config(tracker, tmp_path, chunk=4), environ={})
    assert other.compile(models["fp32"], 4, {"input": x}).from_cache is False   # linker is in the key


def test_config_rejects_bad_values():
    with pytest.raises(InvalidArgument, match="chunk 0"):
        TvmConfig(rpc_key=KEY, chunk=0)
    with pytest.raises(InvalidArgument, match="not JSON"):
        TvmConfig(rpc_key=KEY, target="{kind: llvm")
    with pytest.raises(InvalidArgument, match="'a b'"):
        TvmConfig(rpc_key="a b")
    assert TvmConfig(rpc_key=KEY, target='{"mcpu": "x", "kind": "llvm"}').target == '{"kind":"llvm","mcpu":"x"}'


def test_agent_runtime_factory_builds_the_runner_from_runtime_options(tmp_path):
    from agent.runtimes import RuntimeOptions, make_runner

    runner = make_runner(RuntimeOptions(runtime="tvm", extra={
        "rpc_key": KEY, "tracker": "127.0.0.1:9191", "chunk": "4", "retries": "5", "backoff": "0.5",
        "target": '{"kind": "llvm"}', "cache_dir": str(tmp_path)}))
    assert isinstance(runner, TvmRunner)
    assert (runner.config.tracker_port, runner.config.chunk, runner.config.retries, runner.config.backoff) == \
        (9191, 4, 5, 0.5)
    assert runner.info().runtime == "tvm"
    with pytest.raises(InvalidArgument, match="chunks"):
        make_runner(RuntimeOptions(runtime="tvm", extra={"rpc_key": KEY, "chunks": "4"}))
    with pytest.raises(InvalidArgument, match="rpc_key"):
        make_runner(RuntimeOptions(runtime="tvm", extra={}))
    with pytest.raises(InvalidArgument, match="retries='x'"):
        make_runner(RuntimeOptions(runtime="tvm", extra={"rpc_key": KEY, "retries": "x"}))
