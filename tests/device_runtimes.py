"""Test-only device runtimes, loadable by agents as `--runtime tests.device_runtimes:FACTORY`:
real onnxruntime underneath, with one kernel missing the way a vendor NPU/GPU runtime lacks one,
or with quantized models made slow the way a device without fast int8 kernels runs them. They
speak the runner protocol of shared/runners/base.py (run + timers), as a plugin would."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import onnx

from shared.runners.base import UnsupportedModel
from shared.runners.ort import OrtConfig, OrtRunner

#: what SlowQuantized adds to every inference of a quantized model
INJECTED_DELAY_S = 0.004


def _is_quantized(model: Path) -> bool:
    graph = onnx.load(str(model), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "DynamicQuantizeLinear")
               for n in graph.node)


class NoQuantizedGemm(OrtRunner):
    """A device that has no kernel for a quantized Gemm (a Gemm whose weight is dequantized)."""

    def _check(self, model: Path) -> None:
        graph = onnx.load(str(model), load_external_data=False).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        for node in graph.node:
            if node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in dequantized:
                raise UnsupportedModel(f"this device has no quantized Gemm kernel (node {node.name})")

    def run(self, model, feeds):
        self._check(model)
        return super().run(model, feeds)

    def timers(self, models, sample):
        for model in models:
            self._check(model)
        return super().timers(models, sample)


class SlowQuantized(OrtRunner):
    """A device where every quantized model is INJECTED_DELAY_S slower per inference than onnxruntime
    runs it (accurate but slow int8), the FP32 model unchanged."""

    @contextmanager
    def timers(self, models, sample):
        with super().timers(models, sample) as timers:
            yield [self._slowed(t) if _is_quantized(m) else t for m, t in zip(models, timers)]

    @staticmethod
    def _slowed(timer):
        def timed(n: int) -> list[float]:
            out = []
            for _ in range(n):
                start = time.perf_counter()
                timer(1)
                time.sleep(INJECTED_DELAY_S)
                out.append(time.perf_counter() - start)
            return out
        return timed


def no_quantized_gemm(options) -> NoQuantizedGemm:
    return NoQuantizedGemm(OrtConfig(optimization=options.optimization, intra_op_threads=options.threads))


def slow_quantized(options) -> SlowQuantized:
    return SlowQuantized(OrtConfig(optimization=options.optimization, intra_op_threads=options.threads))


class Gated(OrtRunner):
    """Runs models (`run`, once per job) freely QFARM_TEST_GATE_FREE times (counted in the file
    QFARM_TEST_GATE_COUNTER, across job workers), then waits until the file QFARM_TEST_GATE exists: a
    test holds a campaign mid-run for as long as it needs, without sleeping on a guess."""

    def _pass_gate(self) -> None:
        counter, gate = Path(os.environ["QFARM_TEST_GATE_COUNTER"]), Path(os.environ["QFARM_TEST_GATE"])
        with open(counter, "a") as fh:
            fh.write(".")
        deadline = time.monotonic() + 300
        while counter.stat().st_size > int(os.environ["QFARM_TEST_GATE_FREE"]) and not gate.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
            time.sleep(0.05)

    def run(self, model, feeds):
        self._pass_gate()
        return super().run(model, feeds)


def gated(options) -> Gated:
    return Gated(OrtConfig(optimization=options.optimization, intra_op_threads=options.threads))
