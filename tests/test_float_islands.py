"""Layers kept in float between quantized ones: onnxruntime's CPU EP quantizes them again unless
its WeightBiasQuantization optimizer is disabled (a runtime option of the device, recorded in
every result) or the candidate pins them (the default build)."""
from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.runtimes import RuntimeOptions
from coordinator.cli import main as cli_main
from coordinator.data import Preprocess, list_images, load_batch, split
from coordinator.prepare import prepare_model
from coordinator.quantize import build_candidate, spec_for
from coordinator.recipes.float_islands import has_float_weights, pin_float_islands, runtime_graph
from shared.errors import InvalidArgument
from shared.runners.base import run_outputs
from shared.runners.ort import OrtConfig, OrtRunner
from shared.settings import QuantSettings
from coordinator.farm.spec import spec_from_local
from tests.farm_support import IMAGES, Farm
from tests.models import make_classifier

FAST = QuantSettings(reduce_range=False)
PLAIN = FAST.replace(recipe={"float_islands": "plain"})
NO_WBQ = ("WeightBiasQuantization",)


@pytest.fixture()
def prepared(tmp_path, images_dir):
    prep = prepare_model(make_classifier(tmp_path / "m.onnx"), tmp_path / "prep")
    return prep, {"input": load_batch(split(list_images(images_dir), 8, 8, 0)[0], Preprocess(input_size=32))}


def _mlp_model(path):
    """Gemm -> Relu -> Gemm -> Relu -> Gemm: the middle Gemm, kept in float, sits between a
    DequantizeLinear and a QuantizeLinear (a last layer feeding the graph output has no
    QuantizeLinear after it, so onnxruntime leaves it float anyway)."""
    rng = np.random.default_rng(0)
    sizes = [(16, 12), (16, 16), (10, 16)]
    inits, nodes, x = [], [], "input"
    for i, (n_out, n_in) in enumerate(sizes):
        inits += [numpy_helper.from_array(rng.normal(0, 0.5, (n_out, n_in)).astype(np.float32), f"fc{i}.w"),
                  numpy_helper.from_array(rng.normal(0, 0.1, n_out).astype(np.float32), f"fc{i}.b")]
        out = "logits" if i == len(sizes) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.w", f"fc{i}.b"], [out], name=f"fc{i}", transB=1))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"{out}r"], name=f"relu{i}"))
            x = f"{out}r"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


#: (model, the island kept in float, a layer that stays quantized)
ISLANDS = {"conv": ("conv1", "conv2"), "gemm": ("fc1", "fc2")}


@pytest.fixture(params=sorted(ISLANDS))
def island(request, tmp_path, images_dir):
    """A prepared model with its calibration feeds, the float island and a quantized layer."""
    if request.param == "conv":
        prep_cal = request.getfixturevalue("prepared")
    else:
        prep = prepare_model(_mlp_model(tmp_path / "mlp.onnx"), tmp_path / "prep-mlp")
        prep_cal = prep, {"input": np.random.default_rng(1).normal(size=(16, 12)).astype(np.float32)}
    return (prep_cal, *ISLANDS[request.param])


def _build(prepared, tmp_path, settings, excluded):
    prep, calibration = prepared
    return build_candidate(prep, spec_for(prep, settings, excluded), tmp_path / "c", calibration, tmp_path / "k")


def _outputs(path, feeds, **config) -> np.ndarray:
    return run_outputs(OrtRunner(OrtConfig(intra_op_threads=1, **config)), path, feeds)["logits"]


def test_a_plain_island_runs_quantized_unless_the_optimizer_is_disabled(island, tmp_path):
    """The excluded layer's output differs between onnxruntime's default session and one without
    WeightBiasQuantization; without it, the output equals the float computation (the same file
    with no graph optimization at all: DQ -> float layer -> Q as written)."""
    prepared, island, _ = island
    built = _build(prepared, tmp_path, PLAIN, (island,))
    feeds = {"input": prepared[1]["input"]}
    default = _outputs(built.path, feeds)
    without = _outputs(built.path, feeds, disabled_optimizers=NO_WBQ)
    as_written = _outputs(built.path, feeds, optimization="disable")
    assert not np.allclose(default, as_written, atol=1e-4)                 # quantized again: not float
    np.testing.assert_allclose(without, as_written, rtol=1e-5, atol=1e-5)  # float, as the file says
    assert not has_float_weights(runtime_graph(built.path), island)
    assert has_float_weights(runtime_graph(built.path, disabled_optimizers=NO_WBQ), island)


def test_a_pinned_island_is_float_under_default_session_options(island, tmp_path):
    prepared, island, quantized = island
    pinned = _build(prepared, tmp_path, FAST, (island,))
    plain = _build(prepared, tmp_path, PLAIN, (island,))
    assert pinned.id != plain.id
    feeds = {"input": prepared[1]["input"]}
    float_computation = _outputs(plain.path, feeds, optimization="disable")
    np.testing.assert_allclose(_outputs(pinned.path, feeds), float_computation, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_outputs(pinned.path, feeds, disabled_optimizers=NO_WBQ), float_computation,
                               rtol=1e-5, atol=1e-5)
    graph = runtime_graph(pinned.path)
    assert has_float_weights(graph, island)                                   # float where onnxruntime runs it
    assert not has_float_weights(graph, quantized)                            # the others stay int8
    model = onnx.load(str(pinned.path))
    onnx.checker.check_model(model, full_check=True)                       # a plain ONNX model
    dq = next(n for n in model.graph.node if n.output[0] == next(m for m in model.graph.node
                                                                  if m.name == island).input[0])
    assert dq.op_type == "DequantizeLinear" and helper.get_attribute_value(dq.attribute[0]) == 1
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) == \
        sum(n.op_type == "DequantizeLinear" for n in onnx.load(str(plain.path)).graph.node)   # replaced, not added


