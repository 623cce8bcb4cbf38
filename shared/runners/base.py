"""The runner interface: how a device runs a model. The in-process tuner, the ORT agent and the
TVM agent all evaluate candidates through it, so moving evaluation onto a device changes where
it runs, not how."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.errors import EvaluationError


@dataclass(frozen=True)
class RunnerInfo:
    runtime: str                       # "onnxruntime", "tvm"
    version: str
    providers: tuple[str, ...] = ()
    options: str = ""                  # e.g. "graph_optimization=ORT_ENABLE_ALL threads=1"


class UnsupportedModel(EvaluationError):
    """The runtime cannot load this model at all (e.g. an op it lacks): status `unsupported`."""

    step = "unsupported"


class Runner(Protocol):
    def info(self) -> RunnerInfo: ...

    def infer(self, model: Path, inputs: np.ndarray, input_name: str) -> np.ndarray:
        """Run a batch of inputs (N, ...) and return the first output as (N, classes)."""

    def latency_seconds(self, model: Path, sample: np.ndarray, input_name: str, runs: int) -> list[float]:
        """Wall seconds of `runs` batch-1 inferences of `sample` (1, ...), after a warm-up."""
