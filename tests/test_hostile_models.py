"""Malformed and hostile model files: each gives a clear QfarmError naming the problem, never a
crash, a hang or a file written outside the work dir."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from coordinator.prepare import prepare_model
from shared.errors import QfarmError
from shared.limits import Limits
from tests.models import make_classifier


def _corpus(base: Path) -> list[tuple[str, Path]]:
    good = make_classifier(base / "good.onnx")
    raw = good.read_bytes()
    rng = np.random.default_rng(7)
    cases: list[tuple[str, Path]] = []

    def add(name: str, data: bytes) -> None:
        path = base / f"{name}.onnx"
        path.write_bytes(data)
        cases.append((name, path))

    for i, cut in enumerate(np.linspace(1, len(raw) - 1, 60).astype(int)):
        add(f"truncated-{i}", raw[:cut])
    for i in range(60):
        add(f"random-{i}", rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes())
    for i in range(30):  # flipped bytes inside a real model
        data = bytearray(raw)
        for pos in rng.integers(0, len(data), 8):
            data[pos] ^= 0xFF
        add(f"bitflip-{i}", bytes(data))
    add("empty", b"")
    add("tensor-not-model", numpy_helper.from_array(np.ones(3, np.float32)).SerializeToString())
    add("graph-not-model", helper.make_graph([], "g", [], []).SerializeToString())

    def model_case(name: str, nodes, inputs, outputs, inits=(), opset=17, domain_ops=()):
        graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *domain_ops])
        path = base / f"{name}.onnx"
        onnx.save(model, str(path))
        cases.append((name, path))

    x4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    model_case("no-inputs", [helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(
        np.zeros((1, 3, 8, 8), np.float32)))], [], [y])
    model_case("no-outputs", [helper.make_node("Relu", ["x"], ["y"])], [x4], [])
    model_case("two-inputs", [helper.make_node("Add", ["x", "x2"], ["y"])],
               [x4, helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 3, 8, 8])], [y])
    model_case("int-input", [helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3, 8, 8])], [y])
    model_case("rank2-input", [helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model_case("negative-dim", [helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, -3, 8, 8])], [y])
    model_case("huge-dim", [helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1 << 40, 8])], [y])
    model_case("cyclic", [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                          helper.make_node("Relu", ["b"], ["y"])], [x4], [y])
    model_case("unknown-op", [helper.make_node("FrobnicateConv", ["x"], ["y"])], [x4], [y])
    model_case("unknown-domain", [helper.make_node("Conv", ["x"], ["y"], domain="evil.corp")], [x4], [y],
               domain_ops=[helper.make_opsetid("evil.corp", 1)])
    model_case("dangling-input", [helper.make_node("Add", ["x", "nowhere"], ["y"])], [x4], [y])
    model_case("bad-opset", [helper.make_node("Relu", ["x"], ["y"])], [x4], [y], opset=999)
    model_case("shape-mismatch", [helper.make_node("Conv", ["x", "w"], ["y"])], [x4], [y],
               inits=[numpy_helper.from_array(np.ones((3, 5, 3, 3), np.float32), "w")])

    # external data pointing outside the model's folder
    for i, location in enumerate(["../secret.bin", "/etc/passwd", "sub/../../x.bin", "link.bin", "missing.bin"]):
        folder = base / f"ext{i}"
        folder.mkdir()
        (base / "secret.bin").write_bytes(b"\0" * 4 * 27)
        if location == "link.bin":
            os.symlink(base / "secret.bin", folder / "link.bin")
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 1, 3, 3])
        w.data_location = TensorProto.EXTERNAL
        entry = w.external_data.add()
        entry.key, entry.value = "location", location
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], group=3, pads=[1, 1, 1, 1])],
                                  "ext", [x4], [y], initializer=[w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        path = folder / "model.onnx"
        path.write_bytes(model.SerializeToString())
        cases.append((f"external-{location}", path))
    return cases


def test_corpus_of_malformed_models(tmp_path):
    corpus = _corpus(tmp_path)
    assert len(corpus) >= 160
    outcomes = {}
    for name, path in corpus:
        work = tmp_path / "work" / name
        before = set(tmp_path.rglob("*"))
        try:
            prepare_model(path, work)
        except QfarmError as exc:  # the only acceptable failure: typed, one line, naming the problem
            message = str(exc)
            assert message and "\n" not in message, name
            outcomes[name] = message
        else:  # a flipped byte inside weight data still makes a valid model; so do several or non-image
            assert name.startswith("bitflip-") or name in VALID_NON_IMAGE, f"{name} was accepted"   # inputs
            outcomes[name] = "accepted"
        written = set(tmp_path.rglob("*")) - before
        allowed = tmp_path / "work"
        assert all(p == allowed or allowed in p.parents for p in written), (name, written)
    assert "outside its folder" in outcomes["external-../secret.bin"]
    assert "outside its folder" in outcomes["external-/etc/passwd"]
    assert "outside its folder" in outcomes["external-link.bin"]
    assert "does not exist" in outcomes["external-missing.bin"]
    assert "negative dimension" in outcomes["negative-dim"]
    assert "max_tensor_dim" in outcomes["huge-dim"]
    assert outcomes["two-inputs"] == outcomes["rank2-input"] == "accepted"     # fed from a tensor dataset
    assert "is not an ONNX model" in outcomes["random-0"] or "fails onnx.checker" in outcomes["random-0"]


#: valid models that an image folder cannot feed (refused at the data step, see test_tensor_data.py)
VALID_NON_IMAGE = ("two-inputs", "rank2-input")


def test_limits_are_named(tmp_path):
    model = make_classifier(tmp_path / "m.onnx")
    with pytest.raises(QfarmError, match="max_nodes=3"):
        prepare_model(model, tmp_path / "w", Limits(max_nodes=3))
    with pytest.raises(QfarmError, match="max_model_bytes=1000"):
        prepare_model(model, tmp_path / "w", Limits(max_model_bytes=1000))
