"""Campaign specs: every bad field named at once, a canonical wire form, stable work keys, and the
example spec in deploy/ stays valid."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from coordinator.cli import main as coordinator_main
from coordinator.farm.spec import load_spec_file, spec_from_local, spec_from_wire
from shared.errors import InvalidArgument
from tests.farm_support import IMAGES, ROOT
from tests.models import make_classifier

EXAMPLE = ROOT / "deploy" / "campaign.example.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_every_bad_field_is_named(tmp_path):
    make_classifier(tmp_path / "m.onnx")
    path = _write(tmp_path, f"""
devices = ["cpu-a", "cpu a"]
colour = "blue"
objectives = ["speed"]
[[models]]
path = "missing.onnx"
[data]
images = "{IMAGES}"
eval = 0
labels = "maybe"
[quantization]
mode = "fast"
[strategy]
max_candidates = -2
max_agreement_drop = 3
probe_recipes = ["u8u8", "fp4"]
blame_crashes = "yes"
""")
    with pytest.raises(InvalidArgument) as info:
        load_spec_file(path)
    text = str(info.value)
    for needle in ("devices: 'cpu a'", "colour: unknown field", "objectives: 'speed'", "models[0].path:",
                   "missing.onnx does not exist", "data.eval: 0", "data.labels: 'maybe'", "mode='fast'",
                   "strategy.max_candidates: -2", "strategy.max_agreement_drop: 3",
                   "strategy.probe_recipes: 'fp4' is not one of u8s8", "strategy.blame_crashes: 'yes'"):
        assert needle in text, needle
    assert "11 bad field(s)" in text


def test_wire_form_round_trips_and_keys_follow_content(tmp_path):
    model = make_classifier(tmp_path / "m.onnx")
    raw = {"devices": ["cpu-a", "mali-g68"], "models": [{"path": str(model)}],
           "data": {"images": str(IMAGES), "eval": 8, "calibration": 4}, "quantization": {"per_channel": False}}
    spec = spec_from_local(raw, "test", tmp_path)
    assert spec.models[0].name == "m" and len(spec.images) == 100 and spec.images[0].local is not None
    wire = spec.wire_json()
    again = spec_from_wire(wire)
    assert again == spec and again.wire_json() == wire
    assert all(f.local is None for f in again.files())
    assert "/" not in json.dumps([f["name"] for f in json.loads(wire)["data"]["images"]])
    renamed = spec_from_local({**raw, "name": "other name", "device_timeout_s": 5}, "test", tmp_path)
    assert renamed.work_key(renamed.models[0]) == spec.work_key(spec.models[0])      # same results
    changed = spec_from_local({**raw, "quantization": {"per_channel": True}}, "test", tmp_path)
    assert changed.work_key(changed.models[0]) != spec.work_key(spec.models[0])
    probing = spec_from_local({**raw, "strategy": {"probe_recipes": ["u8u8", "cle"], "blame_crashes": False}},
                              "test", tmp_path)
    assert probing.probe_recipes == ("u8u8", "cle") and probing.blame_crashes is False
    assert spec_from_wire(probing.wire_json()) == probing
    assert probing.work_key(probing.models[0]) != spec.work_key(spec.models[0])


def test_wire_refuses_path_like_names_and_bad_hashes():
    good = {"name": "x.jpg", "sha256": "a" * 64, "size_bytes": 1}
    raw = {"devices": ["cpu"], "models": [{"file": {**good, "name": "../../etc/passwd"}}],
           "data": {"images": [{**good, "sha256": "nothex"}]}}
    with pytest.raises(InvalidArgument) as info:
        spec_from_wire(json.dumps(raw))
    assert "'../../etc/passwd' must be a plain file name" in str(info.value)
    assert "sha256 'nothex'" in str(info.value)


def test_example_spec_in_deploy_is_valid(tmp_path):
    raw = tomllib.loads(EXAMPLE.read_text())
    model = make_classifier(tmp_path / "m.onnx")
    raw["models"][0]["path"] = str(model)                 # the real model is not part of the repository
    spec = spec_from_local(raw, str(EXAMPLE), EXAMPLE.parent)
    assert spec.devices == ("cpu-x86", "mali-g68") and spec.max_candidates == 8
    assert spec.settings().per_channel is True


def test_submit_with_a_bad_spec_is_one_line_and_exit_code_2(tmp_path, capsys):
    path = _write(tmp_path, "devices = []\n")
    code = coordinator_main(["submit", str(path), "--coordinator", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: spec: campaign spec") and "devices" in err and "models" in err
    assert len(err.splitlines()) == 1


def test_tune_arguments_become_the_same_settings_on_the_farm(tmp_path):
    from coordinator.cli import build_parser, settings_from_args
    from coordinator.farm.commands import spec_from_tune_args

    model = make_classifier(tmp_path / "m.onnx")
    args = build_parser().parse_args(["tune", str(model), "--images", str(IMAGES), "--out", str(tmp_path / "o"),
                                      "--per-tensor", "--calibration", "8", "--eval", "12", "--input-size", "32",
                                      "--coordinator", "127.0.0.1:1", "--devices", "cpu-a, mali-g68"])
    spec = spec_from_tune_args(args)
    assert spec.devices == ("cpu-a", "mali-g68")
    assert spec.settings() == settings_from_args(args)
    assert (spec.n_calibration, spec.n_eval, spec.preprocess["input_size"]) == (8, 12, 32)
