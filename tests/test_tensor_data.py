"""Tensor datasets (--data): a folder of .npz files or one .npz/.npy, multi-input models with int64
inputs tuned locally and on the farm, and every bad dataset as a one-line error that leaves no
report behind."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import build_parser
from coordinator.cli import main as cli_main
from coordinator.farm.commands import spec_from_tune_args
from coordinator.farm.spec import spec_from_local, spec_from_wire
from coordinator.prepare import ModelInput
from coordinator.tensor_data import list_tensors, load_feeds
from shared.errors import DataError, InvalidArgument, ResourceExhausted
from shared.feeds import save_npz
from tests.farm_support import Farm
from tests.models import make_segmenter, make_token_classifier, token_samples

INPUTS = (ModelInput("input_ids", (None, 6), "int64"), ModelInput("attention_mask", (None, 6), "int64"))
TUNE = ["--calibration", "8", "--eval", "12", "--max-candidates", "2", "--ranking-images", "4",
        "--latency-runs", "3", "--threads", "1", "--no-latency-lock"]


def _folder(root: Path, samples: dict[str, np.ndarray], count: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        save_npz(root / f"s{i:03d}.npz", {name: array[i] for name, array in samples.items()})
    return root


def test_a_folder_one_npz_and_one_npy_give_the_same_feeds(tmp_path):
    samples = token_samples(10)
    folder = list_tensors(_folder(tmp_path / "folder", samples, 10), INPUTS)
    save_npz(tmp_path / "all.npz", samples)
    single = list_tensors(tmp_path / "all.npz", INPUTS)
    assert len(folder) == len(single) == 10
    for tensors in (folder.subset([1, 4, 7]), single.subset([1, 4, 7])):
        feeds = load_feeds(tensors)
        assert {k: v.dtype for k, v in feeds.items()} == {"input_ids": np.int64, "attention_mask": np.int64}
        np.testing.assert_array_equal(feeds["input_ids"], samples["input_ids"][[1, 4, 7]])
    np.save(tmp_path / "ids.npy", samples["input_ids"])
    one = list_tensors(tmp_path / "ids.npy", INPUTS[:1])
    np.testing.assert_array_equal(load_feeds(one.subset([2]))["input_ids"], samples["input_ids"][[2]])
    with_batch_dim = _folder(tmp_path / "batched", {k: v[:, None] for k, v in samples.items()}, 3)
    assert load_feeds(list_tensors(with_batch_dim, INPUTS))["input_ids"].shape == (3, 6)   # [1, 6] files too
    save_npz(tmp_path / "runs.npz", {k: v[:, None] for k, v in samples.items()})   # [N, 1, 6]: one run's feed each
    np.testing.assert_array_equal(load_feeds(list_tensors(tmp_path / "runs.npz", INPUTS).subset([3]))["input_ids"],
                                  samples["input_ids"][[3]])


def _bad_datasets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    s = token_samples(6)
    cases = {}
    cases["missing"] = (_folder(tmp_path / "missing", {"input_ids": s["input_ids"]}, 3),
                        "s000.npz has no array 'attention_mask'")
    cases["extra"] = (_folder(tmp_path / "extra", {**s, "token_type_ids": s["input_ids"]}, 3),
                      "array 'token_type_ids' in s000.npz is not an input of the model")
    cases["dtype"] = (_folder(tmp_path / "dtype", {**s, "input_ids": s["input_ids"].astype(np.int32)}, 3),
                      "array 'input_ids' in s000.npz is int32; the model's input 'input_ids' expects int64")
    cases["shape"] = (_folder(tmp_path / "shape", {**s, "attention_mask": s["attention_mask"][:, :5]}, 3),
                      "array 'attention_mask' in s000.npz has samples of shape [5]; the model's input "
                      "'attention_mask' is [?, 6] (dim 1 must be 6)")
    ragged_files = _folder(tmp_path / "ragged-files", s, 2)
    save_npz(ragged_files / "s002.npz", {"input_ids": np.zeros(4, np.int64), "attention_mask": np.zeros(6, np.int64)})
    cases["ragged-files"] = (ragged_files, "has samples of shape [4]")
    save_npz(tmp_path / "ragged.npz", {**s, "attention_mask": s["attention_mask"][:5]})
    cases["ragged-axis"] = (tmp_path / "ragged.npz", "different sample counts (input_ids: 6, attention_mask: 5)")
    np.save(tmp_path / "one.npy", s["input_ids"])
    cases["npy-multi"] = (tmp_path / "one.npy", "one.npy is a single .npy array but the model has 2 inputs")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    cases["not-npz"] = (tmp_path / "junk.npz", "cannot read")
    with zipfile.ZipFile(tmp_path / "objects.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array([[1, 2], [3]], dtype=object), allow_pickle=True)
        z.writestr("input_ids.npy", buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, s["attention_mask"])
        z.writestr("attention_mask.npy", buf.getvalue())
    cases["object"] = (tmp_path / "objects.npz", "array 'input_ids' in objects.npz is an object array")
    (tmp_path / "empty").mkdir()
    cases["empty"] = (tmp_path / "empty", "has no .npz files")
    return cases


def test_an_array_that_would_inflate_past_the_limit_is_refused_from_its_header(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 20, 1 << 20, 6)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as z:
        z.writestr("input_ids.npy", header.getvalue())
        z.writestr("attention_mask.npy", header.getvalue())
    with pytest.raises(ResourceExhausted, match="array 'input_ids' in bomb.npz .*max_artifact_bytes"):
        list_tensors(tmp_path / "bomb.npz", INPUTS)


def test_a_scalar_model_input_is_refused_by_name(tmp_path):
    save_npz(tmp_path / "audio.npz", {"input": np.zeros((4, 16), np.float32), "sr": np.full(4, 16000, np.int64)})
    inputs = (ModelInput("input", (None, 16), "float32"), ModelInput("sr", (), "int64"))
    with pytest.raises(DataError, match="the model's input 'sr' is a scalar"):
        list_tensors(tmp_path / "audio.npz", inputs)


def test_each_bad_dataset_is_a_one_line_error_naming_the_value(tmp_path):
    for name, (path, needle) in _bad_datasets(tmp_path).items():
        with pytest.raises(DataError) as info:
            list_tensors(path, INPUTS)
        assert needle in str(info.value), (name, str(info.value))
        assert "\n" not in str(info.value)


def test_tune_with_a_bad_dataset_stops_before_writing_a_report(tmp_path, capsys):
    model = make_token_classifier(tmp_path / "tokens.onnx")
    for name, (path, needle) in _bad_datasets(tmp_path / "bad").items():
        out = tmp_path / f"out-{name}"
        assert cli_main(["tune", str(model), "--data", str(path), "--out", str(out), *TUNE]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: data: ") and needle in err and "\n" not in err, (name, err)
        assert not (out / "report.json").exists() and not list(out.rglob("*.tmp*")), name


def test_bad_flags_around_data_are_one_line_errors(tmp_path, capsys, images_dir):
    model = make_token_classifier(tmp_path / "tokens.onnx")
    save_npz(tmp_path / "d.npz", token_samples(30))
    cases = {
        ("--images", str(images_dir), "--data", str(tmp_path / "d.npz")): "exactly one of them",
        ("--images", str(images_dir)): "has 2 inputs (input_ids, attention_mask); an image folder feeds one",
        ("--data", str(tmp_path / "d.npz"), "--metric", "no_such_module:f"): "cannot import module 'no_such_module'",
        ("--data", str(tmp_path / "d.npz"), "--task", "dense"): "--task dense needs an output with spatial dims",
        ("--data", str(tmp_path / "d.npz"), "--max-top1-drop", "0.01"): "--max-top1-drop needs labelled images",
    }
    for extra, needle in cases.items():
        out = tmp_path / "out"
        assert cli_main(["tune", str(model), "--out", str(out), *extra, *TUNE]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, (extra, err)
        assert not (out / "report.json").exists()


def test_multi_input_int64_model_tunes_locally_with_a_user_metric(tmp_path, capsys):
    model = make_token_classifier(tmp_path / "tokens.onnx")
    data = _folder(tmp_path / "samples", token_samples(24), 24)
    out = tmp_path / "out"
    assert cli_main(["tune", str(model), "--data", str(data), "--out", str(out), *TUNE,
                     "--metric", "tests.metric_plugins:mean_abs_error"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [i["dtype"] for i in report["model"]["inputs"]] == ["int64", "int64"]
    assert report["data"]["tensors"] == str(data) and report["data"]["eval"] == 12
    assert report["fp32"]["local"]["task"] == "classification"
    assert 0.5 < report["fp32"]["local"]["latency_ratio_vs_fp32"] < 2.0
    results = [c["results"]["local"] for c in report["candidates"]]
    assert results and all(r["status"] == "ok" for r in results)
    for r in results:
        assert set(r["outputs"]) == {"logits", "pooled"} and "kl" in r["outputs"]["logits"]
        assert "kl" not in r["outputs"]["pooled"] and r["kl_divergence"] == r["outputs"]["logits"]["kl"]
        assert -200 <= r["output_sqnr_db"] <= 200 and 0 < r["cosine"] <= 1 and 0 <= r["top1_agreement"] <= 1
        assert set(r["user_metrics"]) == {"mae_logits", "mae_pooled", "outputs"} and r["user_metrics"]["outputs"] == 2
        assert r["latency_ratio_p10"] <= r["latency_ratio_vs_fp32"] <= r["latency_ratio_p90"]
    assert "SQNR dB" in capsys.readouterr().out


def test_dense_model_gets_iou_and_a_fidelity_front(tmp_path):
    model = make_segmenter(tmp_path / "seg.onnx")
    images = np.random.default_rng(0).uniform(-1, 1, (20, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    out = tmp_path / "out"
    # --allow-slower: whether INT8 pays on this tiny model and machine is not what this test is about
    assert cli_main(["tune", str(model), "--data", str(tmp_path / "images.npy"), "--out", str(out), *TUNE,
                     "--allow-slower"]) == 0
    report = json.loads((out / "report.json").read_text())
    results = [c["results"]["local"] for c in report["candidates"]]
    assert all(r["task"] == "dense" and 0 <= r["iou"] <= 1 and "top1_agreement" not in r for r in results)
    assert report["pareto"]["objectives"] == ["fidelity", "size_bytes", "latency"]   # agreement does not apply
    assert report["pareto"]["recommended"] in {c["id"] for c in report["candidates"]}


def test_spec_tensors_travel_as_files_and_parse_back(tmp_path):
    model = make_token_classifier(tmp_path / "tokens.onnx")
    folder = _folder(tmp_path / "samples", token_samples(4), 4)
    save_npz(tmp_path / "all.npz", token_samples(4))
    for source, is_folder, count in ((folder, True, 4), (tmp_path / "all.npz", False, 1)):
        raw = {"devices": ["cpu"], "models": [{"path": str(model)}],
               "data": {"tensors": str(source), "task": "generic"}}
        spec = spec_from_local(raw, "test", tmp_path)
        assert spec.tensors.folder is is_folder and len(spec.tensors.files) == count and spec.task == "generic"
        assert spec_from_wire(spec.wire_json()).wire_json() == spec.wire_json()
        assert set(f.sha256 for f in spec.tensors.files) <= {f.sha256 for f in spec.files()}
    both = {"devices": ["cpu"], "models": [{"path": str(model)}],
            "data": {"tensors": str(folder), "images": str(folder), "calibration_tensors": "nowhere"}}
    with pytest.raises(InvalidArgument) as info:
        spec_from_local(both, "test", tmp_path)
    assert "data: give the samples as data.images" in str(info.value)
    assert "data.calibration_tensors:" in str(info.value)


def test_tune_on_the_farm_sends_the_tensor_dataset_as_files(tmp_path):
    model = make_token_classifier(tmp_path / "tokens.onnx")
    folder = _folder(tmp_path / "samples", token_samples(4), 4)
    args = build_parser().parse_args(["tune", str(model), "--data", str(folder), "--calibration-data", str(folder),
                                      "--out", str(tmp_path / "o"), "--task", "generic", "--coordinator",
                                      "127.0.0.1:1", "--devices", "cpu"])
    spec = spec_from_tune_args(args)
    assert spec.images == () and spec.tensors.folder and len(spec.tensors.files) == 4
    assert spec.calibration_tensors == spec.tensors and spec.task == "generic"


def test_multi_input_int64_model_on_the_farm_with_an_agent_side_metric(tmp_path):
    model = make_token_classifier(tmp_path / "tokens.onnx")
    data = _folder(tmp_path / "samples", token_samples(24), 24)
    raw = {"name": "tokens", "devices": ["cpu-a"], "models": [{"path": str(model)}],
           "data": {"tensors": str(data), "calibration": 8, "eval": 12, "latency_runs": 3},
           "quantization": {"calibration_images": 8},
           "strategy": {"max_candidates": 2, "ranking_images": 4, "metric": "tests.metric_plugins:mean_abs_error"}}
    spec = spec_from_local(raw, "test", tmp_path)
    with Farm(tmp_path / "farm") as farm:
        farm.add_agent("cpu-a", allowed_metrics=("tests.metric_plugins:mean_abs_error",))
        report = farm.run_campaign(spec)
    assert report["fp32"]["cpu-a"]["task"] == "classification"
    results = [c["results"]["cpu-a"] for c in report["candidates"]]
    assert results and all(r["status"] == "ok" for r in results)
    for r in results:
        assert set(r["outputs"]) == {"logits", "pooled"} and r["user_metrics"]["outputs"] == 2
        assert r["fp32_latency_ms_p50"] > 0 and r["latency_ratio_p10"] <= r["latency_ratio_vs_fp32"]
        assert r["num_images"] == 12 and r["runtime"]["runtime"] == "onnxruntime"


def test_a_farm_agent_refuses_a_metric_it_was_not_allowed(tmp_path):
    model = make_token_classifier(tmp_path / "tokens.onnx")
    save_npz(tmp_path / "all.npz", token_samples(20))
    raw = {"name": "refused", "devices": ["cpu-a"], "models": [{"path": str(model)}],
           "data": {"tensors": str(tmp_path / "all.npz"), "calibration": 4, "eval": 8, "latency_runs": 1},
           "quantization": {"calibration_images": 4},
           "strategy": {"max_candidates": 1, "metric": "tests.metric_plugins:mean_abs_error"}}
    with Farm(tmp_path / "farm", agents={"cpu-a": "ort"}) as farm, farm.client() as client:
        campaign = client.submit(spec_from_local(raw, "test", tmp_path))
        final = client.wait(campaign, poll_s=0.2, timeout_s=120)
    assert final.state == "failed"
    assert "metric tests.metric_plugins:mean_abs_error is not allowed on agent" in final.message
    assert "--allow-metric" in final.message