def test_pinning_leaves_candidates_without_islands_and_their_ids_alone(prepared, tmp_path):
    prep, _ = prepared
    assert spec_for(prep, FAST, ()).id == spec_for(prep, FAST.replace(recipe={"float_islands": "pinned"}), ()).id
    full = _build(prepared, tmp_path, FAST, ())
    assert onnx.load(str(full.path)) == onnx.load(str(_build(prepared, tmp_path, PLAIN, ()).path))
    with pytest.raises(InvalidArgument, match="float_islands='loose'"):
        QuantSettings(recipe={"float_islands": "loose"})


def _one_channel_model(path):
    """Conv(3 -> 1) -> Relu -> Conv(1 -> 4) -> GlobalAveragePool -> Flatten: the second conv's input
    has one channel, where a per-channel scale is a per-tensor one."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (1, 3, 3, 3)).astype(np.float32), "a.w"),
             numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "b.w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b.b")]
    nodes = [helper.make_node("Conv", ["input", "a.w"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"], name="a_relu"),
             helper.make_node("Conv", ["ar", "b.w", "b.b"], ["b"], name="b", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"], name="b_relu"),
             helper.make_node("GlobalAveragePool", ["br"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["logits"], name="flat")]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_an_island_that_cannot_be_pinned_is_named_with_the_reason(tmp_path, caplog):
    prep = prepare_model(_one_channel_model(tmp_path / "one.onnx"), tmp_path / "prep")
    calibration = {"input": np.random.default_rng(1).normal(size=(8, 3, 8, 8)).astype(np.float32)}
    with caplog.at_level(logging.WARNING, logger="coordinator.quantize"):
        built = build_candidate(prep, spec_for(prep, FAST, ("b",)), tmp_path / "c", calibration, tmp_path / "k")
    assert "float node b is not pinned (its input has 1 channel(s)" in caplog.text
    _, report = pin_float_islands(onnx.load(str(built.path)), ["b"])
    assert report.pinned == [] and report.unpinned[0][0] == "b"


def test_runtime_options_are_checked_and_recorded(tmp_path):
    info = OrtRunner(OrtConfig(disabled_optimizers=("WeightBiasQuantization",))).info()
    assert info.options.endswith("disabled_optimizers=WeightBiasQuantization")
    assert "disabled_optimizers" not in OrtRunner(OrtConfig()).info().options
    for bad in ("Weight Bias", "1stOptimizer", "x" * 129):
        with pytest.raises(InvalidArgument, match="--ort-disable-optimizers"):
            OrtConfig(disabled_optimizers=(bad,))
    options = RuntimeOptions(disabled_optimizers=("WeightBiasQuantization", "WeightBiasQuantization"))
    assert RuntimeOptions.from_dict(options.to_dict()) == options and options.disabled_optimizers == NO_WBQ
    with pytest.raises(InvalidArgument, match="applies to --runtime ort"):
        RuntimeOptions(runtime="tvm", disabled_optimizers=NO_WBQ)


def test_tune_records_the_runtime_options_and_says_what_the_recommendation_was_measured_with(tmp_path, capsys):
    model = make_classifier(tmp_path / "m.onnx")
    out = tmp_path / "out"
    flags = ["tune", str(model), "--images", str(IMAGES), "--out", str(out), "--input-size", "32", "--calibration", "8",
             "--eval", "8", "--max-candidates", "2", "--latency-runs", "2", "--threads", "1", "--no-latency-lock",
             "--float-islands", "plain", "--ort-disable-optimizers", "WeightBiasQuantization"]
    assert cli_main(flags) == 0
    report = json.loads((out / "report.json").read_text())
    options = {c["results"]["local"]["runtime"]["options"] for c in report["candidates"]}
    assert options == {"graph_optimization=all threads=1 disabled_optimizers=WeightBiasQuantization"}
    assert {c["settings"]["recipe"].get("float_islands") for c in report["candidates"]} == {"plain"}
    summary = report["pareto"]["per_device"]["local"]
    assert summary["measured_with"].endswith("disabled_optimizers=WeightBiasQuantization")
    said = f"{summary['recommended']} on local was" if summary["recommended"] else "the candidates on local were"
    assert f"{said} measured with onnxruntime" in capsys.readouterr().out
    farm = flags[:-2] + ["--ort-disable-optimizers", "WeightBiasQuantization", "--coordinator", "127.0.0.1:1",
                         "--devices", "cpu"]
    assert cli_main(farm[:5] + [str(tmp_path / "farm")] + farm[6:]) == 2
    assert "on the farm each device runs as its agent was started" in capsys.readouterr().err


def test_a_farm_agent_runs_with_its_own_runtime_options(tmp_path):
    model = make_classifier(tmp_path / "m.onnx")
    raw = {"name": "islands", "devices": ["cpu-a"], "models": [{"path": str(model), "excludes": ["conv1"]}],
           "data": {"images": str(IMAGES), "calibration": 8, "eval": 8, "latency_runs": 2},
           "preprocess": {"input_size": 32}, "quantization": {"recipe": {"float_islands": "plain"}},
           "strategy": {"max_candidates": 1}}
    with Farm(tmp_path / "farm") as farm:
        farm.add_agent("cpu-a", ort_disable_optimizers=NO_WBQ)
        report = farm.run_campaign(spec_from_local(raw, "test", tmp_path))
    results = [c["results"]["cpu-a"] for c in report["candidates"]]
    assert results and {r["runtime"]["options"] for r in results} == \
        {"graph_optimization=all threads=1 disabled_optimizers=WeightBiasQuantization"}
    assert report["pareto"]["per_device"]["cpu-a"]["measured_with"].endswith("WeightBiasQuantization")
