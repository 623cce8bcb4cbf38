"""Crash blame: bisection finds the node(s) whose quantization makes a device crash. First on a
predicate (exact probe counts), then for real: onnxruntime-quantized candidates of a tiny model on
a test-only device runtime that has no quantized Gemm kernel (it refuses any Gemm fed by a
DequantizeLinear), which must blame exactly the Gemm and retry without it."""
from __future__ import annotations

import dataclasses

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from coordinator.evaluators import EvalInputs, LocalEvaluator
from coordinator.prepare import prepare_model
from coordinator.quantize import build_candidate, quantizable_nodes, spec_for
from coordinator.tuner.blame import CandidateResults, blame_candidate, blame_crashes, find_culprits
from shared.results import DeviceResult, ResultStatus
from shared.runners.ort import OrtConfig, OrtRunner
from shared.settings import QuantSettings
from tests.device_runtimes import NoQuantizedGemm
from tests.models import make_classifier

NODES = [f"n{i}" for i in range(20)]


def _probe_counter(culprits: set[str], need_all: bool = False):
    calls: list[frozenset[str]] = []

    def crashes(quantized: frozenset[str]) -> bool:
        calls.append(quantized)
        return culprits <= quantized if need_all else bool(culprits & quantized)
    return crashes, calls


@pytest.mark.parametrize("culprit", ["n0", "n9", "n19"])
def test_one_culprit_is_found_in_logarithmic_probes(culprit):
    crashes, calls = _probe_counter({culprit})
    blamed, probes, note = find_culprits(NODES, crashes)
    assert blamed == (culprit,) and note == ""
    assert probes == len(calls) <= 1 + math.ceil(math.log2(len(NODES))) + 1   # float check, search, retry


def test_several_culprits_are_each_blamed_and_an_interaction_is_broken():
    crashes, _ = _probe_counter({"n3", "n15"})
    blamed, _, _ = find_culprits(NODES, crashes)
    assert set(blamed) == {"n3", "n15"}
    crashes, _ = _probe_counter({"n4", "n12"}, need_all=True)      # crashes only when both are quantized
    blamed, _, _ = find_culprits(NODES, crashes)
    assert blamed == ("n12",)                                       # keeping one in float is enough


def test_a_crash_that_is_not_about_quantization_blames_nothing():
    blamed, probes, note = find_culprits(NODES, lambda quantized: True)
    assert blamed == () and probes == 1 and "every node in float" in note
    blamed, _, note = find_culprits(NODES, lambda quantized: bool(quantized), max_culprits=2)   # every node crashes
    assert len(blamed) == 2 and "gave up" in note


def test_real_candidates_blame_the_gemm_on_a_device_without_quantized_gemm(tmp_path):
    prepared = prepare_model(make_classifier(tmp_path / "tiny.onnx"), tmp_path / "prepared")
    settings = QuantSettings(calibration_images=8)
    quantizable = quantizable_nodes(prepared, settings)
    assert "fc" in quantizable and len(quantizable) >= 4
    rng = np.random.default_rng(0)
    calibration = {prepared.input_name: rng.normal(size=(8, 3, 32, 32)).astype(np.float32)}
    data = EvalInputs({prepared.input_name: rng.normal(size=(4, 3, 32, 32)).astype(np.float32)}, None, 1)
    evaluator = LocalEvaluator(NoQuantizedGemm(OrtConfig(intra_op_threads=1)), tmp_path / "cache", device="npu-x")
    evaluator.reference(prepared.path, prepared.sha256, data)
    probed: list[tuple[str, ...]] = []

    def probe(excluded: tuple[str, ...]) -> DeviceResult:
        probed.append(excluded)
        spec = spec_for(prepared, settings, excluded, calibration_digest="test")
        cand = build_candidate(prepared, spec, tmp_path / "candidates", calibration, tmp_path / "cache")
        [(_, device, result)] = list(evaluator.evaluate([cand], data))
        assert device == "npu-x"
        return result

    full = probe(())
    assert not full.ok and "no quantized Gemm kernel (node fc)" in str(full.crash_cause)
    ranking = sorted(quantizable)                      # any order: the search does not rely on it being right
    blame = blame_candidate("full-int8", "npu-x", (), quantizable, ranking, probe)
    assert blame.blamed == ("fc",) and blame.note == ""
    assert blame.retried_excluded == ("fc",) and blame.retried_result.ok
    assert blame.probes == len(probed) - 1 <= 2 + math.ceil(math.log2(len(quantizable)))
    assert blame.to_report() == {"candidate": "full-int8", "blamed_nodes": ["fc"], "probes": blame.probes,
                                 "retried_excluded": ["fc"], "retried_status": "ok"}
    partial = blame_candidate("c1", "npu-x", ("conv0",), quantizable, ranking, probe)   # already-excluded stay
    assert partial.blamed == ("fc",) and partial.retried_excluded == ("conv0", "fc")

    # the report section over several crashing candidates: one bisection explains them all
    entries = [CandidateResults(f"c{i}", ex, {"npu-x": probe(ex), "cpu": DeviceResult(ResultStatus.OK)})
               for i, ex in enumerate([(), ("conv0",), ("conv0", "conv1"), ("fc",)])]
    section = blame_crashes(entries, ["npu-x", "cpu"], quantizable, ranking, lambda device, ex: probe(ex))
    assert list(section) == ["npu-x"]                      # nothing crashed on cpu: nothing to blame there
    assert section["npu-x"][0]["candidate"] == "c0" and section["npu-x"][0]["blamed_nodes"] == ["fc"]
    assert section["npu-x"][1:] == [{"candidate": "c1", "explained_by": ["fc"]},
                                    {"candidate": "c2", "explained_by": ["fc"]}]


