"""ONNX Runtime runner. The graph optimization level is part of the device: on CPUs without VNNI
the fused int8 kernels (ORT_ENABLE_ALL) saturate differently from ORT_DISABLE_ALL, so the same
file gives a different accuracy; it is recorded in RunnerInfo.options."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shared.runners.base import RunnerInfo, UnsupportedModel
from shared.errors import EvaluationError, InvalidArgument

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class OrtConfig:
    optimization: str = "all"
    intra_op_threads: int = 0          # 0 = onnxruntime's default (all cores)
    batch_size: int = 32
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def __post_init__(self) -> None:
        if self.optimization not in OPT_LEVELS:
            raise InvalidArgument(f"ORT optimization {self.optimization!r} is not one of {', '.join(OPT_LEVELS)}")
        if self.batch_size < 1:
            raise InvalidArgument(f"batch size {self.batch_size} must be >= 1")
        if self.intra_op_threads < 0:
            raise InvalidArgument(f"intra-op threads {self.intra_op_threads} must be >= 0")


class OrtRunner:
    def __init__(self, config: OrtConfig = OrtConfig()):
        self.config = config
        self._cached: tuple[tuple[str, int, int], ort.InferenceSession] | None = None

    def info(self) -> RunnerInfo:
        return RunnerInfo(
            runtime="onnxruntime", version=ort.__version__, providers=self.config.providers,
            options=f"graph_optimization={self.config.optimization} threads={self.config.intra_op_threads}")

    def session(self, model: Path) -> ort.InferenceSession:
        """One session per file, reused while the file is unchanged (infer + latency share it)."""
        try:
            stat = Path(model).stat()
        except OSError as exc:
            raise EvaluationError(f"cannot read model {model}: {exc.strerror}") from exc
        key = (str(model), stat.st_mtime_ns, stat.st_size)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        sess = self._new_session(Path(model))
        self._cached = (key, sess)
        return sess

    def _new_session(self, model: Path) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = OPT_LEVELS[self.config.optimization]
        opts.intra_op_num_threads = self.config.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(str(model), sess_options=opts, providers=list(self.config.providers))
        except Exception as exc:  # ORT raises plain RuntimeError/Fail subclasses for unloadable models
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
                raise UnsupportedModel(f"onnxruntime cannot run {model.name}: {text}") from exc
            raise EvaluationError(f"onnxruntime cannot load {model.name}: {text}") from exc

    def _batch_size(self, sess: ort.InferenceSession, input_name: str) -> int:
        for inp in sess.get_inputs():
            if inp.name == input_name:
                first = inp.shape[0] if inp.shape else None
                return self.config.batch_size if not isinstance(first, int) else first
        raise InvalidArgument(f"model has no input named {input_name!r}; inputs: "
                              f"{', '.join(i.name for i in sess.get_inputs())}")

    def infer(self, model: Path, inputs: np.ndarray, input_name: str) -> np.ndarray:
        sess = self.session(model)
        return self.infer_session(sess, inputs, input_name)

    def infer_session(self, sess: ort.InferenceSession, inputs: np.ndarray, input_name: str) -> np.ndarray:
        batch = self._batch_size(sess, input_name)
        outs = []
        try:
            for start in range(0, len(inputs), batch):
                chunk = inputs[start:start + batch]
                if len(chunk) < batch and batch != self.config.batch_size:  # fixed batch dim: pad
                    pad = np.repeat(chunk[-1:], batch - len(chunk), axis=0)
                    out = sess.run(None, {input_name: np.concatenate([chunk, pad])})[0][:len(chunk)]
                else:
                    out = sess.run(None, {input_name: chunk})[0]
                outs.append(np.asarray(out).reshape(len(chunk), -1))
        except Exception as exc:
            raise EvaluationError(f"onnxruntime failed running the model: {str(exc).splitlines()[0]}") from exc
        return np.concatenate(outs)

    def latency_seconds(self, model: Path, sample: np.ndarray, input_name: str, runs: int) -> list[float]:
        sess = self.session(model)
        return self.latency_session(sess, sample, input_name, runs)

    @staticmethod
    def latency_session(sess: ort.InferenceSession, sample: np.ndarray, input_name: str, runs: int) -> list[float]:
        feed = {input_name: sample[:1]}
        sess.run(None, feed)  # warm-up: allocations and kernel selection
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - start)
        return times
