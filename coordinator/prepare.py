"""Model preparation: load, check, fold Constant weights into initializers, name nodes, fix the
dynamic input dimensions the data or `--input-shape` decide, infer shapes (a chain of methods, see
coordinator/shape_inference.py), run onnxruntime's quant_pre_process, hash. Each step names itself
in its errors."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Union

import numpy as np
import onnx
from onnx import numpy_helper

from coordinator.shapes import (ModelInput, Shape, batch_symbolic, fix_dims, fixed_text, format_dims, graph_inputs,
                                graph_outputs, name_unknown_dims, parse_input_shapes, resolve_fixed_shapes,
                                suggestion, with_batch_one)
from shared.atomic import atomic_output, atomic_write_text
from shared.errors import ModelError, NotFound, QfarmError
from shared.hashing import sha256_file
from shared.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

#: bump when preparation changes, so cached prepared files are not reused across versions
PREPARE_VERSION = "3"

#: what the data says about the model's inputs: {input name: shape, None where the data leaves a
#: dimension free (the batch)}, or a function of the model's inputs giving it (and checking them)
DataShapes = Union[Mapping[str, Shape], Callable[[tuple[ModelInput, ...]], Mapping[str, Shape]]]


@dataclass(frozen=True)
class PreparedModel:
    source: Path
    path: Path                         # the prepared FP32 model every candidate is built from
    sha256: str                        # of the prepared file (fixed input dimensions included)
    size_bytes: int
    inputs: tuple[ModelInput, ...]     # as prepared: fixed dimensions are ints, symbolic ones None
    outputs: tuple[ModelInput, ...]
    node_names: tuple[str, ...]
    op_types: tuple[str, ...]          # parallel to node_names
    fixed_shapes: Mapping[str, Shape] = field(default_factory=dict)   # what preparation fixed, per input
    shape_inference: Mapping = field(default_factory=dict)  # method kept, batch, untyped tensors, attempts

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def input_shape(self) -> Shape:
        return self.inputs[0].shape

    @property
    def output_name(self) -> str:
        return self.outputs[0].name

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def num_nodes(self) -> int:
        return len(self.node_names)

    def op_type_of(self, node: str) -> str:
        return self.op_types[self.node_names.index(node)]

    def model_dict(self) -> dict:
        """What a report says about the prepared model's interface and how it was prepared."""
        return {"inputs": [i.to_dict() for i in self.inputs], "outputs": list(self.output_names),
                "fixed_shapes": {k: list(v) for k, v in self.fixed_shapes.items()},
                "shape_inference": dict(self.shape_inference)}


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
                if dim.dim_value < -1:     # -1: some exporters' "dynamic" (named by shapes.name_unknown_dims)
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


def _check_io(model: onnx.ModelProto, path: Path) -> None:
    """At least one input besides the initializers and one output; every input a tensor of a type
    numpy can hold (the data must feed it)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise ModelError(f"{path.name} has no graph inputs besides its initializers", step="prepare/check")
    if not model.graph.output:
        raise ModelError(f"{path.name} has no graph outputs", step="prepare/check")
    for inp in inputs:
        if not inp.type.HasField("tensor_type"):
            raise ModelError(f"input {inp.name!r} of {path.name} is not a tensor; qfarm feeds tensors",
                             step="prepare/check")
        elem_type = inp.type.tensor_type.elem_type
        try:
            onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        except KeyError as exc:
            raise ModelError(f"input {inp.name!r} of {path.name} has element type "
                             f"{onnx.TensorProto.DataType.Name(elem_type)}, which numpy cannot hold",
                             step="prepare/check") from exc


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


def prepare_model(source: Path, work_dir: Path, limits: Limits = DEFAULT_LIMITS,
                  input_shapes: Mapping[str, tuple[int, ...]] | Iterable[str] = (),
                  data_shapes: DataShapes | None = None) -> PreparedModel:
    """Prepare `source` into `work_dir/prepared-<sha>[-<fixed shapes>].onnx` (reused when there).

    `input_shapes` (--input-shape, by input name) are fixed whole; otherwise the dimensions the
    model leaves symbolic are fixed to the data's (`data_shapes`), the batch staying symbolic."""
    source = Path(source)
    raw = load_model(source, limits)
    name_unknown_dims(raw)
    _check_io(raw, source)
    inputs = graph_inputs(raw)
    user = dict(input_shapes) if isinstance(input_shapes, Mapping) else parse_input_shapes(input_shapes)
    try:
        data = (data_shapes(inputs) if callable(data_shapes) else data_shapes) or {}
        fixes = resolve_fixed_shapes(inputs, user, data, source.name)
    except QfarmError:
        _validate(raw, source)        # a broken model is named before data or shapes that do not fit it
        raise
    src_sha = sha256_file(source)
    work_dir.mkdir(parents=True, exist_ok=True)
    target = work_dir / f"prepared-{src_sha[:16]}{_fixes_key(fixes)}-v{PREPARE_VERSION}.onnx"
    record = target.with_suffix(".json")
    if not target.exists() or not record.exists():
        _prepare(raw, source, inputs, fixes, target, record)
    prepared = onnx.load(str(target), load_external_data=False)
    how = json.loads(record.read_text())
    return PreparedModel(
        source=source, path=target, sha256=sha256_file(target), size_bytes=target.stat().st_size,
        inputs=graph_inputs(prepared), outputs=graph_outputs(prepared),
        node_names=tuple(n.name for n in prepared.graph.node), op_types=tuple(n.op_type for n in prepared.graph.node),
        fixed_shapes={k: tuple(v) for k, v in how["fixed_shapes"].items()}, shape_inference=how["shape_inference"])


