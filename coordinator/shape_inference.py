"""Shape inference before quantization, as a chain of attempts.

onnxruntime's quantizer only quantizes tensors whose type it knows, and its preprocessing
(`quant_pre_process`) stops on the first shape it cannot infer ("Incomplete symbolic shape
inference"). So each attempt runs one inference method on the model with its input dimensions
fixed, then `quant_pre_process` without its own inference, and counts the inputs of quantizable
nodes that are still untyped. The first attempt that leaves none wins; otherwise the best one is
kept, and the caller decides whether that is an error. Order: onnxruntime's symbolic inference
(exact, then merging conflicting symbolic dims), the same with the batch fixed to 1, onnx's
inference, then none."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import onnx

from coordinator.shapes import Shape, fix_dims

log = logging.getLogger(__name__)

METHODS = ("symbolic", "symbolic-merge", "onnx", "none")


@dataclass(frozen=True)
class Attempt:
    method: str                      # one of METHODS
    batch_one: bool = False          # the symbolic leading dims fixed to 1 as well

    @property
    def label(self) -> str:
        return f"{self.method}{' (batch 1)' if self.batch_one else ''}"


@dataclass
class Outcome:
    attempt: Attempt
    model: onnx.ModelProto | None = None      # after quant_pre_process
    untyped: tuple[tuple[str, str], ...] = ()  # (tensor, node) inputs of quantizable nodes without a type/shape
    error: str = ""                           # why the attempt failed outright
    fixes: Mapping[str, Shape] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.model is not None and not self.untyped

    def why_not(self) -> str:
        if self.error:
            return f"{self.attempt.label}: {self.error}"
        tensor, node = self.untyped[0]
        return f"{self.attempt.label}: {len(self.untyped)} tensor(s) untyped, first {tensor!r} (input of {node!r})"


def attempts(batch_symbolic: bool) -> list[Attempt]:
    chain = [Attempt("symbolic"), Attempt("symbolic-merge")]
    if batch_symbolic:
        chain.append(Attempt("symbolic", batch_one=True))
    chain.append(Attempt("onnx"))
    if batch_symbolic:
        chain.append(Attempt("onnx", batch_one=True))
    chain.append(Attempt("none"))
    return chain


def infer(model: onnx.ModelProto, method: str) -> onnx.ModelProto:
    """One inference method; raises whatever the library raises."""
    if method in ("symbolic", "symbolic-merge"):
        return _symbolic(model, auto_merge=(method == "symbolic-merge"))
    if method == "onnx":
        # not strict: a partial inference still types what it can; data propagation follows
        # Shape -> Gather -> Reshape chains
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    return model


def _symbolic(model: onnx.ModelProto, auto_merge: bool) -> onnx.ModelProto:
    """onnxruntime's SymbolicShapeInference.infer_shapes, step by step as it does them, except that on
    failure it does not save `sym_shape_infer_temp.onnx` (and its external data) into the current
    folder: it raises naming the first node it stopped at."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(2**31 - 1, auto_merge, False, 0)
    steps = ("_preprocess", "_infer_impl", "_update_output_from_vi", "run_", "out_mp_")
    if not all(hasattr(inference, s) for s in steps[:3]):   # another onnxruntime: its public entry point
        return SymbolicShapeInference.infer_shapes(model, auto_merge=auto_merge)
    complete = False
    inference._preprocess(model)
    while inference.run_:
        complete = inference._infer_impl()
    inference._update_output_from_vi()
    if not complete:
        raise ValueError("Incomplete symbolic shape inference")
    return inference.out_mp_


def run_chain(model: onnx.ModelProto, fixes: Mapping[str, Shape], batch_one_fixes: Mapping[str, Shape],
              batch_symbolic: bool, quantizable_ops: set[str],
              preprocess: Callable[[onnx.ModelProto, bool], onnx.ModelProto]) -> tuple[Outcome, list[Outcome]]:
    """(the outcome kept, every outcome tried in order). `preprocess(model, skip_onnx_shape)` runs
    quant_pre_process on an already inferred model."""
    tried: list[Outcome] = []
    for attempt in attempts(batch_symbolic):
        chosen = batch_one_fixes if attempt.batch_one else fixes
        outcome = Outcome(attempt, fixes=chosen)
        try:
            inferred = infer(fix_dims(model, chosen), attempt.method)
            outcome.model = preprocess(inferred, attempt.method == "none")
            outcome.untyped = untyped_inputs(outcome.model, quantizable_ops)
        except Exception as exc:  # each library raises its own (AssertionError, InferenceError, Fail...)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            outcome.error = f"{type(exc).__name__}: {text}" if str(exc).strip() else text
            outcome.model = None
        tried.append(outcome)
        log.info("shape inference %s: %s", attempt.label, "complete" if outcome.complete else outcome.why_not())
        if outcome.complete:
            return outcome, tried
    usable = [o for o in tried if o.model is not None]
    best = min(usable, key=lambda o: len(o.untyped)) if usable else tried[0]
    return best, tried


def untyped_inputs(model: onnx.ModelProto, quantizable_ops: set[str]) -> tuple[tuple[str, str], ...]:
    """Inputs of quantizable nodes (main graph) whose element type or rank is unknown: the quantizer
    would silently leave those nodes in float."""
    known: dict[str, onnx.TypeProto] = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        known[value.name] = value.type
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in quantizable_ops or node.domain not in ("", "ai.onnx"):
            continue
        for name in node.input:
            if not name or name in inits:
                continue
            typ = known.get(name)
            if typ is None or not typ.HasField("tensor_type") or not typ.tensor_type.elem_type \
                    or not typ.tensor_type.HasField("shape"):
                out.append((name, node.name))
    return tuple(out)


def quant_pre_process_model(model: onnx.ModelProto, skip_onnx_shape: bool) -> onnx.ModelProto:
    """onnxruntime's quant_pre_process (optimisation + onnx shape inference), inference already done."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="qfarm-prep-") as tmp:
        staged, out = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(staged))
        quant_pre_process(str(staged), str(out), skip_symbolic_shape=True, skip_onnx_shape=skip_onnx_shape)
        return onnx.load(str(out))
