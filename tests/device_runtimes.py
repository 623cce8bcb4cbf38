"""Test-only device runtimes, loadable by agents as `--runtime tests.device_runtimes:FACTORY`:
real onnxruntime underneath, with one kernel missing the way a vendor NPU/GPU runtime lacks one,
or with quantized models made slow the way a device without fast int8 kernels runs them. They
speak the runner protocol of shared/runners/base.py (run + timers), as a plugin would."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from shared.runners.base import UnsupportedModel
from shared.runners.ort import OrtConfig, OrtRunner

#: what SlowQuantized adds to every inference of a quantized model
INJECTED_DELAY_S = 0.004


def model_kind(model: Path) -> str:
    """"fp32" (nothing quantized), "u8-weights" (quantized with uint8 weights: the u8u8 recipe) or "int8"."""
    graph = onnx.load(str(model), load_external_data=False).graph
    inits = {i.name: i for i in graph.initializer}
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                             "MatMulInteger") or n.op_type.startswith("QLinear") for n in graph.node):
        return "fp32"
    for node in graph.node:
        weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" and node.input else None
        if weight is not None and weight.data_type == onnx.TensorProto.UINT8 and len(weight.dims) > 1:
            return "u8-weights"
    return "int8"


def _is_quantized(model: Path) -> bool:
    return model_kind(model) != "fp32"


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


# -- latency injected by what a model is, so the decision can be tested on known speeds ---------------
class InjectedLatency(OrtRunner):
    """Real onnxruntime outputs; batch-1 latency fixed by the model's kind (milliseconds), the way a
    device whose int8 kernels are fast, or slow, would measure it, without the machine's noise."""

    def __init__(self, config: OrtConfig, latency_ms: dict[str, float]):
        super().__init__(config)
        self.latency_ms = latency_ms

    @contextmanager
    def timers(self, models, sample):
        with super().timers(models, sample):     # a model this runtime cannot load fails here, as it would
            yield [self._fixed(self.latency_ms[model_kind(Path(m))] / 1000.0) for m in models]

    @staticmethod
    def _fixed(seconds: float):
        return lambda n: [seconds] * n


def _config(options) -> OrtConfig:
    return OrtConfig(optimization=options.optimization, intra_op_threads=options.threads)


def accurate_but_slow(options) -> InjectedLatency:
    """u8u8 (uint8 weights) runs 3x slower than FP32 here, any other INT8 model twice as fast."""
    return InjectedLatency(_config(options), {"fp32": 1.0, "int8": 0.5, "u8-weights": 3.0})


def everything_slower(options) -> InjectedLatency:
    """Every quantized model runs slower than FP32 here: quantization does not pay on this device."""
    return InjectedLatency(_config(options), {"fp32": 1.0, "int8": 1.6, "u8-weights": 3.0})


class BrokenInt8(InjectedLatency):
    """A device whose int8 kernels are broken: every quantized model answers the same wrong thing
    (all zeros: same agreement, same SQNR), so no exclusion short of all-float makes progress."""

    def run(self, model, feeds):
        outputs = super().run(model, feeds)
        if model_kind(Path(model)) == "fp32":
            return outputs
        return {name: np.zeros_like(value) for name, value in outputs.items()}


def broken_int8(options) -> BrokenInt8:
    return BrokenInt8(_config(options), {"fp32": 1.0, "int8": 0.5, "u8-weights": 3.0})


class SlowU8NoQuantizedGemm(NoQuantizedGemm, InjectedLatency):
    """An NPU-like device: no quantized Gemm kernel, and u8u8 models 3x slower than FP32."""


def npu_like(options) -> SlowU8NoQuantizedGemm:
    return SlowU8NoQuantizedGemm(_config(options), {"fp32": 1.0, "int8": 0.5, "u8-weights": 3.0})


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
