"""Input shapes of a model: what its graph declares, what the user fixes with
`--input-shape NAME:1x3x640x640`, what the data implies, and the model with those dimensions fixed.

Symbolic dimensions are what onnxruntime's shape inference and quantizer stumble on (a detector with
dynamic H and W); fixing them to the size the data has makes the prepared model specific to that
size, which is what is measured anyway. The leading (batch) dimension is left symbolic unless the
user fixes it, so evaluation can still run batches."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from shared.errors import DataError, InvalidArgument
from shared.limits import DEFAULT_LIMITS

#: how a fixed shape is written on the command line and in specs
EXAMPLE = "x:1x3x640x640"
_DIMS = re.compile(r"^-?\d+(x-?\d+)*$")

Shape = tuple[int | None, ...]          # None: symbolic or unknown


@dataclass(frozen=True)
class ModelInput:
    """A graph input (or output) as declared: name, dims (None where symbolic), numpy dtype name."""

    name: str
    dims: Shape
    dtype: str

    @property
    def shape(self) -> Shape:
        return self.dims

    def shown(self) -> str:
        return format_dims(self.dims)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.dims), "dtype": self.dtype}


def format_dims(shape: Sequence[int | None]) -> str:
    """[?,3,?,?] style: how a shape is shown in messages ([] for a scalar)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def shape_spec(name: str, shape: Sequence[int]) -> str:
    return f"{name}:{'x'.join(str(d) for d in shape)}"


