"""Model preparation: load, check, fold Constant weights into initializers, name nodes, run
onnxruntime's quant_pre_process, hash. Each step names itself in its errors."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from shared.atomic import atomic_output
from shared.errors import ModelError, NotFound
from shared.hashing import sha256_file
from shared.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

#: bump when preparation changes, so cached prepared files are not reused across versions
PREPARE_VERSION = "2"


@dataclass(frozen=True)
class ModelInput:
    """One input the data must feed: its name, dims (None for symbolic ones) and numpy dtype."""

    name: str
    dims: tuple[int | None, ...]
    dtype: str

    def shown(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.dims), "dtype": self.dtype}


@dataclass(frozen=True)
class PreparedModel:
    source: Path
    path: Path                         # the prepared FP32 model every candidate is built from
    sha256: str                        # of the prepared file
    size_bytes: int
    inputs: tuple[ModelInput, ...]     # graph inputs that are not initializers, in order
    output_names: tuple[str, ...]
    node_names: tuple[str, ...]
    op_types: tuple[str, ...]          # parallel to node_names

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self.inputs[0].dims

    @property
    def output_name(self) -> str:
        return self.output_names[0]

    @property
    def num_nodes(self) -> int:
        return len(self.node_names)

    def op_type_of(self, node: str) -> str:
        return self.op_types[self.node_names.index(node)]


def load_model(path: Path, limits: Limits = DEFAULT_LIMITS) -> onnx.ModelProto:
    """Load an untrusted model: size-bounded, external data confined to the model's folder."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"model file {path} does not exist", step="prepare/load")
    limits.check("max_model_bytes", path.stat().st_size, f"model file {path.name} size")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError...
        raise ModelError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc})", step="prepare/load") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not an ONNX model with a graph (no nodes)", step="prepare/load")
    limits.check("max_nodes", len(model.graph.node), f"node count of {path.name}")
    _check_tensor_sizes(model, limits, path)
    if _external_locations(model):
        _check_external_data(model, path)
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise ModelError(f"cannot load the external data of {path.name}: {exc}", step="prepare/load") from exc
    return model


def _external_locations(model: onnx.ModelProto) -> list[str]:
    out = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            out.append(entries.get("location", ""))
    return out


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Model files are hostile input: external data must stay inside the model's own folder."""
    base = path.parent.resolve()
    for location in _external_locations(model):
        candidate = Path(location)
        if not location or candidate.is_absolute() or ".." in candidate.parts:
            raise ModelError(f"{path.name} refers to external data {location!r} outside its folder; refused",
                             step="prepare/load")
        resolved = (base / candidate).resolve()
        if base not in resolved.parents:
            raise ModelError(f"{path.name} refers to external data {location!r} that resolves outside its "
                             f"folder (symlink?); refused", step="prepare/load")
        if not resolved.is_file():
            raise ModelError(f"{path.name} refers to external data {location!r} that does not exist",
                             step="prepare/load")