def _tune_on(device_runner, tmp_path, images_dir, **overrides):
    from coordinator.data import Preprocess
    from coordinator.tune import TuneConfig, Tuner

    tmp_path.mkdir(parents=True, exist_ok=True)
    config = TuneConfig(model=make_classifier(tmp_path / "tiny.onnx"), images=images_dir, out=tmp_path / "out",
                        preprocess=Preprocess(input_size=32), n_calibration=8, n_eval=16,
                        settings=QuantSettings(calibration_images=8), ranking_images=4, latency_runs=1,
                        **overrides)
    evaluator = LocalEvaluator(device_runner, tmp_path / "fp32", device="npu-x")
    return Tuner(config, evaluator).run()


def test_the_tuner_blames_a_crash_and_its_retried_candidate_joins_the_front(tmp_path, images_dir):
    # allow_slower: this test is about blame, not whether INT8 of a tiny model pays on this machine
    report = _tune_on(NoQuantizedGemm(OrtConfig(intra_op_threads=1)), tmp_path, images_dir,
                      strategy="sweep", max_candidates=2, allow_slower=True)
    full = next(c for c in report["candidates"] if c["excluded_nodes"] == [])
    assert full["results"]["npu-x"]["status"] == "unsupported"
    [entry] = report["blame"]["npu-x"][:1]
    assert entry["candidate"] == full["id"] and entry["blamed_nodes"] == ["fc"]
    assert entry["retried_status"] == "ok"
    retried = next(c for c in report["candidates"] if c["excluded_nodes"] == entry["retried_excluded"])
    assert "fc" in retried["excluded_nodes"] and retried["results"]["npu-x"]["status"] == "ok"
    assert report["pareto"]["recommended"] is not None
    recommended = next(c for c in report["candidates"] if c["id"] == report["pareto"]["recommended"])
    assert recommended["results"]["npu-x"]["status"] == "ok"
    # every other crashing candidate is explained by the blamed Gemm, not bisected again
    crashing = {c["id"] for c in report["candidates"]
                if c["results"]["npu-x"]["status"] != "ok" and c.get("origin") != "blame"}
    assert crashing and any(c.get("origin") == "blame" for c in report["candidates"])
    listed = {e["candidate"] for e in report["blame"]["npu-x"]}
    assert crashing <= listed


def test_no_crash_means_no_blame_section_and_blame_can_be_turned_off(tmp_path, images_dir):
    ok = _tune_on(OrtRunner(OrtConfig(intra_op_threads=1)), tmp_path / "ok", images_dir, strategy="sweep",
                  max_candidates=2)
    assert "blame" not in ok
    off = _tune_on(NoQuantizedGemm(OrtConfig(intra_op_threads=1)), tmp_path / "off", images_dir,
                   strategy="sweep", max_candidates=2, blame_crashes=False)
    assert "blame" not in off and len(off["candidates"]) == 2


def test_on_the_farm_the_report_blames_the_node_per_device_class(tmp_path):
    """A real coordinator; a real agent per class, one with a runtime that lacks a quantized Gemm
    (`--runtime module:function`, run in the agent's child process like any runtime)."""
    from coordinator.testing import Farm
    from tests.farm_support import tiny_spec

    model = make_classifier(tmp_path / "tiny.onnx")
    # allow_slower: this test is about blame, not whether INT8 of a tiny model pays on this machine
    spec = dataclasses.replace(tiny_spec(tmp_path, model, ["cpu-a", "npu-x"], max_candidates=2), allow_slower=True)
    with Farm(tmp_path / "farm", agents={"cpu-a": "ort", "npu-x": "tests.device_runtimes:no_quantized_gemm"}) as farm:
        report = farm.run_campaign(spec)
    assert list(report["blame"]) == ["npu-x"]                       # cpu-a runs every candidate
    first = report["blame"]["npu-x"][0]
    assert first["blamed_nodes"] == ["fc"] and first["retried_status"] == "ok"
    retried = next(c for c in report["candidates"] if c["excluded_nodes"] == first["retried_excluded"])
    assert retried["results"]["npu-x"]["status"] == "ok" and retried["results"]["cpu-a"]["status"] == "ok"
    full = next(c for c in report["candidates"] if c["excluded_nodes"] == [])
    assert full["results"]["cpu-a"]["status"] == "ok"
    assert "no quantized Gemm kernel" in full["results"]["npu-x"]["crash_cause"]
    npu = report["pareto"]["per_device"]["npu-x"]
    recommended = next(c for c in report["candidates"] if c["id"] == npu["recommended"])
    assert recommended["results"]["npu-x"]["status"] == "ok"
