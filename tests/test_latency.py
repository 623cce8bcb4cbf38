"""Latency measured so that noise cancels: FP32 and candidate timed interleaved in one process,
their per-pair ratio and its spread, and the host-wide lock that keeps two timing phases apart."""
from __future__ import annotations

import multiprocessing
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from onnxruntime.quantization import QuantType, quantize_static

from coordinator.quantize import FeedsReader
from shared.errors import EvaluationError, InvalidArgument
from shared.evaluate import EvalSpec, evaluate_model, reference_result
from shared.latency import check_lock_path, interleaved_latency, latency_stats
from shared.runners.base import run_outputs
from shared.runners.ort import OrtConfig, OrtRunner
from tests.device_runtimes import INJECTED_DELAY_S, SlowQuantized
from tests.models import make_classifier

SAMPLE = {"input": np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("latency")
    fp32 = make_classifier(root / "fp32.onnx", classes=10)
    qdq = root / "qdq.onnx"
    quantize_static(str(fp32), str(qdq), FeedsReader(SAMPLE), per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return fp32, qdq


def test_stats_are_percentiles_of_both_series_and_of_the_pair_ratios():
    pairs = [(0.001, 0.002), (0.002, 0.002), (0.001, 0.0005), (0.004, 0.004), (0.002, 0.003)]
    stats = latency_stats(pairs)
    ratios = np.array([2.0, 1.0, 0.5, 1.0, 1.5])
    assert stats.ratio_p50 == pytest.approx(1.0)
    assert (stats.ratio_p10, stats.ratio_p90) == pytest.approx((np.percentile(ratios, 10), np.percentile(ratios, 90)))
    assert stats.ms_p50 == pytest.approx(2.0) and stats.fp32_ms_p50 == pytest.approx(2.0)
    assert stats.ratio_p10 <= stats.ratio_p50 <= stats.ratio_p90 and stats.pairs == 5


def test_fp32_against_itself_has_a_ratio_near_one_and_an_ordered_spread(models, tmp_path):
    fp32, _ = models
    stats = interleaved_latency(OrtRunner(OrtConfig(intra_op_threads=1)), fp32, fp32, SAMPLE, 40,
                                lock=tmp_path / "lock")
    assert 0.75 < stats.ratio_p50 < 1.33, stats
    assert 0 < stats.ratio_p10 <= stats.ratio_p50 <= stats.ratio_p90
    assert 0 < stats.fp32_ms_p50 <= stats.fp32_ms_p90 and 0 < stats.ms_p50 <= stats.ms_p90


def test_a_slow_quantized_runtime_shows_a_ratio_above_one(models, tmp_path):
    fp32, qdq = models
    runner = SlowQuantized(OrtConfig(intra_op_threads=1))
    stats = interleaved_latency(runner, fp32, qdq, SAMPLE, 10, lock=tmp_path / "lock")
    assert stats.ratio_p10 > 1.5 and stats.ms_p50 >= INJECTED_DELAY_S * 1000
    assert stats.fp32_ms_p50 < INJECTED_DELAY_S * 1000        # FP32 is not slowed: only the candidate is


def test_every_result_carries_the_ratio_and_the_reference_times_itself(models, tmp_path):
    fp32, qdq = models
    runner = OrtRunner(OrtConfig(intra_op_threads=1))
    spec = EvalSpec(latency_runs=6, latency_lock=tmp_path / "lock")
    outputs = run_outputs(runner, fp32, SAMPLE)
    reference = reference_result(runner, fp32, outputs, SAMPLE, None, spec, time.perf_counter())
    result = evaluate_model(runner, qdq, fp32, SAMPLE, outputs, None, spec)
    for r in (reference, result):
        assert r.fp32_latency_ms_p50 > 0 and r.latency_ms_p50 > 0
        assert r.latency_ratio_p10 <= r.latency_ratio_vs_fp32 <= r.latency_ratio_p90
        assert r.latency_ratio_spread == (r.latency_ratio_p10, r.latency_ratio_p90)
    assert reference.output_sqnr_db == 200.0 and reference.top1_agreement == 1.0
    none = evaluate_model(runner, qdq, fp32, SAMPLE, outputs, None, EvalSpec(latency_runs=0))
    assert none.latency_ms_p50 is None and none.latency_ratio_vs_fp32 is None      # not measured, not 0


def test_a_lock_path_that_cannot_be_opened_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="--latency-lock .*file/lock"):
        check_lock_path(tmp_path / "file" / "lock")
    assert check_lock_path(None) is None


class _RecordingRunner:
    """A runner whose timers sleep and note when the timing phase ran (first and last timer call)."""

    def __init__(self, calls: list[float]):
        self.calls = calls

    def info(self):
        raise NotImplementedError

    def run(self, model, feeds):
        raise NotImplementedError

    @contextmanager
    def timers(self, models, sample):
        def timed(n: int) -> list[float]:
            self.calls.append(time.time())
            time.sleep(0.003 * n)
            self.calls.append(time.time())
            return [0.003] * n
        yield [timed for _ in models]


def _time_when_told(go, lock: str | None, ready, queue) -> None:
    calls: list[float] = []
    ready.put(True)
    go.wait(30)
    interleaved_latency(_RecordingRunner(calls), Path("a.onnx"), Path("b.onnx"), SAMPLE, 25,
                        lock=None if lock is None else Path(lock))
    queue.put((min(calls), max(calls)))


def _phases(lock: Path | None) -> list[tuple[float, float]]:
    ctx = multiprocessing.get_context("fork")      # the children only sleep and lock: safe to fork
    go, ready, queue = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_time_when_told, args=(go, None if lock is None else str(lock), ready, queue))
             for _ in range(2)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)             # both imported and waiting: start them together
    go.set()
    phases = sorted(queue.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(30)
    return phases


def test_two_processes_never_time_at_the_same_time_under_the_host_lock(tmp_path):
    (a_start, a_end), (b_start, b_end) = _phases(tmp_path / "latency.lock")
    assert a_end <= b_start, "the timing phases overlapped under the lock"
    (a_start, a_end), (b_start, b_end) = _phases(None)         # control: without it they do overlap
    assert b_start < a_end


def test_a_timer_that_returns_nonsense_is_an_error():
    class Broken(_RecordingRunner):
        @contextmanager
        def timers(self, models, sample):
            yield [lambda n: [], lambda n: [0.1] * n]

    with pytest.raises(EvaluationError, match="FP32 timer returned"):
        interleaved_latency(Broken([]), Path("a"), Path("b"), SAMPLE, 3)
