"""Whole-feed tensor datasets: each sample is one complete feed, every input exactly as the model
takes it (a 0-d int64 sample rate, a recurrent state with its batch on axis 1), run one inference
per sample, calibrated the same way, locally and on the farm; every bad dataset one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from coordinator.cli import main as cli_main
from coordinator.farm.spec import spec_from_local
from coordinator.prepare import prepare_model
from coordinator.quantize import FeedsReader, build_candidate, spec_for
from coordinator.shapes import graph_inputs
from coordinator.tensor_data import data_shapes, list_tensors, load_feeds
from shared.errors import DataError, EvaluationError
from shared.evaluate import EvalSpec, evaluate_model
from shared.feeds import WHOLE_FEED, feed_at, save_npz
from shared.runners.base import RunnerInfo, UnsupportedModel, run_outputs
from shared.runners.ort import OrtConfig, OrtRunner
from shared.settings import QuantSettings
from tests.farm_support import IMAGES, Farm
from tests.models import make_vad_net

FRAME, HIDDEN = 64, 16
TUNE = ["--calibration", "8", "--eval", "12", "--max-candidates", "2", "--ranking-images", "4",
        "--latency-runs", "3", "--threads", "1", "--no-latency-lock"]


def vad_feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Whole feeds for make_vad_net: input [1, 64], state [2, 1, 16] (batch on axis 1), sr a 0-d int64."""
    rng = np.random.default_rng(seed)
    return [{"input": rng.normal(0, 0.3, (1, FRAME)).astype(np.float32),
             "state": rng.normal(0, 0.5, (2, 1, HIDDEN)).astype(np.float32),
             "sr": np.array(16000 if i % 3 else 8000, np.int64)} for i in range(n)]


