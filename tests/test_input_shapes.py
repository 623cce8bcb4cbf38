"""Dynamic input dimensions: fixed from the data or --input-shape before shape inference, the
inference chain (symbolic, merged symbolic, batch 1, onnx, none), both batch paths at run time,
candidate identity, and every bad --input-shape as one line naming the value."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from coordinator.data import image_input_shapes
from coordinator.prepare import prepare_model
from coordinator.preprocess import Preprocess
from coordinator.quantize import build_candidate, spec_for
from coordinator.shapes import canonical_input_shapes, graph_inputs, parse_input_shape
from shared.errors import DataError, InvalidArgument, ModelError, QfarmError
from shared.runners.ort import OrtConfig, OrtRunner
from shared.settings import QuantSettings
from tests.models import make_classifier, make_dense_net

SIZE = 32


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return make_dense_net(tmp_path_factory.mktemp("dense") / "dense.onnx")


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)


def _reference(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def test_the_detector_failure_is_reproduced_and_fixed_from_the_data(dense, tmp_path, monkeypatch):
    """As on PP-OCR's detector: quant_pre_process stops with "Incomplete symbolic shape inference";
    prepared with the images' size, H and W are fixed, the batch stays symbolic (merged symbolic
    inference), and the prepared model runs batches with the original's answers."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)          # onnxruntime drops sym_shape_infer_temp.onnx (+ .data) here on this failure
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):
        quant_pre_process(str(dense), str(tmp_path / "pp.onnx"))
    assert (cwd / "sym_shape_infer_temp.onnx").exists()
    for litter in cwd.iterdir():
        litter.unlink()
    prepared = prepare_model(dense, tmp_path / "w", data_shapes=image_input_shapes(Preprocess(input_size=SIZE)))
    assert list(cwd.iterdir()) == []                            # preparation leaves the user's folder alone
    assert prepared.inputs[0].shape == (None, 3, SIZE, SIZE)
    assert prepared.outputs[0].shape == (None, 1, SIZE, SIZE)
    assert prepared.fixed_shapes == {"x": (None, None, SIZE, SIZE)}
    how = prepared.shape_inference
    assert how["method"] == "symbolic-merge" and how["batch"] == "symbolic" and how["num_untyped"] == 0
    assert how["tried"] == ["symbolic: ValueError: Incomplete symbolic shape inference"]
    x = _images(5)
    sess = ort.InferenceSession(str(prepared.path), providers=["CPUExecutionProvider"])
    batched = sess.run(None, {"x": x})[0]                       # one run of 5: the batch is still free
    np.testing.assert_allclose(batched, _reference(dense, x), atol=1e-5)
    assert "report" not in how and prepared.model_dict()["fixed_shapes"] == {"x": [None, None, SIZE, SIZE]}


def test_an_input_shape_fixes_the_batch_too_and_both_runtime_paths_agree(dense, tmp_path):
    """--input-shape x:1x3xSxS: the prepared model has batch 1 (the runner pads and runs one sample
    at a time), the data-fixed one keeps it free (the runner batches): same outputs; different
    prepared files, so different candidate ids."""
    data = image_input_shapes(Preprocess(input_size=SIZE))
    free = prepare_model(dense, tmp_path / "w", data_shapes=data)
    fixed = prepare_model(dense, tmp_path / "w", input_shapes=[f"x:1x3x{SIZE}x{SIZE}"], data_shapes=data)
    assert fixed.inputs[0].shape == (1, 3, SIZE, SIZE) and fixed.fixed_shapes == {"x": (1, 3, SIZE, SIZE)}
    assert fixed.shape_inference["method"] == "symbolic" and fixed.shape_inference["batch"] == "static"
    assert fixed.path != free.path and fixed.sha256 != free.sha256
    runner = OrtRunner(OrtConfig(batch_size=4, intra_op_threads=1))
    x = _images(7, seed=1)
    assert runner.batch_size(runner.session(free.path)) == (4, False)      # batches of 4 (then 3)
    assert runner.batch_size(runner.session(fixed.path)) == (1, True)      # one sample at a time
    out_free = runner.run(free.path, {"x": x})["prob"]
    out_fixed = runner.run(fixed.path, {"x": x})["prob"]
    np.testing.assert_allclose(out_free, out_fixed, atol=1e-5)
    np.testing.assert_allclose(out_free, _reference(dense, x), atol=1e-5)
    settings = QuantSettings(calibration_images=4)
    ids = {spec_for(p, settings, ()).id for p in (free, fixed)}
    assert len(ids) == 2
    for p in (free, fixed):                         # both quantize and run
        built = build_candidate(p, spec_for(p, settings, ()), tmp_path / "c", {"x": x[:4]}, tmp_path / "cache")
        quantized = runner.run(built.path, {"x": x})["prob"]
        assert quantized.shape == out_free.shape and np.isfinite(quantized).all()
        ops = {n.op_type for n in onnx.load(str(built.path)).graph.node}
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_the_prepared_file_is_reused_per_fixed_shape(dense, tmp_path):
    data = image_input_shapes(Preprocess(input_size=SIZE))
    first = prepare_model(dense, tmp_path / "w", data_shapes=data)
    stamp = first.path.stat().st_mtime_ns
    again = prepare_model(dense, tmp_path / "w", data_shapes=data)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp and again.sha256 == first.sha256
    other = prepare_model(dense, tmp_path / "w", data_shapes=image_input_shapes(Preprocess(input_size=2 * SIZE)))
    assert other.path != first.path and other.inputs[0].shape == (None, 3, 2 * SIZE, 2 * SIZE)


