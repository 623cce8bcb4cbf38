"""Silero VAD in a form qfarm's tensor datasets can feed (they stack samples along each input's
first dimension): the int64 scalar `sr` folded into the graph as its only real value (16000, the
model's 16 kHz export), and `state` taken batch-major, [batch, 2, 128], transposed in the graph to
the [2, batch, 128] the network wants (`stateN` likewise on the way out). Same network, same
weights, same answers (checked against the original, sample by sample, when written).

    python bench/batch_major.py [--zoo models/zoo]     # writes models/zoo/silero_vad/batch_major/

Writes model.onnx, calibration.npz and eval.npz (from the zoo's npz: input [N, 576], state
[N, 2, 128]). Folding `sr` also lets onnxruntime fold the model's `If` nodes (they branch on the
sample rate), so the LSTM leaves its subgraph and becomes quantizable: the quantized model is not
the one `quantize_static` makes of the original export, where the LSTM stays float."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000


def adapt_model(src: Path, dst: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    sr = next(i for i in graph.input if i.name == "sr")
    graph.input.remove(sr)
    graph.initializer.append(numpy_helper.from_array(np.array(SAMPLE_RATE, np.int64), "sr"))
    state = next(i for i in graph.input if i.name == "state")
    dims = state.type.tensor_type.shape.dim
    two, batch, hidden = (onnx.TensorShapeProto.Dimension(), onnx.TensorShapeProto.Dimension(),
                          onnx.TensorShapeProto.Dimension())
    two.CopyFrom(dims[0]), batch.CopyFrom(dims[1]), hidden.CopyFrom(dims[2])
    for target, source in zip(dims, (batch, two, hidden)):
        target.CopyFrom(source)
    state.name = "state_bm"
    graph.node.insert(0, helper.make_node("Transpose", ["state_bm"], ["state"], name="state_to_layer_major",
                                          perm=[1, 0, 2]))
    out = next(o for o in graph.output if o.name == "stateN")
    out_dims = out.type.tensor_type.shape.dim
    first, second = onnx.TensorShapeProto.Dimension(), onnx.TensorShapeProto.Dimension()
    first.CopyFrom(out_dims[0]), second.CopyFrom(out_dims[1])
    out_dims[0].CopyFrom(second), out_dims[1].CopyFrom(first)
    out.name = "stateN_bm"
    graph.node.append(helper.make_node("Transpose", ["stateN"], ["stateN_bm"], name="state_to_batch_major",
                                       perm=[1, 0, 2]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def adapt_data(src: Path, dst: Path) -> dict[str, np.ndarray]:
    with np.load(src) as z:
        if not (z["sr"] == SAMPLE_RATE).all():
            raise SystemExit(f"{src}: sr is not {SAMPLE_RATE} everywhere; cannot fold it")
        arrays = {"input": np.ascontiguousarray(z["input"][:, 0, :]),
                  "state_bm": np.ascontiguousarray(z["state"][:, :, 0, :])}
    np.savez(dst, **arrays)
    return arrays


def check_same_answers(original: Path, adapted: Path, original_npz: Path, n: int = 16) -> float:
    """Largest difference of `output` between the adapted model run as one batch and the original
    run sample by sample."""
    import onnxruntime as ort

    orig = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(str(adapted), providers=["CPUExecutionProvider"])
    with np.load(original_npz) as z:
        want = np.concatenate([orig.run(["output"], {"input": z["input"][i], "state": z["state"][i],
                                                     "sr": np.asarray(z["sr"][i])})[0] for i in range(n)])
        got = new.run(["output"], {"input": z["input"][:n, 0, :], "state_bm": z["state"][:n, :, 0, :]})[0]
    return float(np.abs(got - want).max())


def write(zoo: Path) -> Path:
    src = zoo / "silero_vad"
    out = src / "batch_major"
    out.mkdir(exist_ok=True)
    adapt_model(src / "model.onnx", out / "model.onnx")
    for split in ("calibration", "eval"):
        adapt_data(src / "data" / f"{split}.npz", out / f"{split}.npz")
    diff = check_same_answers(src / "model.onnx", out / "model.onnx", src / "data" / "eval.npz")
    if diff > 1e-5:
        raise SystemExit(f"the adapted model answers differently (max |diff| {diff:.2e})")
    print(f"wrote {out} (max |output diff| vs the original on 16 eval samples: {diff:.1e})")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", type=Path, default=ROOT / "models" / "zoo")
    write(p.parse_args(argv).zoo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
