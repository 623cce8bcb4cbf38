"""Test-only device runtimes, loadable by agents as `--runtime tests.device_runtimes:FACTORY`:
real onnxruntime underneath, with one kernel missing the way a vendor NPU/GPU runtime lacks one."""
from __future__ import annotations

from pathlib import Path

import onnx

from shared.runners.base import UnsupportedModel
from shared.runners.ort import OrtConfig, OrtRunner


class NoQuantizedGemm(OrtRunner):
    """A device that has no kernel for a quantized Gemm (a Gemm whose weight is dequantized)."""

    def _check(self, model: Path) -> None:
        graph = onnx.load(str(model), load_external_data=False).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        for node in graph.node:
            if node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in dequantized:
                raise UnsupportedModel(f"this device has no quantized Gemm kernel (node {node.name})")

    def infer(self, model, inputs, input_name):
        self._check(model)
        return super().infer(model, inputs, input_name)

    def latency_seconds(self, model, sample, input_name, runs):
        self._check(model)
        return super().latency_seconds(model, sample, input_name, runs)


def no_quantized_gemm(options) -> NoQuantizedGemm:
    return NoQuantizedGemm(OrtConfig(optimization=options.optimization, intra_op_threads=options.threads))