def test_a_static_model_keeps_its_plain_preparation(tmp_path):
    model = make_classifier(tmp_path / "c.onnx")
    prepared = prepare_model(model, tmp_path / "w", data_shapes=image_input_shapes(Preprocess(input_size=SIZE)))
    assert prepared.fixed_shapes == {} and prepared.shape_inference["method"] == "symbolic"
    assert prepared.shape_inference["batch"] == "symbolic" and prepared.input_shape == (None, 3, SIZE, SIZE)


def _model_with_free_rank(path):
    """A Conv fed by Reshape(x, target) with `target` an int64 input of unknown length: no shape
    inference can know the Conv input's rank until `target`'s length is fixed."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32) * 0.1, "w")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "target"], ["xr"], name="reshape"),
         helper.make_node("Conv", ["xr", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "free-rank", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8, 8]),
                      helper.make_tensor_value_info("target", TensorProto.INT64, ["L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c", "d"])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_a_model_that_cannot_be_typed_names_the_step_the_tensor_and_what_to_pass(tmp_path):
    model = _model_with_free_rank(tmp_path / "free.onnx")
    with pytest.raises(ModelError) as caught:
        prepare_model(model, tmp_path / "w")
    message = str(caught.value)
    assert message.startswith("prepare/shape-inference: shape inference cannot type tensor 'xr' (input of node "
                              "'conv') of free.onnx: target [?] is still symbolic (tried symbolic: "), message
    assert message.endswith("; pass --input-shape target:D0 with the sizes your data has") and "\n" not in message
    prepared = prepare_model(model, tmp_path / "w", input_shapes=["target:4"])
    assert prepared.fixed_shapes == {"target": (4,)} and prepared.shape_inference["num_untyped"] == 0


@pytest.mark.parametrize("value, needle", [
    ("x", "'x' is not NAME:DIMS"), ("x:", "'x:' is not NAME:DIMS"), (":1x3", "':1x3' is not NAME:DIMS"),
    ("x:1x3xax4", "'x:1x3xax4' is not NAME:DIMS"), ("x:1x3x32x32x", "is not NAME:DIMS"),
    ("x:1x0x32x32", "'x:1x0x32x32': dimension 0 must be a positive integer"),
    ("x:1x-3x32x32", "'x:1x-3x32x32': dimension -3 must be a positive integer"),
    ("x:1x3x99999999999x1", "above the limit max_tensor_dim")])
def test_a_malformed_input_shape_is_one_line_naming_it(value, needle):
    with pytest.raises(InvalidArgument) as caught:
        parse_input_shape(value)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_input_shape_values_are_normalised_and_names_may_hold_colons():
    assert parse_input_shape("input:0:1x224x224x3") == ("input:0", (1, 224, 224, 3))
    assert canonical_input_shapes(["y:1x4", " x:1x3x8x8 "]) == ("x:1x3x8x8", "y:1x4")
    with pytest.raises(InvalidArgument, match="names input 'x' twice \\('x:1x3' and 'x:1x4'\\)"):
        canonical_input_shapes(["x:1x3", "x:1x4"])


@pytest.mark.parametrize("value, error, needle", [
    ("y:1x3x32x32", InvalidArgument, "--input-shape y:1x3x32x32: dense.onnx has no input 'y' (inputs: x)"),
    ("X:1x3x32x32", InvalidArgument, "did you mean 'x'?"),
    ("x:1x3x32", InvalidArgument, "--input-shape x:1x3x32: input 'x' of dense.onnx has rank 4 [?, 3, ?, ?], not 3"),
    ("x:1x4x32x32", InvalidArgument, "--input-shape x:1x4x32x32: input 'x' of dense.onnx has the static "
                                     "dimension 3 at axis 1 [?, 3, ?, ?], not 4"),
])
def test_an_input_shape_that_does_not_fit_the_model_is_named(dense, tmp_path, value, error, needle):
    with pytest.raises(error) as caught:
        prepare_model(dense, tmp_path / "w", input_shapes=[value])
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert not list((tmp_path / "w").glob("prepared-*"))          # nothing half-written


def test_data_that_contradicts_a_fixed_input_shape_is_named(dense, tmp_path):
    """The data (images of 32) against the user's 64: the fixed shape wins, so the image check at
    the input names both."""
    with pytest.raises(QfarmError) as caught:
        prepare_model(dense, tmp_path / "w", input_shapes=["x:1x3x64x64"],
                      data_shapes=lambda inputs: {"x": (None, 3, 32, 32)})
    assert isinstance(caught.value, DataError) and "\n" not in str(caught.value)
    assert str(caught.value) == ("data: the data ([?, 3, 32, 32]) against --input-shape x:1x3x64x64: input 'x' of "
                                 "dense.onnx has the static dimension 64 at axis 2 [1, 3, 64, 64], not 32")


def test_a_bad_input_shape_on_the_command_line_is_one_line(dense, tmp_path):
    import subprocess
    import sys

    from tests.test_tune_core import ROOT

    images = tmp_path / "img"
    images.mkdir()
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "tune", str(dense), "--images", str(images),
                           "--out", str(tmp_path / "o"), "--input-shape", "x:1x3x0x32"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: input: --input-shape 'x:1x3x0x32': dimension 0 must be a positive integer"


DENSE_TUNE = ["--labels", "none", "--input-size", str(SIZE), "--calibration", "8", "--eval", "16", "--latency-runs",
              "2", "--ranking-images", "4", "--max-candidates", "2", "--threads", "1",
              "--no-reduce-range"]            # a pinned recipe: no recipe probe, the sweep's two candidates only


def test_a_dense_model_with_dynamic_hw_tunes_end_to_end(dense, tmp_path, images_dir):
    """The detector-shaped net through the whole local tune (ranking measures its 0-d weight too)."""
    from coordinator import cli

    out = tmp_path / "out"
    assert cli.main(["tune", str(dense), "--images", str(images_dir), "--out", str(out), *DENSE_TUNE]) == 0
    report = __import__("json").loads((out / "report.json").read_text())
    model = report["model"]
    assert model["fixed_shapes"] == {"x": [None, None, SIZE, SIZE]}
    assert model["shape_inference"]["method"] == "symbolic-merge" and model["shape_inference"]["batch"] == "symbolic"
    assert model["inputs"] == [{"name": "x", "shape": [None, 3, SIZE, SIZE], "dtype": "float32"}]
    assert model["outputs"] == ["prob"]
    assert len(report["candidates"]) == 2 and all(c["results"]["local"]["status"] == "ok" for c in report["candidates"])
    full = next(c for c in report["candidates"] if c["num_excluded"] == 0)["results"]["local"]
    assert full["task"] == "dense" and full.get("top1_agreement") is None          # a map has no top-1
    assert 0 <= full["iou"] <= 1 and full["output_sqnr_db"] > 0 and set(full["outputs"]) == {"prob"}
    assert {r["node"] for r in report["ranking"]} >= {"conv0", "conv1", "head"}


def test_on_the_farm_the_input_shape_travels_and_the_coordinator_prepares_with_it(dense, tmp_path, images_dir):
    from coordinator.cli import build_parser
    from coordinator.farm.commands import spec_from_tune_args
    from coordinator.testing import Farm

    args = build_parser().parse_args(["tune", str(dense), "--images", str(images_dir), "--out", str(tmp_path / "o"),
                                      *DENSE_TUNE, "--input-shape", f"x:1x3x{SIZE}x{SIZE}",
                                      "--coordinator", "127.0.0.1:1", "--devices", "cpu-a"])
    spec = spec_from_tune_args(args)
    assert spec.input_shape == (f"x:1x3x{SIZE}x{SIZE}",)
    assert spec.to_wire()["data"]["input_shapes"] == [f"x:1x3x{SIZE}x{SIZE}"]
    with Farm(tmp_path / "farm", agents={"cpu-a": "ort"}) as farm:
        report = farm.run_campaign(spec)
    assert report["model"]["fixed_shapes"] == {"x": [1, 3, SIZE, SIZE]}
    assert report["model"]["inputs"][0]["shape"] == [1, 3, SIZE, SIZE]
    assert report["candidates"] and all(c["results"]["cpu-a"]["status"] == "ok" for c in report["candidates"])


def test_a_three_input_audio_model_with_an_int64_scalar_prepares_both_ways(tmp_path):
    """Silero-VAD-shaped: input [batch, sequence], state [2, batch, 16], sr int64 []. The data fixes the
    sequence and leaves the batch free (runs batched, state's batch on axis 1); --input-shape fixes all."""
    from tests.models import make_vad_net

    model = make_vad_net(tmp_path / "vad.onnx")
    free = prepare_model(model, tmp_path / "w", data_shapes={"input": (None, 64)})
    assert [(i.name, i.dims, i.dtype) for i in free.inputs] == [
        ("input", (None, 64), "float32"), ("state", (2, None, 16), "float32"), ("sr", (), "int64")]
    assert free.fixed_shapes == {"input": (None, 64)} and free.shape_inference["batch"] == "symbolic"
    assert free.output_names == ("output", "stateN")
    rng = np.random.default_rng(0)
    feeds = {"input": rng.normal(size=(3, 64)).astype(np.float32),
             "state": rng.normal(size=(2, 3, 16)).astype(np.float32), "sr": np.array(16000, np.int64)}
    sess = ort.InferenceSession(str(free.path), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(sess.run(None, feeds), reference):
        np.testing.assert_allclose(got, want, atol=1e-6)
    fixed = prepare_model(model, tmp_path / "w", input_shapes=["input:1x64", "state:2x1x16"])
    assert [i.dims for i in fixed.inputs] == [(1, 64), (2, 1, 16), ()]
    assert fixed.shape_inference["batch"] == "static" and fixed.sha256 != free.sha256
    with pytest.raises(InvalidArgument, match="input 'state' of vad.onnx has the static dimension 2 at axis 0"):
        prepare_model(model, tmp_path / "w", input_shapes=["state:1x1x16"])
    with pytest.raises(InvalidArgument, match="input 'sr' of vad.onnx has rank 0 \\[\\], not 1"):
        prepare_model(model, tmp_path / "w", input_shapes=["sr:1"])


@pytest.mark.parametrize("inputs, needle", [
    ((("ids", (None, 3, 8, 8), "int64"),), "input 'ids' of m.onnx is int64; images are float32"),
    ((("x", (None, 8), "float32"),), "input 'x' of m.onnx has rank 2; images are a 4-D batch"),
    ((("a", (1, 3, 8, 8), "float32"), ("b", (1, 3, 8, 8), "float32")), "m.onnx has 2 inputs (a, b); an image folder "
                                                                       "feeds one")])
def test_what_an_image_folder_cannot_feed_is_named_before_preparing(inputs, needle):
    from coordinator.shapes import ModelInput

    with pytest.raises(DataError) as caught:
        image_input_shapes(Preprocess(input_size=8), "m.onnx")(tuple(ModelInput(*i) for i in inputs))
    assert str(caught.value).startswith(f"data: {needle}") and "--data (.npz)" in str(caught.value)


@pytest.mark.parametrize("batched", [False, True])
def test_a_tensor_dataset_fixes_the_dims_before_preparing(dense, tmp_path, batched):
    """--data: the samples' shape ([N, 3, S, S], or [N, 1, 3, S, S] with the batch dim) fixes H and W."""
    from coordinator.tensor_data import data_shapes

    x = _images(4)
    np.savez(tmp_path / "d.npz", x=x[:, None] if batched else x)
    assert data_shapes(tmp_path / "d.npz", graph_inputs(onnx.load(str(dense)))) == \
        {"x": (None, 3, SIZE, SIZE)}
    prepared = prepare_model(dense, tmp_path / "w", data_shapes=lambda inputs: data_shapes(tmp_path / "d.npz", inputs))
    assert prepared.inputs[0].dims == (None, 3, SIZE, SIZE) and prepared.fixed_shapes == {"x": (None, None, SIZE, SIZE)}
