"""ONNX -> TVM Relax -> shared library, cached on disk by (model sha256, build spec).

Relax's ONNX importer needs static pad/shape operands and has no QOperator kernels, so a model is
checked for ops the importer lacks (before any compile), constant-folded, bound to a fixed input
shape per input (batch = the runner's chunk), compiled and exported; a library is built once per agent."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from shared.atomic import publish
from shared.errors import DataError, EvaluationError
from shared.runners.base import UnsupportedModel

log = logging.getLogger(__name__)

FOLD_VERSION = 2                       # bump when fold_constants changes what it emits
_ONNX_DOMAINS = ("", "ai.onnx")
_NEVER_FOLD = frozenset({"DynamicQuantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
                         "RandomUniformLike", "Multinomial", "Bernoulli"})   # non-deterministic or batch-dependent
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Q/DQ of a constant is folded only when tiny (e.g. a QDQ'd Pad value, which Relax needs constant);
# quantized weights stay int8 in the library: EfficientNet-Lite0 links to 6.8 MB instead of 20 MB,
# with identical outputs.
_MAX_QDQ_FOLD_ELEMENTS = 64
_MAX_FOLDED_ELEMENTS = 1 << 24


def relax_converters() -> frozenset[str]:
    """ONNX op types the installed Relax importer can convert (its own registry)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map())  # noqa: SLF001 - the importer's only op list


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Ops Relax cannot import: custom domains (com.microsoft QGemm, QLinearAdd...) and ONNX ops without
    a converter (QLinearConv, QLinearMatMul, ConvInteger...). Sorted, each once, as `domain:op` or `op`."""
    known = relax_converters()
    bad = set()
    for node in model.graph.node:
        if node.domain not in _ONNX_DOMAINS:
            bad.add(f"{node.domain}:{node.op_type}")
        elif node.op_type not in known:
            bad.add(node.op_type)
    return sorted(bad)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` where every node whose inputs are all constants is replaced by its value,
    evaluated with onnx's reference runtime. EfficientNet's `static_padding` computes Pad operands
    with Constant/ConstantOfShape/Concat/Reshape/Slice/Cast chains that Relax rejects as dynamic."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    opsets = {d.domain or "": d.version for d in out.opset_import}
    overridable = {i.name for i in graph.input}   # an initializer that is also an input can be fed
    consts = {t.name: t for t in graph.initializer if t.name not in overridable}
    values: dict[str, np.ndarray] = {}
    outputs = {o.name for o in graph.output}
    kept, folded = [], []
    for node in graph.node:
        if not _foldable(node, consts) or outputs.intersection(node.output):
            kept.append(node)
            continue
        feeds = {}
        for name in node.input:
            if name and name not in values:
                values[name] = numpy_helper.to_array(consts[name])
            if name:
                feeds[name] = values[name]
        results = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
        arrays = [np.asarray(r) for r in results]
        if any(a.size > _MAX_FOLDED_ELEMENTS for a in arrays):
            kept.append(node)
            continue
        for name, arr in zip(node.output, arrays):
            tensor = numpy_helper.from_array(arr, name)
            consts[name], values[name] = tensor, arr
            folded.append(tensor)
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    inits = [t for t in list(graph.initializer) + folded if t.name in used or t.name in overridable]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return out


def _foldable(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> bool:
    if node.domain not in _ONNX_DOMAINS or node.op_type in _NEVER_FOLD:
        return False
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return False
    if not all(name in consts for name in node.input if name):
        return False
    if node.op_type in _QDQ:
        return int(np.prod(consts[node.input[0]].dims)) <= _MAX_QDQ_FOLD_ELEMENTS
    return True


@dataclass(frozen=True)
class InputSpec:
    """One model input: its declared dims (int or symbol name) and element type."""

    name: str
    dims: tuple[int | str, ...]
    dtype: str

    @property
    def batch_is_fixed(self) -> bool:
        return bool(self.dims) and isinstance(self.dims[0], int)

    def bind(self, batch: int, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The static shape to compile for: `batch` rows of `sample_shape`, checked against fixed dims."""
        shape = (batch, *sample_shape)
        if len(shape) != len(self.dims):
            raise DataError(f"input {self.name!r} has {len(self.dims)} dims {list(self.dims)}; "
                            f"the data gives shape {list(shape)}")
        for i, (want, got) in enumerate(zip(self.dims, shape)):
            if i > 0 and isinstance(want, int) and want != got:
                raise DataError(f"input {self.name!r} dim {i} is {want}, the data has {got} "
                                f"(model dims {list(self.dims)}, data shape {list(shape)})")
        return shape

    def bind_whole(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The static shape to compile for one whole feed: exactly `shape`, checked against every fixed dim."""
        if len(shape) != len(self.dims):
            raise DataError(f"input {self.name!r} has {len(self.dims)} dims {list(self.dims)}; "
                            f"the feed gives shape {list(shape)}")
        for i, (want, got) in enumerate(zip(self.dims, shape)):
            if isinstance(want, int) and want != got:
                raise DataError(f"input {self.name!r} dim {i} is {want}, the feed has {got} "
                                f"(model dims {list(self.dims)}, feed shape {list(shape)})")
        return tuple(shape)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's fed inputs (graph inputs that are not initializers), in graph order."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        ttype = inp.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in ttype.shape.dim)
        specs.append(InputSpec(inp.name, dims, onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name))
    return specs


@dataclass(frozen=True)
class BoundInput:
    name: str
    shape: tuple[int, ...]
    dtype: str


def bind_inputs(specs: list[InputSpec], batch: int | None, sample: Mapping[str, np.ndarray]) -> tuple[BoundInput, ...]:
    """Each input's static shape and dtype for `batch` rows of `sample` (arrays with a sample axis),
    or, with `batch` None, for `sample` as one whole feed (its arrays' own shapes); data for an input
    the model lacks, a missing input or another dtype is a DataError naming it."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in sample]
    extra = [n for n in sample if n not in names]
    if missing or extra:
        raise DataError(f"the model's inputs are {', '.join(names)}; the data "
                        + "; ".join(([f"lacks {', '.join(missing)}"] if missing else [])
                                    + ([f"has no model input named {', '.join(extra)}"] if extra else [])))
    bound = []
    for spec in specs:
        array = np.asarray(sample[spec.name])
        if array.dtype.name != spec.dtype:
            raise DataError(f"input {spec.name!r} is {spec.dtype}; the data is {array.dtype.name}")
        shape = spec.bind_whole(array.shape) if batch is None else spec.bind(batch, tuple(array.shape[1:]))
        bound.append(BoundInput(spec.name, shape, spec.dtype))
    return tuple(bound)


@dataclass(frozen=True)
class BuildSpec:
    """Everything besides the model bytes that decides the compiled library."""

    target: str                # canonical JSON of the TVM target dict
    host: str | None           # canonical JSON of the host target dict
    inputs: tuple[BoundInput, ...]
    ndk_cc: str | None = None  # cross linker for export_library (Android NDK clang)

    def digest(self) -> str:
        import tvm

        text = json.dumps({"target": self.target, "host": self.host,
                           "inputs": [[i.name, list(i.shape), i.dtype] for i in self.inputs], "ndk_cc": self.ndk_cc,
                           "tvm": tvm.__version__, "fold": FOLD_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CompiledLibrary:
    path: Path
    from_cache: bool
    compile_seconds: float     # 0.0 on a cache hit


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tvm_target(spec: BuildSpec) -> Any:
    import tvm

    host = json.loads(spec.host) if spec.host else None
    return tvm.target.Target(json.loads(spec.target), host=host)


def ndk_fcompile(cc_path: str) -> Callable[..., None]:
    """export_library's linker for a cross compiler (TVM's own ndk helper reads os.environ instead)."""
    from tvm.support import cc as tvm_cc

    def fcompile(output: str, objects: list[str], options: list[str] | None = None) -> None:
        tvm_cc.create_shared(output, objects, options=["-lm", *(options or [])], cc=cc_path)

    fcompile.output_format = "so"  # type: ignore[attr-defined]
    fcompile.get_target_triple = tvm_cc.get_target_by_dump_machine(cc_path)  # type: ignore[attr-defined]
    return fcompile


def _first_lines(exc: BaseException, n: int = 3) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return " | ".join(lines[:n]) if lines else type(exc).__name__


def build_library(model: onnx.ModelProto, spec: BuildSpec, out: Path, label: str) -> None:
    """Import, compile and export `model` for `spec` to `out` (a .so). Raises UnsupportedModel for ops
    Relax lacks, EvaluationError with the TVM error's first lines for any other failure."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    missing = unsupported_ops(model)
    if missing:
        raise UnsupportedModel(f"TVM Relax cannot import {label}: no converter for {', '.join(missing)} "
                               f"(TVM agents take QDQ candidates; QOperator/ConvInteger models are unsupported)")
    prepared = fold_constants(model)
    try:
        mod = from_onnx(prepared, shape_dict={i.name: list(i.shape) for i in spec.inputs},
                        dtype_dict={i.name: i.dtype for i in spec.inputs}, keep_params_in_input=False)
    except tvm.error.OpNotImplemented as exc:
        raise UnsupportedModel(f"TVM Relax cannot import {label}: {_first_lines(exc)}") from exc
    except Exception as exc:  # the importer raises ValueError/TVMError/KeyError for what it cannot express
        raise EvaluationError(f"TVM Relax cannot import {label}: {_first_lines(exc)}") from exc
    try:
        target = tvm_target(spec)
        executable = tvm.compile(mod, target=target)
    except Exception as exc:  # TVMError subclasses carry the failing pass in their first lines
        raise EvaluationError(f"TVM cannot compile {label} for {spec.target}: {_first_lines(exc)}") from exc
    try:
        fcompile = ndk_fcompile(spec.ndk_cc) if spec.ndk_cc else None
        executable.export_library(str(out), fcompile=fcompile)
    except Exception as exc:
        raise EvaluationError(f"cannot link the TVM library of {label} "
                              f"(linker {spec.ndk_cc or 'host cc'}): {_first_lines(exc)}") from exc


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Across processes (an agent's slot workers share the cache): one build per library."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class LibraryCache:
    """Compiled libraries under `root`, keyed by model sha256 and BuildSpec digest; one build per key
    at a time (threads and processes), written atomically so a crash never leaves a truncated library."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, model_sha256: str, spec: BuildSpec) -> Path:
        return self.root / f"{model_sha256[:20]}-{spec.digest()[:20]}.so"

    def get_or_build(self, model_sha256: str, spec: BuildSpec, model: onnx.ModelProto, label: str) -> CompiledLibrary:
        """The library of `model` (whose file hashes to `model_sha256`) for `spec`, built on a miss."""
        path = self.path_for(model_sha256, spec)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock_for(path.name), _file_lock(self.root / f".{path.name}.lock"):
            if path.is_file():
                log.debug("TVM library cache hit %s", path.name)
                return CompiledLibrary(path, True, 0.0)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".build-") as tmp:
                staged = Path(tmp) / path.name
                build_library(model, spec, staged, label)
                publish(staged, path)
            seconds = time.perf_counter() - start
            log.info("compiled %s for %s in %.1fs -> %s", label, spec.target, seconds, path.name)
            return CompiledLibrary(path, False, seconds)

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())
