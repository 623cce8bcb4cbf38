"""ONNX Runtime runner. The session options are part of the device and recorded in
RunnerInfo.options: on CPUs without VNNI the fused int8 kernels (ORT_ENABLE_ALL) saturate
differently from ORT_DISABLE_ALL, so the same file gives a different accuracy; and from
ORT_ENABLE_BASIC up, the CPU EP's `WeightBiasQuantization` optimizer quantizes again (per tensor)
the float weights of a Conv/ConvTranspose/Gemm that sits between a DequantizeLinear and a
QuantizeLinear, so a layer kept in float in the middle of a QDQ model runs in int8 unless that
optimizer is disabled (`disabled_optimizers`, onnxruntime's own session argument) or the
candidate pins its float islands (coordinator/recipes/float_islands.py)."""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from shared.errors import DataError, EvaluationError, InvalidArgument
from shared.feeds import Feeds, num_samples, take
from shared.runners.base import Outputs, RunnerInfo, Timer, UnsupportedModel

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
#: what keeps a layer excluded from quantization in float between QDQ nodes (see the module doc)
FLOAT_ISLAND_OPTIMIZERS = ("WeightBiasQuantization",)
MAX_DISABLED_OPTIMIZERS = 64
_OPTIMIZER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")


def check_optimizer_names(names, flag: str = "--ort-disable-optimizers") -> tuple[str, ...]:
    """Sorted, unique optimizer names (onnxruntime's graph transformer and rewrite rule names, e.g.
    WeightBiasQuantization). onnxruntime ignores names it does not know, so only the spelling can
    be checked here: a name that is not an identifier is refused."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise InvalidArgument(f"{flag} {names!r} must be a list of optimizer names")
    names = tuple(sorted(set(names)))
    if len(names) > MAX_DISABLED_OPTIMIZERS:
        raise InvalidArgument(f"{flag} names {len(names)} optimizers; at most {MAX_DISABLED_OPTIMIZERS}")
    for name in names:
        if not _OPTIMIZER_NAME.match(name):
            raise InvalidArgument(f"{flag} {name[:80]!r} is not an onnxruntime optimizer name (letters, digits and "
                                  "_, starting with a letter, at most 128; e.g. WeightBiasQuantization)")
    return names


@dataclass(frozen=True)
class OrtConfig:
    optimization: str = "all"
    intra_op_threads: int = 0          # 0 = onnxruntime's default (all cores)
    batch_size: int = 32
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    disabled_optimizers: tuple[str, ...] = ()   # onnxruntime graph optimizers this device runs without

    def __post_init__(self) -> None:
        object.__setattr__(self, "disabled_optimizers", check_optimizer_names(self.disabled_optimizers))
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
        disabled = self.config.disabled_optimizers
        return RunnerInfo(
            runtime="onnxruntime", version=ort.__version__, providers=self.config.providers,
            options=f"graph_optimization={self.config.optimization} threads={self.config.intra_op_threads}"
                    + (f" disabled_optimizers={','.join(disabled)}" if disabled else ""))

    def session(self, model: Path) -> ort.InferenceSession:
        """One session per file, reused while the file is unchanged."""
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
            return ort.InferenceSession(str(model), sess_options=opts, providers=list(self.config.providers),
                                        disabled_optimizers=list(self.config.disabled_optimizers))
        except Exception as exc:  # ORT raises plain RuntimeError/Fail subclasses for unloadable models
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
                raise UnsupportedModel(f"onnxruntime cannot run {model.name}: {text}") from exc
            raise EvaluationError(f"onnxruntime cannot load {model.name}: {text}") from exc

    def batch_size(self, sess: ort.InferenceSession) -> tuple[int, bool]:
        """(batch, fixed): the model's own batch when an input fixes its first dimension, else ours."""
        for inp in sess.get_inputs():
            first = inp.shape[0] if inp.shape else None
            if isinstance(first, int) and first > 0:
                return first, True
        return self.config.batch_size, False

    def run(self, model: Path, feeds: Feeds) -> dict[str, np.ndarray]:
        return self.run_session(self.session(model), feeds)

    def run_session(self, sess: ort.InferenceSession, feeds: Feeds) -> dict[str, np.ndarray]:
        """Every output for every sample, in batches (a fixed batch dimension is padded)."""
        check_feed_names(sess, feeds)
        total = num_samples(feeds)
        batch, fixed = self.batch_size(sess)
        names = [o.name for o in sess.get_outputs()]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        try:
            for start in range(0, total, batch):
                chunk = take(feeds, start, start + batch)
                count = min(batch, total - start)
                outs = sess.run(None, pad_batch(chunk, batch) if fixed else chunk)
                for name, out in zip(names, outs):
                    out = np.asarray(out)
                    if out.ndim == 0 or out.shape[0] != (batch if fixed else count):
                        raise EvaluationError(f"output {name!r} has shape {list(out.shape)} for a batch of "
                                              f"{batch if fixed else count}: qfarm needs outputs with a leading "
                                              "sample axis")
                    parts[name].append(out[:count])
        except EvaluationError:
            raise
        except Exception as exc:
            raise EvaluationError(f"onnxruntime failed running the model: {str(exc).splitlines()[0]}") from exc
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def run_feed(self, model: Path, feed: Feeds) -> Outputs:
        """One inference on a whole feed, exactly as given (whole-feed datasets)."""
        sess = self.session(model)
        check_feed_names(sess, feed)
        try:
            outs = sess.run(None, {name: np.asarray(array) for name, array in feed.items()})
        except Exception as exc:
            raise EvaluationError(f"onnxruntime failed running the model: {str(exc).splitlines()[0]}") from exc
        return {o.name: np.asarray(out) for o, out in zip(sess.get_outputs(), outs)}

    @contextmanager
    def timers(self, models: Sequence[Path], sample: Feeds) -> Iterator[list[Timer]]:
        """One fresh session per model, same options, each timing `sess.run` on the batch-1 sample."""
        def feed_for(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
            batch, fixed = self.batch_size(sess)
            return pad_batch(take(sample, 0, 1), batch) if fixed else take(sample, 0, 1)

        yield self._timers(models, sample, feed_for)

    @contextmanager
    def feed_timers(self, models: Sequence[Path], feed: Feeds) -> Iterator[list[Timer]]:
        """The same for one whole feed, run exactly as given."""
        yield self._timers(models, feed, lambda sess: {name: np.asarray(a) for name, a in feed.items()})

    def _timers(self, models: Sequence[Path], feed: Feeds, feed_for) -> list[Timer]:
        sessions = [self._new_session(Path(m)) for m in models]
        timers = []
        for sess in sessions:
            check_feed_names(sess, feed)
            timers.append(_session_timer(sess, feed_for(sess)))
        return timers


def _session_timer(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Timer:
    def timed(n: int) -> list[float]:
        times = []
        try:
            for _ in range(n):
                start = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - start)
        except Exception as exc:
            raise EvaluationError(f"onnxruntime failed running the model: {str(exc).splitlines()[0]}") from exc
        return times
    return timed


def check_feed_names(sess: ort.InferenceSession, feeds: Feeds) -> None:
    wanted = [i.name for i in sess.get_inputs()]
    missing = [n for n in wanted if n not in feeds]
    extra = [n for n in feeds if n not in wanted]
    if missing or extra:
        raise DataError(f"the model's inputs are {', '.join(wanted)}; the data "
                        + (f"lacks {', '.join(missing)}" if missing else "")
                        + ("; " if missing and extra else "")
                        + (f"has no model input named {', '.join(extra)}" if extra else ""))


def pad_batch(feeds: Feeds, batch: int) -> dict[str, np.ndarray]:
    """Each input grown to `batch` rows by repeating its last row (their outputs are dropped)."""
    out = {}
    for name, array in feeds.items():
        array = np.asarray(array)
        short = batch - len(array)
        out[name] = np.concatenate([array, np.repeat(array[-1:], short, axis=0)]) if short > 0 else array
    return out