def _fixes_key(fixes: Mapping[str, Shape]) -> str:
    if not fixes:
        return ""
    text = json.dumps({k: list(v) for k, v in sorted(fixes.items())}, separators=(",", ":"))
    return "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def _prepare(raw: onnx.ModelProto, source: Path, inputs: tuple[ModelInput, ...], fixes: Mapping[str, Shape],
             target: Path, record: Path) -> None:
    from coordinator.shape_inference import quant_pre_process_model, run_chain

    _validate(raw, source, infer=False)       # strict inference below, with the fixed dimensions
    fixed = fix_dims(raw, fixes)
    with_fixes = f" with {fixed_text(fixes)}" if fixes else ""
    try:
        onnx.shape_inference.infer_shapes(fixed, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed on {source.name}{with_fixes}: {str(exc).splitlines()[0]}",
                         step="prepare/shape-inference") from exc
    base = name_nodes(constants_to_initializers(upgrade_opset(fixed, source)))
    _check_loads(base, source)
    symbolic_batch = batch_symbolic(inputs, fixes)
    batch_one = with_batch_one(inputs, fixes)
    kept, tried = run_chain(base, fixes, batch_one, symbolic_batch, _quantizable_ops(), quant_pre_process_model)
    if kept.model is None:
        raise ModelError(f"onnxruntime quant_pre_process failed on {source.name}{with_fixes} with every shape "
                         f"inference ({'; '.join(o.why_not() for o in tried)})" + _hint(inputs, batch_one),
                         step="prepare/preprocess")
    remaining = _still_symbolic(inputs, batch_one)
    if kept.untyped and remaining:
        tensor, node = kept.untyped[0]
        raise ModelError(f"shape inference cannot type tensor {tensor!r} (input of node {node!r}) of "
                         f"{source.name}: {', '.join(remaining)} {'is' if len(remaining) == 1 else 'are'} still "
                         f"symbolic (tried {'; '.join(o.why_not() for o in tried)})" + _hint(inputs, batch_one),
                         step="prepare/shape-inference")
    if kept.untyped:
        log.warning("%s: %d tensor(s) stay untyped after shape inference (%s); the quantizer leaves their nodes "
                    "in float", source.name, len(kept.untyped), kept.untyped[0][0])
    how = {"method": kept.attempt.method,
           "batch": "1" if kept.attempt.batch_one else ("symbolic" if symbolic_batch else "static"),
           "untyped": [t for t, _ in kept.untyped[:20]], "num_untyped": len(kept.untyped),
           "tried": [o.why_not() for o in tried if o is not kept]}
    final = name_nodes(kept.model)
    with atomic_output(target) as tmp_target:
        onnx.save(final, str(tmp_target))
    atomic_write_text(record, json.dumps({"fixed_shapes": {k: list(v) for k, v in kept.fixes.items()},
                                          "shape_inference": how}, indent=1))


def _validate(raw: onnx.ModelProto, source: Path, infer: bool = True) -> None:
    """onnx.checker, the opset range and (`infer`) strict shape inference as declared and whether
    onnxruntime loads it."""
    try:
        onnx.checker.check_model(raw)
    except Exception as exc:
        raise ModelError(f"{source.name} fails onnx.checker: {str(exc).splitlines()[0]}",
                         step="prepare/check") from exc
    _check_opset(raw, source)
    if not infer:
        return
    try:
        onnx.shape_inference.infer_shapes(raw, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed on {source.name}: {str(exc).splitlines()[0]}",
                         step="prepare/shape-inference") from exc
    _check_loads(raw, source)


def _check_loads(model: onnx.ModelProto, source: Path) -> None:
    """onnxruntime must load the model: calibration runs it (quant_pre_process would only log)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises Fail/InvalidGraph/NotImplemented subclasses of RuntimeError
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load {source.name}: {text}", step="prepare/check") from exc


def _still_symbolic(inputs: tuple[ModelInput, ...], fixes: Mapping[str, Shape]) -> list[str]:
    """'x [1,3,?,?]' for each input with a dimension nothing fixes."""
    out = []
    for info in inputs:
        fixed = fixes.get(info.name, (None,) * len(info.shape))
        dims = tuple(d if d is not None else f for d, f in zip(info.shape, fixed))
        if any(d is None for d in dims):
            out.append(f"{info.name} {format_dims(dims)}")
    return out


def _hint(inputs: tuple[ModelInput, ...], fixes: Mapping[str, Shape]) -> str:
    text = suggestion(inputs, fixes)
    return f"; pass {text} with the sizes your data has" if text else ""


def _quantizable_ops() -> set[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) | set(QLinearOpsRegistry)
