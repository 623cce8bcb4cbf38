"""The tuner core end to end on a tiny real model and real images, plus its pure pieces."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from coordinator import cli
from coordinator.data import Preprocess, list_images, load_batch, split
from coordinator.pareto import pareto
from coordinator.prepare import constants_to_initializers, prepare_model
from coordinator.quantize import build_candidate, candidate_id, spec_for
from coordinator.tuner.state import read_checkpoint
from shared.errors import DataError, InvalidArgument
from shared.settings import QuantSettings
from tests.conftest import ROOT
from tests.models import make_classifier

# --reduce-range pins the recipe (no recipe probe): these tests count the sweep's candidates
TUNE_ARGS = ["--input-size", "32", "--calibration", "8", "--eval", "24", "--latency-runs", "2",
             "--ranking-images", "4", "--reduce-range"]


def run_cli(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


def test_tune_then_export_matches_plain_onnxruntime(tmp_path, tiny_model, images_dir, capsys):
    out = tmp_path / "out"
    # --allow-slower: on a tiny model INT8 may well be slower than FP32; this test is about export
    assert run_cli("tune", tiny_model, "--images", images_dir, "--out", out, *TUNE_ARGS, "--allow-slower") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"]["state"] == "done"
    assert report["model"]["sha256"] and report["model"]["nodes"] > 0
    ranked = [r["node"] for r in report["ranking"]]
    assert set(ranked) == {"conv0", "conv1", "conv2", "fc"} | (set(ranked) - {"conv0", "conv1", "conv2", "fc"})
    assert all(r["seqto"] is not None and r["quantune"] is not None for r in report["ranking"])
    # sweep k = 0..N: one candidate per k, each measured once on the local device
    ks = sorted(c["num_excluded"] for c in report["candidates"])
    assert ks == list(range(len(ranked) + 1))
    for cand in report["candidates"]:
        res = cand["results"]["local"]
        assert res["status"] == "ok" and 0 <= res["top1_agreement"] <= 1 and res["num_images"] == 24
    everything_float = max(report["candidates"], key=lambda c: c["num_excluded"])
    assert everything_float["results"]["local"]["top1_agreement"] == 1.0
    rec = report["pareto"]["recommended"]
    assert rec in report["pareto"]["fronts"][0]
    assert (out / "layers.png").stat().st_size > 0 and (out / "objectives-local.png").stat().st_size > 0
    assert "Pareto front on local" in capsys.readouterr().out

    # the recommended candidate is measured, not assumed: export it and re-evaluate with plain onnxruntime
    exported = tmp_path / "rec.onnx"
    assert run_cli("export", out / "report.json", "--candidate", rec, "-o", exported) == 0
    eval_set = split(list_images(images_dir), 8, 24, 0)[1]
    x = load_batch(eval_set, Preprocess(input_size=32))
    fp32 = ort.InferenceSession(str(tiny_model)).run(None, {"input": x})[0]
    cand = ort.InferenceSession(str(exported)).run(None, {"input": x})[0]
    agreement = float((fp32.argmax(1) == cand.argmax(1)).mean())
    reported = next(c for c in report["candidates"] if c["id"] == rec)["results"]["local"]["top1_agreement"]
    assert abs(agreement - reported) <= 0.005


def test_rerun_resumes_without_reevaluating(tmp_path, tiny_model, images_dir):
    out = tmp_path / "out"
    args = ("tune", tiny_model, "--images", images_dir, "--out", out, *TUNE_ARGS)
    assert run_cli(*args) == 0
    first = json.loads((out / "report.json").read_text())
    assert run_cli(*args) == 0
    second = json.loads((out / "report.json").read_text())
    assert second["status"]["evaluations"] == 0
    assert second["status"]["resumed"] == len(first["candidates"])
    assert [c["results"] for c in second["candidates"]] == [c["results"] for c in first["candidates"]]


def test_kill_9_mid_tune_then_resume(tmp_path, images_dir):
    """A real kill -9 while candidates run; the rerun keeps every finished result as it was."""
    model = make_classifier(tmp_path / "wide.onnx", channels=(16, 32, 32, 32, 32, 32, 32, 32))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "coordinator.cli", "tune", str(model), "--images", str(images_dir), "--out",
           str(out), "--input-size", "32", "--calibration", "8", "--eval", "60", "--latency-runs", "200",
           "--ranking-images", "4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report_path = out / "report.json"
    deadline = time.monotonic() + 120
    finished = []
    while time.monotonic() < deadline and proc.poll() is None:
        if report_path.exists():
            report = read_checkpoint(out)      # report.json (atomic) + its journal: what the tune recorded
            finished = [c for c in report["candidates"] if c["results"]]
            if len(finished) >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "tune finished before it could be killed; make the model slower"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = read_checkpoint(out)              # everything recorded before the kill, journal included
    done_before = {c["id"]: c["results"] for c in killed["candidates"] if c["results"]}
    assert len(done_before) >= 2 and killed["status"]["state"] == "running"
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    final = json.loads(report_path.read_text())
    assert final["status"]["state"] == "done"
    assert final["status"]["resumed"] >= len(done_before)
    by_id = {c["id"]: c["results"] for c in final["candidates"]}
    for cid, results in done_before.items():
        assert by_id[cid] == results  # same wall_seconds and latencies: not re-evaluated
    assert final["status"]["evaluations"] == len(final["candidates"]) - len(done_before)


@pytest.mark.parametrize("case", ["missing", "not-onnx", "unknown-exclude", "empty-images", "wrong-size"])
def test_bad_input_is_one_line_error(tmp_path, tiny_model, images_dir, case):
    model, images, extra = tiny_model, images_dir, []
    if case == "missing":
        model = tmp_path / "nope.onnx"
        expect = "does not exist"
    elif case == "not-onnx":
        model = tmp_path / "junk.onnx"
        model.write_bytes(os.urandom(300))
        expect = "is not an ONNX model"
    elif case == "unknown-exclude":
        extra = ["--exclude", "conv1_output"]
        expect = "'conv1_output' is not a node"
    elif case == "empty-images":
        images = tmp_path / "empty"
        images.mkdir()
        expect = "has no JPEG or PNG images"
    else:
        extra = ["--input-size", "64"]
        expect = "expects ?x3x32x32"
    argv = ["tune", str(model), "--images", str(images), "--out", str(tmp_path / "o"), *TUNE_ARGS, *extra]
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expect in lines[0]
    assert "Traceback" not in proc.stderr


def test_constant_weights_are_quantized(tmp_path, images_dir):
    """Weights held in Constant nodes become initializers, so quantization really happens."""
    model = make_classifier(tmp_path / "const.onnx", weights_in_constants=True, channels=(32, 64, 64))
    raw = onnx.load(str(model))
    assert not raw.graph.initializer
    folded = constants_to_initializers(raw)
    assert len(folded.graph.initializer) == 8 and not any(n.op_type == "Constant" for n in folded.graph.node)
    assert not raw.graph.initializer  # caller's model untouched
    prepared = prepare_model(model, tmp_path / "prep")
    cal = {"input": load_batch(split(list_images(images_dir), 8, 8, 0)[0], Preprocess(input_size=32))}
    built = build_candidate(prepared, spec_for(prepared, QuantSettings(), ()), tmp_path / "c", cal, tmp_path / "k")
    q = onnx.load(str(built.path))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert built.size_bytes < 0.5 * prepared.size_bytes


def test_candidate_id_is_stable_and_order_free():
    s = QuantSettings()
    a = candidate_id("abc", ["b", "a"], s, calibration_digest="d")
    assert a == candidate_id("abc", ["a", "b", "a"], QuantSettings(), calibration_digest="d")
    assert a != candidate_id("abc", ["a"], s, calibration_digest="d")
    assert a != candidate_id("abc", ["a", "b"], s.replace(per_channel=False), calibration_digest="d")
    assert a != candidate_id("abd", ["a", "b"], s, calibration_digest="d")
    assert a != candidate_id("abc", ["a", "b"], s, calibration_digest="e")


def test_settings_reject_bad_values():
    with pytest.raises(InvalidArgument, match="format='int4'"):
        QuantSettings(format="int4")
    with pytest.raises(InvalidArgument, match="calibration_images=0"):
        QuantSettings(calibration_images=0)
    with pytest.raises(InvalidArgument, match="unknown quantization setting"):
        QuantSettings.from_dict({"per_chanel": True})
    with pytest.raises(InvalidArgument, match="recipe='cle' must be a table"):
        QuantSettings.from_dict({"recipe": "cle"})


@pytest.mark.parametrize("field, value, needle", [
    ("bgr", "yes", "--bgr 'yes'"), ("resize_ratio", -1, "resize_ratio -1"), ("resize_ratio", "x", "resize_ratio 'x'"),
    ("input_size", 32.5, "--input-size 32.5"), ("mean", ("a", 0, 0), "must be numbers"),
    ("std", (1.0, float("nan"), 1.0), "must be numbers")])
def test_preprocess_rejects_bad_values_by_name(field, value, needle):
    with pytest.raises(InvalidArgument) as info:
        Preprocess(**{field: value})
    assert needle in str(info.value)


def test_split_is_seeded_and_disjoint(images_dir):
    images = list_images(images_dir)
    assert len(images) == 100 and images.labels is not None
    cal, ev = split(images, 20, 50, seed=3)
    assert not set(cal.files) & set(ev.files)
    assert split(images, 20, 50, seed=3) == (cal, ev)
    assert split(images, 20, 50, seed=4) != (cal, ev)
    with pytest.raises(DataError, match="need 150 images"):
        split(images, 50, 100, seed=0)


def test_synset_labels_and_unlabelled_names(tmp_path, images_dir):
    first = sorted(images_dir.iterdir())[0]
    assert list_images(images_dir).labels[0] == 0 and first.name.startswith("n01440764")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "cat.jpg").write_bytes(first.read_bytes())
    with pytest.raises(DataError, match="'cat.jpg'"):
        list_images(odd)
    assert list_images(odd, labels="none").labels is None


def test_nhwc_model_and_layout(tmp_path, images_dir):
    model = make_classifier(tmp_path / "nhwc.onnx", layout="NHWC", dynamic_batch=False)
    out = tmp_path / "out"
    assert run_cli("tune", model, "--images", images_dir, "--out", out, "--layout", "NHWC",
                   *TUNE_ARGS, "--max-candidates", "2") == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["candidates"]) == 2
    assert all(c["results"]["local"]["status"] == "ok" for c in report["candidates"])


def test_pareto_front_and_recommendation():
    results = {
        "a": {"status": "ok", "top1_agreement": 0.80, "size_bytes": 100},
        "b": {"status": "ok", "top1_agreement": 0.95, "size_bytes": 150},
        "c": {"status": "ok", "top1_agreement": 1.00, "size_bytes": 400},
        "d": {"status": "ok", "top1_agreement": 0.90, "size_bytes": 200},  # dominated by b
        "e": {"status": "crash", "size_bytes": 90},
    }
    res = pareto(results, ("accuracy_loss", "size_bytes"))
    assert res.fronts[0] == ["a", "b", "c"] or sorted(res.fronts[0]) == ["a", "b", "c"]
    assert "d" in res.fronts[1] and "e" not in res.points
    assert res.recommended == "b"
    assert res.best == {"accuracy_loss": "c", "size_bytes": "a"}


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_opsets_11_to_18(tmp_path, images_dir, opset):
    model = make_classifier(tmp_path / f"op{opset}.onnx", opset=opset, dynamic_batch=opset != 13)
    out = tmp_path / "out"
    assert run_cli("tune", model, "--images", images_dir, "--out", out, *TUNE_ARGS, "--max-candidates", "2") == 0
    report = json.loads((out / "report.json").read_text())
    full = next(c for c in report["candidates"] if c["num_excluded"] == 0)
    assert full["results"]["local"]["status"] == "ok"
    assert full["size_bytes"] < 0.6 * report["model"]["size_bytes"]  # really quantized