def _check_tensor_sizes(model: onnx.ModelProto, limits: Limits, path: Path) -> None:
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                if dim.dim_value < 0:
                    raise ModelError(f"{path.name}: tensor {value.name!r} has a negative dimension {dim.dim_value}",
                                     step="prepare/check")
                limits.check("max_tensor_dim", dim.dim_value, f"a dimension of tensor {value.name!r}")
    for init in model.graph.initializer:
        if any(d < 0 for d in init.dims):
            raise ModelError(f"{path.name}: initializer {init.name!r} has a negative dimension {list(init.dims)}",
                             step="prepare/check")
        limits.check("max_tensor_elements", int(np.prod(init.dims, dtype=np.float64)),
                     f"element count of initializer {init.name!r}")


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move main-graph Constant nodes holding tensors into initializers.

    Some exporters (Paddle) keep weights in Constant nodes; onnxruntime's quantizer only looks at
    initializers, so without this the model is silently left unquantized."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = []
    names = {init.name for init in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            keep.append(node)
            continue
        attr = {a.name: a for a in node.attribute}
        if "value" in attr:
            arr = numpy_helper.to_array(attr["value"].t)
        elif "value_float" in attr:
            arr = np.array(attr["value_float"].f, dtype=np.float32)
        elif "value_floats" in attr:
            arr = np.array(list(attr["value_floats"].floats), dtype=np.float32)
        elif "value_int" in attr:
            arr = np.array(attr["value_int"].i, dtype=np.int64)
        elif "value_ints" in attr:
            arr = np.array(list(attr["value_ints"].ints), dtype=np.int64)
        else:  # sparse or string constants: leave them to the runtime
            keep.append(node)
            continue
        if node.output[0] in names:
            keep.append(node)
            continue
        out.graph.initializer.append(numpy_helper.from_array(arr, name=node.output[0]))
        names.add(node.output[0])
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name: exclusion lists address nodes by name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    seen: set[str] = set()
    for i, node in enumerate(out.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
    return out


def _graph_io(model: onnx.ModelProto, path: Path) -> tuple[tuple[ModelInput, ...], tuple[str, ...]]:
    """The inputs the data must feed and the outputs, checked: at least one of each, tensors only."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise ModelError(f"{path.name} has no graph inputs besides its initializers", step="prepare/check")
    if not model.graph.output:
        raise ModelError(f"{path.name} has no graph outputs", step="prepare/check")
    found = []
    for inp in inputs:
        if not inp.type.HasField("tensor_type"):
            raise ModelError(f"input {inp.name!r} of {path.name} is not a tensor; qfarm feeds tensors",
                             step="prepare/check")
        tensor_type = inp.type.tensor_type
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        except KeyError as exc:
            raise ModelError(f"input {inp.name!r} of {path.name} has element type "
                             f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)}, which numpy cannot hold",
                             step="prepare/check") from exc
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tensor_type.shape.dim)
        found.append(ModelInput(inp.name, dims, dtype))
    return tuple(found), tuple(o.name for o in model.graph.output)


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    latest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not 7 <= entry.version <= latest:
            raise ModelError(f"{path.name} uses ai.onnx opset {entry.version}; supported: 7..{latest}",
                             step="prepare/check")


#: QDQ with per-channel axes needs opset 13 (DequantizeLinear's `axis`); older models are converted
MIN_QUANT_OPSET = 13


def upgrade_opset(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    version = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), MIN_QUANT_OPSET)
    if version >= MIN_QUANT_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, MIN_QUANT_OPSET)
    except Exception as exc:
        raise ModelError(f"cannot convert {path.name} from opset {version} to {MIN_QUANT_OPSET}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         step="prepare/opset") from exc


def prepare_model(source: Path, work_dir: Path, limits: Limits = DEFAULT_LIMITS) -> PreparedModel:
    """Prepare `source` into `work_dir/prepared-<sha>.onnx` (reused when already there)."""
    source = Path(source)
    raw = load_model(source, limits)
    src_sha = sha256_file(source)
    work_dir.mkdir(parents=True, exist_ok=True)
    target = work_dir / f"prepared-{src_sha[:16]}-v{PREPARE_VERSION}.onnx"
    if not target.exists():
        try:
            onnx.checker.check_model(raw)
        except Exception as exc:
            raise ModelError(f"{source.name} fails onnx.checker: {str(exc).splitlines()[0]}",
                             step="prepare/check") from exc
        _graph_io(raw, source)
        _check_opset(raw, source)
        try:
            inferred = onnx.shape_inference.infer_shapes(raw, check_type=True, strict_mode=True)
        except Exception as exc:
            raise ModelError(f"shape inference failed on {source.name}: {str(exc).splitlines()[0]}",
                             step="prepare/shape-inference") from exc
        model = name_nodes(constants_to_initializers(upgrade_opset(inferred, source)))
        _preprocess(model, target, source)
    prepared = onnx.load(str(target))
    inputs, outputs = _graph_io(prepared, source)
    return PreparedModel(
        source=source, path=target, sha256=sha256_file(target), size_bytes=target.stat().st_size,
        inputs=inputs, output_names=outputs,
        node_names=tuple(n.name for n in prepared.graph.node),
        op_types=tuple(n.op_type for n in prepared.graph.node))


def _preprocess(model: onnx.ModelProto, target: Path, source: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="qfarm-prep-") as tmp:
        staged = Path(tmp) / "in.onnx"
        out = Path(tmp) / "out.onnx"
        onnx.save(model, str(staged))
        try:
            quant_pre_process(str(staged), str(out), skip_symbolic_shape=False)
        except Exception as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"onnxruntime quant_pre_process failed on {source.name}: {message}",
                             step="prepare/preprocess") from exc
        # quant_pre_process may fold/rename nodes: name any it left unnamed, then publish atomically
        final = name_nodes(onnx.load(str(out)))
        with atomic_output(target) as tmp_target:
            onnx.save(final, str(tmp_target))