def parse_input_shape(text: object, flag: str = "--input-shape") -> tuple[str, tuple[int, ...]]:
    """'NAME:1x3x640x640' -> (NAME, (1, 3, 640, 640)). The name may itself hold colons ('input:0'):
    the dimensions are after the last one."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{flag} {text!r} must be a string NAME:DIMS (e.g. {EXAMPLE})")
    name, sep, dims = text.strip().rpartition(":")
    if len(text) > 1024:
        raise InvalidArgument(f"{flag} {text[:40]!r}... is {len(text)} characters long; at most 1024")
    if not sep or not name or not _DIMS.match(dims):
        raise InvalidArgument(f"{flag} {text!r} is not NAME:DIMS with dimensions joined by 'x' (e.g. {EXAMPLE})")
    values = tuple(int(d) for d in dims.split("x"))
    for d in values:
        if d <= 0:
            raise InvalidArgument(f"{flag} {text!r}: dimension {d} must be a positive integer")
        if d > DEFAULT_LIMITS.max_tensor_dim:
            raise InvalidArgument(f"{flag} {text!r}: dimension {d} is above the limit "
                                  f"max_tensor_dim={DEFAULT_LIMITS.max_tensor_dim}")
    return name, values


def parse_input_shapes(values: Iterable[object], flag: str = "--input-shape") -> dict[str, tuple[int, ...]]:
    """Every value parsed; an input named twice is an error naming both values."""
    out: dict[str, tuple[int, ...]] = {}
    texts: dict[str, object] = {}
    for value in values:
        name, dims = parse_input_shape(value, flag)
        if name in out:
            raise InvalidArgument(f"{flag} names input {name!r} twice ({texts[name]!r} and {value!r})")
        out[name], texts[name] = dims, value
    return out


def canonical_input_shapes(values: Iterable[object], flag: str = "--input-shape") -> tuple[str, ...]:
    """The normalised option value: 'NAME:DIMS' strings sorted by input name."""
    parsed = parse_input_shapes(values, flag)
    return tuple(shape_spec(name, parsed[name]) for name in sorted(parsed))


def resolve_fixed_shapes(inputs: Sequence[ModelInput], user: Mapping[str, tuple[int, ...]],
                         data: Mapping[str, Shape], model_name: str) -> dict[str, Shape]:
    """The dimensions to fix, per input: the user's shape whole, else the data's where the model
    leaves a dimension symbolic (None keeps it symbolic). Contradictions are errors naming both."""
    by_name = {i.name: i for i in inputs}
    for name, dims in user.items():
        if name not in by_name:
            lowered = {n.lower(): n for n in by_name}
            close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3)]
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InvalidArgument(f"--input-shape {shape_spec(name, dims)}: {model_name} has no input {name!r} "
                                  f"(inputs: {', '.join(by_name) or 'none'}){hint}")
        declared = by_name[name]
        _check_against(declared, dims, f"--input-shape {shape_spec(name, dims)}", InvalidArgument, model_name)
    fixes: dict[str, Shape] = {}
    for info in inputs:
        shape = data.get(info.name)
        if info.name in user:
            fixes[info.name] = tuple(user[info.name])
            if shape is not None:
                spec = shape_spec(info.name, user[info.name])
                _check_against(ModelInput(info.name, fixes[info.name], info.dtype), shape,
                               f"the data ({format_dims(shape)}) against --input-shape {spec}", DataError, model_name)
            continue
        if shape is None:
            continue
        _check_against(info, shape, f"the data ({format_dims(shape)})", DataError, model_name)
        fixed = tuple(d if have is None else None for d, have in zip(shape, info.shape))
        if any(d is not None for d in fixed):
            fixes[info.name] = fixed
    return fixes


def _check_against(info: ModelInput, dims: Sequence[int | None], what: str, error: type, model_name: str) -> None:
    if len(dims) != len(info.shape):
        raise error(f"{what}: input {info.name!r} of {model_name} has rank {len(info.shape)} "
                    f"{info.shown()}, not {len(dims)}")
    for axis, (want, have) in enumerate(zip(dims, info.shape)):
        if want is not None and have is not None and want != have:
            raise error(f"{what}: input {info.name!r} of {model_name} has the static dimension {have} at "
                        f"axis {axis} {info.shown()}, not {want}")


def has_batch_axis(info: ModelInput) -> bool:
    """Whether the input's leading dimension is taken for a batch: symbolic, of an input of rank 2 or
    more (a 1-D input's only dimension is a length, e.g. of a shape or a token list)."""
    return len(info.shape) >= 2 and info.shape[0] is None


def batch_symbolic(inputs: Sequence[ModelInput], fixes: Mapping[str, Shape]) -> bool:
    """Whether some input keeps a symbolic batch dimension after `fixes`."""
    for info in inputs:
        fixed = fixes.get(info.name, ())
        if has_batch_axis(info) and not (fixed and fixed[0] is not None):
            return True
    return False


def with_batch_one(inputs: Sequence[ModelInput], fixes: Mapping[str, Shape]) -> dict[str, Shape]:
    """`fixes` plus every still-symbolic batch dimension fixed to 1."""
    out = dict(fixes)
    for info in inputs:
        if not has_batch_axis(info):
            continue
        fixed = list(out.get(info.name, (None,) * len(info.shape)))
        if fixed[0] is None:
            fixed[0] = 1
            out[info.name] = tuple(fixed)
    return out


def suggestion(inputs: Sequence[ModelInput], fixes: Mapping[str, Shape], only_symbolic: bool = True) -> str:
    """'--input-shape x:1x3xHxW ...' for the inputs that keep symbolic dimensions: known sizes filled
    in (batch 1), the others left as a placeholder the user replaces."""
    parts = []
    for info in inputs:
        fixed = fixes.get(info.name, (None,) * len(info.shape))
        dims = []
        for axis, (declared, f) in enumerate(zip(info.shape, fixed)):
            value = declared if declared is not None else f
            dims.append(str(value) if value is not None else ("1" if axis == 0 and has_batch_axis(info)
                                                               else f"D{axis}"))
        if only_symbolic and all(d is not None or f is not None for d, f in zip(info.shape, fixed)):
            continue
        if dims:
            parts.append(f"--input-shape {info.name}:{'x'.join(dims)}")
    return " ".join(parts)


def fixed_text(fixes: Mapping[str, Shape]) -> str:
    return ", ".join(f"{name} {format_dims(shape)}" for name, shape in sorted(fixes.items())) or "none"


# ----------------------------------------------------------------------------- the graph (onnx)
def graph_inputs(model) -> tuple[ModelInput, ...]:
    """The model's real inputs (initializers listed as inputs are weights, not inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return tuple(_info(v) for v in model.graph.input if v.name not in inits)


def graph_outputs(model) -> tuple[ModelInput, ...]:
    return tuple(_info(v) for v in model.graph.output)


def _info(value) -> ModelInput:
    import onnx

    tensor = value.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except Exception:  # undefined or exotic element types (string, float8): named as ONNX spells them
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower() if tensor.elem_type else "undefined"
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tensor.shape.dim)
    return ModelInput(value.name, dims, dtype)


def name_unknown_dims(model) -> None:
    """In place: literal -1 dimensions of graph inputs and outputs (some exporters' way of saying
    'dynamic') become named symbolic dimensions, as ONNX spells them."""
    for value in list(model.graph.input) + list(model.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value == -1:
                dim.dim_param = f"{value.name}_dim{axis}"


def fix_dims(model, fixes: Mapping[str, Shape]):
    """A copy of `model` whose graph inputs have the fixed dimensions; value_info of other tensors
    is dropped (it may hold the old symbolic shapes; shape inference rebuilds it)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not fixes:
        return out
    for value in out.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, fixes.get(value.name, ())):
            if size is not None:
                dim.Clear()
                dim.dim_value = size
    del out.graph.value_info[:]
    return out