def write_folder(root: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, feed in enumerate(feeds):
        save_npz(root / f"f{i:03d}.npz", feed)
    return root


def stacked(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.stack([f[name] for f in feeds]) for name in feeds[0]}


@pytest.fixture()
def vad(tmp_path) -> Path:
    return make_vad_net(tmp_path / "vad.onnx", frame=FRAME, hidden=HIDDEN)


def test_whole_feeds_are_detected_stacked_and_fix_every_dimension(tmp_path, vad):
    inputs = graph_inputs(onnx.load(str(vad)))
    feeds = vad_feeds(6)
    folder = list_tensors(write_folder(tmp_path / "feeds", feeds), inputs)
    save_npz(tmp_path / "all.npz", stacked(feeds))
    single = list_tensors(tmp_path / "all.npz", inputs)
    assert folder.layout == single.layout == WHOLE_FEED and len(folder) == len(single) == 6
    for tensors in (folder.subset([1, 4]), single.subset([1, 4])):
        got = load_feeds(tensors)
        assert {k: v.shape for k, v in got.items()} == {"input": (2, 1, FRAME), "state": (2, 2, 1, HIDDEN), "sr": (2,)}
        np.testing.assert_array_equal(got["state"][1], feeds[4]["state"])
        assert feed_at(got, 0, WHOLE_FEED)["sr"].shape == () and feed_at(got, 0, WHOLE_FEED)["sr"] == 16000
    assert data_shapes(tmp_path / "feeds", inputs) == {"input": (1, FRAME), "state": (2, 1, HIDDEN), "sr": ()}
    assert folder.digest() != list_tensors(tmp_path / "feeds", inputs, WHOLE_FEED).subset([0]).digest()
    with pytest.raises(DataError, match="'sr' is a scalar: feeds cannot feed it as batched samples.*--data-layout "
                                        "whole-feed"):
        list_tensors(tmp_path / "feeds", inputs, "batched")


def test_batched_datasets_stay_batched_and_whole_feed_reads_them_strictly(tmp_path):
    from coordinator.prepare import ModelInput

    inputs = (ModelInput("x", (None, 3), "float32"),)
    write_folder(tmp_path / "rows", [{"x": np.zeros(3, np.float32)} for _ in range(3)])
    assert list_tensors(tmp_path / "rows", inputs).layout == "batched"
    with pytest.raises(DataError, match=r"array 'x' in f000.npz has shape \[3\]; the model's input 'x' is \[\?, 3\], "
                                        "rank 2, so a whole feed holds it with 2 dims"):
        list_tensors(tmp_path / "rows", inputs, WHOLE_FEED)


def _bad(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = vad_feeds(3)
    cases = {}

    def folder(name: str, change) -> Path:
        feeds = [dict(f) for f in good]
        change(feeds)
        return write_folder(tmp_path / name, feeds)

    cases["missing"] = (folder("missing", lambda f: f[0].pop("sr")), "f000.npz has no array 'sr'")
    cases["extra"] = (folder("extra", lambda f: f[0].update(h=np.zeros(1, np.float32))),
                      "array 'h' in f000.npz is not an input of the model")
    cases["dtype"] = (folder("dtype", lambda f: f[0].update(sr=np.array(16000, np.int32))),
                      "array 'sr' in f000.npz is int32; the model's input 'sr' expects int64")
    cases["rank-0"] = (folder("rank0", lambda f: f[0].update(sr=np.array([16000], np.int64))),
                       "array 'sr' in f000.npz has shape [1]; the model's input 'sr' is [], a scalar, so a whole "
                       "feed holds it with shape []")
    cases["static-dim"] = (folder("static", lambda f: f[1].update(state=np.zeros((3, 1, HIDDEN), np.float32))),
                           "array 'state' in f001.npz has shape [3, 1, 16]; the model's input 'state' is [2, ?, 16] "
                           "(dim 0 must be 2)")
    cases["ragged"] = (folder("ragged", lambda f: f[2].update(input=np.zeros((1, 32), np.float32))),
                       "array 'input' is [1, 64] in f000.npz but [1, 32] in f002.npz: every sample file needs the "
                       "same shape")
    arrays = stacked(good)
    save_npz(tmp_path / "axis.npz", {**arrays, "sr": arrays["sr"][:2]})
    cases["ragged-axis"] = (tmp_path / "axis.npz", "different sample counts (input: 3, state: 3, sr: 2)")
    save_npz(tmp_path / "scalar.npz", {**arrays, "sr": np.array(16000, np.int64)})
    cases["no-sample-axis"] = (tmp_path / "scalar.npz", "array 'sr' in scalar.npz is a scalar; it needs a leading "
                                                         "sample axis")
    return cases


def test_each_bad_whole_feed_dataset_is_one_line_naming_file_array_and_value(tmp_path, vad):
    inputs = graph_inputs(onnx.load(str(vad)))
    for name, (path, needle) in _bad(tmp_path).items():
        for layout in (WHOLE_FEED, "auto"):          # auto names both readings, batched first
            with pytest.raises(DataError) as info:
                list_tensors(path, inputs, layout)
            assert needle in str(info.value) and "\n" not in str(info.value), (name, layout, str(info.value))


def test_a_tune_with_a_bad_whole_feed_dataset_writes_nothing(tmp_path, vad, capsys):
    for name, (path, needle) in _bad(tmp_path / "bad").items():
        out = tmp_path / f"out-{name}"
        assert cli_main(["tune", str(vad), "--data", str(path), "--data-layout", WHOLE_FEED, "--out", str(out),
                         *TUNE]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (name, err)
        assert not (out / "report.json").exists()
    assert cli_main(["tune", str(vad), "--images", str(IMAGES), "--data-layout", WHOLE_FEED, "--out",
                     str(tmp_path / "img"), *TUNE]) == 2
    assert "--data-layout whole-feed applies to a tensor dataset (--data), not to images" in capsys.readouterr().err
    raw = {"devices": ["cpu"], "models": [{"path": str(vad)}], "data": {"images": str(IMAGES),
                                                                        "data_layout": WHOLE_FEED}}
    with pytest.raises(Exception, match="data.data_layout: applies to a tensor dataset"):
        spec_from_local(raw, "test", tmp_path)


def test_runners_run_one_inference_per_whole_feed(tmp_path, vad):
    prepared = prepare_model(vad, tmp_path / "prep", data_shapes={"input": (1, FRAME), "state": (2, 1, HIDDEN),
                                                                  "sr": ()})
    feeds = stacked(vad_feeds(5))
    session = ort.InferenceSession(str(prepared.path), providers=["CPUExecutionProvider"])
    want = [session.run(None, feed_at(feeds, i, WHOLE_FEED)) for i in range(5)]
    got = run_outputs(OrtRunner(OrtConfig(intra_op_threads=1)), prepared.path, feeds, WHOLE_FEED)
    assert got["output"].shape == (5, 1, 1) and got["stateN"].shape == (5, 2, 1, HIDDEN)
    np.testing.assert_allclose(got["stateN"], np.stack([w[1] for w in want]), rtol=1e-6)
    assert not np.allclose(got["output"][0], got["output"][1])              # each feed its own inference
    result = evaluate_model(OrtRunner(OrtConfig(intra_op_threads=1)), prepared.path, prepared.path, feeds, got, None,
                            EvalSpec(latency_runs=3, layout=WHOLE_FEED))
    assert result.num_images == 5 and result.output_sqnr_db == 200.0 and result.latency_ratio_vs_fp32 > 0

    class BatchOnly:                 # a plugin runner of protocol 2: no run_feed
        def info(self):
            return RunnerInfo("vendor-sdk", "1.0")

        def run(self, model, batch):
            raise AssertionError("never asked to batch whole feeds")

    with pytest.raises(UnsupportedModel, match="vendor-sdk 1.0 has no run_feed"):
        run_outputs(BatchOnly(), prepared.path, feeds, WHOLE_FEED)

    class Ragged(OrtRunner):         # outputs whose shape changes from feed to feed cannot be compared
        calls = 0

        def run_feed(self, model, feed):
            Ragged.calls += 1
            return {"output": np.zeros(Ragged.calls), "stateN": np.zeros(1)}

    with pytest.raises(EvaluationError, match=r"output 'output' of .* is \[2\] for feed 1 but \[1\] for feed 0"):
        run_outputs(Ragged(), prepared.path, feeds, WHOLE_FEED)


def test_calibration_reads_the_same_whole_feeds(tmp_path, vad):
    prepared = prepare_model(vad, tmp_path / "prep", data_shapes={"input": (1, FRAME), "state": (2, 1, HIDDEN),
                                                                  "sr": ()})
    feeds = stacked(vad_feeds(8))
    reader = FeedsReader(feeds, WHOLE_FEED)
    first = reader.get_next()
    assert {k: v.shape for k, v in first.items()} == {"input": (1, FRAME), "state": (2, 1, HIDDEN), "sr": ()}
    built = build_candidate(prepared, spec_for(prepared, QuantSettings(calibration_images=8), ()), tmp_path / "c",
                            feeds, tmp_path / "k", layout=WHOLE_FEED)
    model = onnx.load(str(built.path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "scaled")
    scaled = feeds["input"] * (feeds["sr"].astype(np.float32) / 16000.0)[:, None, None]    # what calibration saw
    low, high = min(0.0, float(scaled.min())), max(0.0, float(scaled.max()))
    assert float(inits[q.input[1]]) == pytest.approx((high - low) / 255, rel=1e-3)


def _summary(report: dict, device: str) -> dict:
    return {c["id"]: round(c["results"][device]["output_sqnr_db"], 4) for c in report["candidates"]}


def test_a_whole_feed_model_tunes_locally_and_on_the_farm_alike(tmp_path, vad):
    folder = write_folder(tmp_path / "feeds", vad_feeds(24))
    out = tmp_path / "local"
    # the recipe pinned on both sides: a probe would choose by latency, which differs from run to run
    pinned = [*TUNE, "--no-reduce-range"]
    assert cli_main(["tune", str(vad), "--data", str(folder), "--out", str(out), *pinned]) == 0
    local = json.loads((out / "report.json").read_text())
    assert local["data"]["data_layout"] == WHOLE_FEED and local["data"]["eval"] == 12
    assert [(i["name"], i["shape"]) for i in local["model"]["inputs"]] == \
        [("input", [1, FRAME]), ("state", [2, 1, HIDDEN]), ("sr", [])]
    results = [c["results"]["local"] for c in local["candidates"]]     # the sweep
    assert len(results) == 2 and all(r["status"] == "ok" and r["num_images"] == 12 for r in results)
    assert set(results[0]["outputs"]) == {"output", "stateN"} and min(r["output_sqnr_db"] for r in results) < 100
    assert all(r["latency_ratio_vs_fp32"] > 0 for r in results)
    assert cli_main(["tune", str(vad), "--data", str(folder), "--data-layout", WHOLE_FEED, "--out", str(out),
                     *pinned]) == 0                 # the same tune, said explicitly: resumed, nothing re-measured
    assert json.loads((out / "report.json").read_text())["status"]["evaluations"] == 0

    raw = {"name": "vad", "devices": ["cpu-a"], "models": [{"path": str(vad)}],
           "data": {"tensors": str(folder), "calibration": 8, "eval": 12, "latency_runs": 3},
           "quantization": {"calibration_images": 8, "reduce_range": False},
           "strategy": {"max_candidates": 2, "ranking_images": 4}}
    with Farm(tmp_path / "farm", agents={"cpu-a": "ort"}) as farm:
        report = farm.run_campaign(spec_from_local(raw, "test", tmp_path))
    assert report["data"]["data_layout"] == WHOLE_FEED
    assert _summary(report, "cpu-a") == _summary(local, "local")      # same candidates, same fidelity
    assert all(c["results"]["cpu-a"]["num_images"] == 12 for c in report["candidates"])
