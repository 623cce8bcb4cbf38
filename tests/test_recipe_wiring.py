"""Recipes chosen in the settings reach the built candidates."""
from __future__ import annotations

import json

import onnx
import pytest

from coordinator import cli
from coordinator.data import Preprocess, list_images, load_batch, split
from coordinator.prepare import prepare_model
from coordinator.quantize import build_candidate, spec_for
from shared.errors import InvalidArgument
from shared.settings import QuantSettings
from tests.models import make_classifier

TUNE = ["--input-size", "32", "--calibration", "8", "--eval", "16", "--latency-runs", "1", "--ranking-images", "4"]


def test_keep_float_presets_and_cle_in_every_candidate(tmp_path, images_dir):
    model = make_classifier(tmp_path / "m.onnx")
    out = tmp_path / "out"
    assert cli.main(["tune", str(model), "--images", str(images_dir), "--out", str(out), *TUNE,
                     "--keep-float", "first-last", "--cle", "on", "--max-candidates", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["recipe"] == {"cle": "on", "keep_float": "first-last"}
    assert report["model"]["prepared_path"]
    for cand in report["candidates"]:
        assert {"conv0", "fc"} <= set(cand["excluded_nodes"])
        assert cand["results"]["local"]["status"] == "ok"
    assert len(list((out / "prepared").glob("cle-on-*.onnx"))) == 1


def test_int16_ladder_candidate_has_16_bit_activations(tmp_path, images_dir):
    model = make_classifier(tmp_path / "m.onnx")
    prepared = prepare_model(model, tmp_path / "prep")
    cal = {"input": load_batch(split(list_images(images_dir), 8, 8, 0)[0], Preprocess(input_size=32))}
    spec = spec_for(prepared, QuantSettings(), (), int16_nodes=("conv1",))
    plain = spec_for(prepared, QuantSettings(), ())
    assert spec.id != plain.id
    built = build_candidate(prepared, spec, tmp_path / "c", cal, tmp_path / "k")
    q = onnx.load(str(built.path))
    inits = {i.name: i for i in q.graph.initializer}
    zp_types = {inits[n.input[2]].data_type for n in q.graph.node
                if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits}
    assert onnx.TensorProto.UINT16 in zp_types and onnx.TensorProto.UINT8 in zp_types


def test_unknown_recipe_is_named():
    with pytest.raises(InvalidArgument, match="unknown recipe 'smoothquant'"):
        QuantSettings(recipe={"smoothquant": "on"})
    with pytest.raises(InvalidArgument, match="'middle'"):
        QuantSettings(recipe={"keep_float": "first,middle"})
