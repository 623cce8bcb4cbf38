"""The decision: latency as an objective, the recommendation policy (preference, never slower than
FP32, the verdict), fidelity targets and ties, per-device recipe choice, searches that end by
themselves and the comparison across device classes. Pure rules on known results first, then the
tuner end to end on tiny real models with test runtimes whose latency is injected
(tests/device_runtimes.py), then a farm of two device classes."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from coordinator.console import print_summary
from coordinator.data import Preprocess
from coordinator.evaluators import LocalEvaluator
from coordinator.measures import FASTER, SLOWER, UNMEASURED, WITHIN_NOISE, latency_ratio, speed
from coordinator.pareto import pareto
from coordinator.policy import Policy, comparison, decide, objectives_for
from coordinator.tune import TuneConfig, Tuner
from coordinator.tuner.probe import choose_recipe, recipe_settings
from coordinator.tuner.search import default_budget
from coordinator.tuner.targets import Targets
from shared.errors import InvalidArgument
from shared.settings import QuantSettings
from tests.conftest import ROOT
from tests.device_runtimes import accurate_but_slow, broken_int8, everything_slower, model_kind
from tests.models import make_classifier

FP32 = {"status": "ok", "top1_accuracy": 0.80, "size_bytes": 1000, "latency_ms_p50": 10.0}
DEFAULTS = ("accuracy_loss", "size_bytes", "latency")


def r(agree=0.99, size=300, ratio=None, p50=None, sqnr=None, status="ok", **extra) -> dict:
    out = {"status": status, "top1_agreement": agree, "top5_agreement": 1.0, "top1_accuracy": 0.80,
           "size_bytes": size, "latency_ms_p50": p50 if p50 is not None else (None if ratio is None else 10.0 * ratio),
           "fp32_latency_ms_p50": 10.0, **extra}
    if ratio is not None:
        out["latency_ratio_vs_fp32"] = ratio
    if sqnr is not None:
        out["output_sqnr_db"] = sqnr
    return out


def decide_on(results, targets=Targets(), policy=Policy(), objectives=DEFAULTS):
    return decide("npu", "m.onnx", results, FP32, objectives, targets, policy)


# -- reading a result ----------------------------------------------------------------------------
def test_speed_uses_the_interleaved_ratio_its_spread_and_a_5_percent_margin():
    assert speed(r(ratio=0.70)) == FASTER
    assert speed(r(ratio=1.04)) == WITHIN_NOISE and speed(r(ratio=0.96)) == WITHIN_NOISE
    assert speed(r(ratio=1.06)) == SLOWER
    assert speed(r(ratio=1.02, latency_ratio_p10=1.01, latency_ratio_p90=1.03)) == SLOWER   # slower in 90% of pairs
    assert speed(r(ratio=0.98, latency_ratio_p10=0.97, latency_ratio_p90=0.99)) == FASTER
    assert speed({"status": "ok", "latency_ms_p50": 0.0}) == UNMEASURED                     # --latency-runs 0


def test_a_result_without_the_ratio_falls_back_to_the_devices_fp32_p50():
    old = {"status": "ok", "latency_ms_p50": 15.0}                      # an old report's result
    assert latency_ratio(old) is None
    assert latency_ratio(old, {"latency_ms_p50": 10.0}) == pytest.approx(1.5)
    assert latency_ratio({**old, "fp32_latency_ms_p50": 30.0}, {"latency_ms_p50": 10.0}) == pytest.approx(0.5)


def test_latency_and_fidelity_objectives_lower_is_better():
    results = {"fast": r(agree=0.98, size=300, ratio=0.6), "slow": r(agree=0.98, size=300, ratio=3.0),
               "faithful": r(agree=0.99, size=310, ratio=0.7)}
    front = pareto(results, DEFAULTS)
    assert "slow" not in front.fronts[0] and front.best["latency"] == "fast"
    fid = pareto({"a": r(sqnr=20.0), "b": r(sqnr=35.0), "c": r(sqnr=math.inf)}, ("fidelity",))
    assert fid.best["fidelity"] == "c" and fid.fronts == [["c"], ["b"], ["a"]]


# -- the policy ----------------------------------------------------------------------------------
def test_an_accurate_but_slow_candidate_is_never_recommended():
    results = {"u8u8": r(agree=1.00, size=300, ratio=6.2), "u8s8": r(agree=0.98, size=290, ratio=0.69)}
    entry = decide_on(results)
    assert entry["recommended"] == "u8s8"
    assert "1 candidate(s) slower than FP32" in entry["policy"]["reason"]
    assert entry["policy"]["verdict"].startswith("quantization pays for m.onnx on npu: u8s8 at p50 6.90 ms")
    with_target = decide_on(results, Targets(max_agreement_drop=0.01))     # met only by the slow one
    assert with_target["recommended"] == "u8s8" and not with_target["target"]["met"]     # the best-so-far front
    assert with_target["target"]["line"] == ("target not met on npu by any candidate not slower than FP32: only by "
                                             "slower ones (fastest: u8u8 at 6.20x FP32), never recommended "
                                             "(allow_slower accepts them)")
    allowed = decide_on(results, Targets(max_agreement_drop=0.01), Policy(allow_slower=True))
    assert allowed["recommended"] == "u8u8" and allowed["target"]["met"]


def test_when_nothing_is_faster_than_fp32_nothing_is_recommended_and_the_verdict_says_so():
    results = {"a": r(agree=0.99, size=300, ratio=1.6, p50=16.0), "b": r(agree=0.97, size=280, ratio=1.02, p50=10.2)}
    entry = decide_on(results, Targets(max_agreement_drop=0.05))
    assert entry["recommended"] is None
    assert entry["policy"]["verdict"] == ("quantization does not pay for m.onnx on npu: best INT8 p50 10.20 ms vs "
                                          "FP32 10.00 ms (1.02x FP32)")
    assert "no candidate is faster than FP32" in entry["policy"]["reason"]
    assert not entry["target"]["met"] and "quantization does not pay" in entry["target"]["line"]
    anyway = decide_on(results, Targets(max_agreement_drop=0.05), Policy(allow_slower=True))
    assert anyway["recommended"] == "b" and anyway["policy"]["verdict"].endswith("b recommended anyway (allow_slower)")


@pytest.mark.parametrize("prefer, expected", [("latency", "fastest"), ("size", "smallest"), ("balanced", "both")])
def test_with_a_target_the_preference_decides_among_candidates_meeting_it(prefer, expected):
    results = {"fastest": r(agree=0.995, size=600, ratio=0.40),    # 0.60 + 0.40 = 1.00
               "smallest": r(agree=0.992, size=260, ratio=0.90),   # 0.26 + 0.90 = 1.16
               "both": r(agree=0.991, size=300, ratio=0.55),       # 0.30 + 0.55 = 0.85
               "unfaithful": r(agree=0.90, size=250, ratio=0.30),  # misses the target
               "slow": r(agree=1.0, size=255, ratio=2.0)}          # slower than FP32
    entry = decide_on(results, Targets(max_agreement_drop=0.01), Policy(prefer=prefer))
    assert entry["recommended"] == expected and entry["target"]["met"]
    assert entry["policy"]["prefer"] == prefer and entry["policy"]["reason"].startswith(f"prefer {prefer}")
    if prefer == "balanced":
        assert "(0.30 + 0.55)" in entry["policy"]["reason"]


def test_a_target_nothing_meets_is_approached_in_its_own_metric():
    """With an IoU floor nobody reaches, the closest is the highest IoU, not the highest SQNR (a VAD
    whose decisions flip while its raw output stays close)."""
    results = {"sqnr": r(agree=None, ratio=0.75, sqnr=19.4, iou=0.634),
               "decisions": r(agree=None, ratio=0.90, sqnr=7.0, iou=0.90)}
    entry = decide_on(results, Targets(min_iou=0.95))
    assert entry["recommended"] == "decisions" and not entry["target"]["met"]
    assert "closest decisions (IoU 0.900 < 0.950)" in entry["target"]["line"]
    both = Targets(min_iou=0.95, min_sqnr_db=10.0)        # fewer targets missed first
    assert decide_on(results, both)["recommended"] == "sqnr"
    assert both.closeness(results["decisions"], None) < both.closeness(results["sqnr"], None) < (0, 0.0)
    assert Targets(min_iou=0.6).closeness(results["sqnr"], None) == (0, 0.0)
    assert Targets(min_iou=0.6).closeness({"status": "crash"}, None) < both.closeness(results["decisions"], None)
    recipe, why = choose_recipe(results, FP32, Targets(min_iou=0.95), Policy())    # the probe judges the same way
    assert recipe == "decisions" and why.startswith("closest to the target")


def test_within_the_noise_of_the_best_score_fidelity_decides():
    results = {"faster": r(agree=0.990, size=300, ratio=0.50, sqnr=19.0),      # 0.80
               "faithful": r(agree=0.990, size=300, ratio=0.53, sqnr=24.9),    # 0.83: within 0.05
               "agreeing": r(agree=0.995, size=300, ratio=0.58, sqnr=30.0)}    # 0.88: beyond
    entry = decide_on(results, Targets(max_agreement_drop=0.01))
    assert entry["recommended"] == "faithful"
    assert "(within 0.05 of the best: the most faithful)" in entry["policy"]["reason"]
    assert decide_on(results, Targets(max_agreement_drop=0.01), Policy(prefer="size"))["recommended"] == "agreeing"


def test_ties_go_to_higher_agreement_then_higher_sqnr():
    policy = Policy(prefer="size")
    results = {"a": r(agree=0.99, size=300, ratio=0.5, sqnr=20.0), "b": r(agree=0.99, size=300, ratio=0.5, sqnr=31.0)}
    assert decide_on(results, Targets(max_agreement_drop=0.05), policy)["recommended"] == "b"


def test_a_two_class_model_whose_agreement_saturates_is_decided_by_sqnr():
    """Every candidate agrees 100% with FP32 (2 classes): agreement says nothing, SQNR stands in."""
    results = {"qoperator": r(agree=1.0, size=300, ratio=0.95, sqnr=18.0),
               "u8s8": r(agree=1.0, size=305, ratio=0.95, sqnr=34.0),
               "u8s8-rr": r(agree=1.0, size=305, ratio=0.95, sqnr=26.0)}
    used, note = objectives_for(results, DEFAULTS)
    assert used == ("fidelity", "size_bytes", "latency") and "100.0% for every candidate" in note
    entry = decide_on(results)
    assert entry["objectives"] == list(used) and entry["objectives_note"] == note
    assert entry["best"]["fidelity"] == "u8s8" and "u8s8-rr" not in entry["fronts"][0]
    # the recipe probe: the same tie, broken the same way
    fp32 = {**FP32, "size_bytes": 1000}
    assert choose_recipe(results, fp32, Targets(), Policy())[0] == "u8s8"


def test_without_a_target_the_preference_weights_the_trade_off():
    results = {"small": r(agree=0.97, size=250, ratio=0.80), "fast": r(agree=0.97, size=400, ratio=0.45),
               "mid": r(agree=0.97, size=320, ratio=0.62)}
    assert decide_on(results, policy=Policy(prefer="latency"))["recommended"] == "fast"
    assert decide_on(results, policy=Policy(prefer="size"))["recommended"] == "small"


def test_latency_not_measured_is_said_and_does_not_block_a_recommendation():
    results = {"a": r(agree=0.99, size=300, p50=0.0)}
    entry = decide_on(results)
    assert entry["recommended"] == "a"
    assert "latency not measured" in entry["policy"]["reason"] and "latency not measured" in entry["policy"]["verdict"]


# -- targets ---------------------------------------------------------------------------------------
def test_fidelity_targets_need_their_metric():
    targets = Targets(min_sqnr_db=25.0, min_cosine=0.99)
    assert targets.any and targets.misses(r(sqnr=30.0, cosine=0.995), None) == []
    assert targets.misses(r(sqnr=20.0, cosine=0.995), None) == ["SQNR 20.0 dB < 25.0 dB"]
    assert targets.misses(r(cosine=0.995), None) == ["SQNR not measured"]
    assert Targets(min_iou=0.9).misses(r(iou=0.5), None) == ["IoU 0.500 < 0.900"]
    assert not Targets(min_iou=0.9).meets(r(iou=float("nan")), None)


@pytest.mark.parametrize("flag, value, needle", [
    ("--prefer", "fast", "--prefer 'fast' is not one of balanced, latency, size"),
    ("--min-sqnr-db", "-3", "--min-sqnr-db -3.0 must be a number > 0 and <= 200"),
    ("--min-sqnr-db", "nan", "--min-sqnr-db nan must be a number > 0 and <= 200"),
    ("--min-cosine", "1.5", "--min-cosine 1.5 must be a fraction between 0 and 1")])
def test_bad_decision_flags_are_one_line_errors(tmp_path, images_dir, flag, value, needle):
    model = make_classifier(tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "tune", str(model), "--images", str(images_dir),
                           "--out", str(tmp_path / "o"), "--input-size", "32", flag, value], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], \
        proc.stderr
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.parametrize("key, value, needle", [
    ("prefer", "fast", "strategy.prefer: 'fast' is not one of balanced, latency, size"),
    ("min_sqnr_db", -1, "strategy.min_sqnr_db: -1 must be a number > 0 and <= 200"),
    ("min_sqnr_db", float("nan"), "strategy.min_sqnr_db: nan must be a number > 0 and <= 200"),
    ("allow_slower", "yes", "strategy.allow_slower: 'yes' must be true or false")])
def test_bad_decision_keys_in_a_campaign_spec_are_named(tmp_path, key, value, needle):
    from coordinator.farm.spec import spec_from_local
    from tests.farm_support import IMAGES

    raw = {"devices": ["cpu"], "models": [{"path": str(make_classifier(tmp_path / "m.onnx"))}],
           "data": {"images": str(IMAGES)}, "strategy": {key: value}}
    with pytest.raises(InvalidArgument) as info:
        spec_from_local(raw, "spec.toml", tmp_path)
    message = str(info.value)
    assert "\n" not in message and needle in message and "1 bad field(s)" in message


# -- recipes and budgets -------------------------------------------------------------------------
def test_recipe_choice_is_per_device_and_latency_aware():
    measured = {"u8u8": r(agree=0.99, size=300, ratio=6.0), "u8s8": r(agree=0.97, size=300, ratio=0.7),
                "u8s8-rr": r(agree=0.93, size=300, ratio=0.68)}
    name, why = choose_recipe(measured, FP32, Targets(max_agreement_drop=0.01), Policy())
    assert name == "u8s8" and "not slower than FP32" in why and "none meets the target" in why
    met = choose_recipe(measured, FP32, Targets(max_agreement_drop=0.05), Policy(prefer="latency"))
    assert met[0] == "u8s8" and met[1].startswith("meets the target")
    # 0.68x vs 0.70x is within the noise: the more faithful u8s8; 0.60x is really faster
    assert choose_recipe(measured, FP32, Targets(max_agreement_drop=0.08), Policy(prefer="latency"))[0] == "u8s8"
    faster = {**measured, "u8s8-rr": r(agree=0.93, size=300, ratio=0.60)}
    assert choose_recipe(faster, FP32, Targets(max_agreement_drop=0.08), Policy(prefer="latency"))[0] == "u8s8-rr"
    assert choose_recipe(measured, FP32, Targets(max_agreement_drop=0.01), Policy(allow_slower=True))[0] == "u8u8"


def test_recipe_settings_drop_base_when_a_probe_is_the_same():
    base = QuantSettings()                                  # reduce_range on: the same as u8s8-rr
    assert list(recipe_settings(base, ("u8s8", "u8s8-rr"))) == ["u8s8", "u8s8-rr"]
    assert list(recipe_settings(base, ("u8u8",))) == ["base", "u8u8"]


def test_default_budget_grows_with_the_log_of_the_quantizable_nodes():
    assert [default_budget(n) for n in (1, 4, 61, 200, 10**6)] == [8, 9, 18, 24, 40]


# -- the comparison across device classes --------------------------------------------------------
def test_comparison_flags_crashes_agreement_gaps_and_speed_that_differ_by_class():
    report = {"model": {"path": "m.onnx"}, "fp32": {"cpu": FP32, "npu": FP32},
              "candidates": [
                  {"id": "same", "size_bytes": 300, "results": {"cpu": r(agree=0.98, ratio=0.6),
                                                                "npu": r(agree=0.97, ratio=0.7)}},
                  {"id": "crashy", "size_bytes": 300,
                   "results": {"cpu": r(ratio=0.6), "npu": {"status": "crash", "crash_cause": "signal:SIGSEGV"}}},
                  {"id": "drifts", "size_bytes": 300, "results": {"cpu": r(agree=0.98, ratio=0.6),
                                                                  "npu": r(agree=0.955, ratio=0.6)}},
                  {"id": "slow-there", "size_bytes": 300, "results": {"cpu": r(ratio=0.6), "npu": r(ratio=1.8)}}],
              "pareto": {"per_device": {"cpu": {"recommended": "same"}, "npu": {"recommended": "drifts"}}}}
    comp = comparison(report, ["cpu", "npu"])
    rows = {row["candidate"]: row for row in comp["rows"]}
    assert not rows["same"]["divergent"]                                  # 1 point apart: within the 2 points
    assert rows["crashy"]["why"] == "ok on cpu; crash on npu (signal:SIGSEGV)"
    assert rows["drifts"]["why"] == "agreement 98.0% on cpu vs 95.5% on npu"
    assert rows["slow-there"]["why"] == "faster than FP32 on cpu, slower on npu"
    assert comp["recommended"] == {"cpu": "same", "npu": "drifts"} and comp["devices"] == ["cpu", "npu"]
    cell = rows["same"]["per_device"]["npu"]
    assert set(cell) >= {"status", "top1_agreement", "output_sqnr_db", "latency_ms_p50", "latency_ratio_vs_fp32"}
    assert comparison(report, ["cpu"]) is None


# -- end to end on tiny real models, latency injected ---------------------------------------------
def _tune(tmp_path, images_dir, runtime, name="out", **options):
    model = make_classifier(tmp_path / "m.onnx", channels=options.pop("channels", (8, 16, 16)),
                            classes=options.pop("classes", 1000))
    config = TuneConfig(model=model, images=images_dir, out=tmp_path / name, preprocess=Preprocess(input_size=32),
                        n_calibration=8, n_eval=24, settings=QuantSettings(calibration_images=8), ranking_images=4,
                        **{"latency_runs": 3, **options})
    return Tuner(config, LocalEvaluator(runtime(_Options()), tmp_path / name / "fp32")).run()


class _Options:
    optimization, threads = "all", 1


def _recommended(report, device="local"):
    rec = report["pareto"]["per_device"][device]["recommended"]
    return None if rec is None else next(c for c in report["candidates"] if c["id"] == rec)


def test_the_policy_picks_the_fast_recipe_over_the_accurate_slow_one(tmp_path, images_dir):
    report = _tune(tmp_path, images_dir, accurate_but_slow, probe_recipes=("u8s8-rr", "u8u8"), strategy="sweep",
                   max_candidates=2)
    probe = report["recipe_probe"]["per_device"]["local"]
    assert set(probe["measured"]) == {"u8s8-rr", "u8u8"}                 # the base settings are u8s8-rr
    assert probe["measured"]["u8u8"]["latency_ratio_vs_fp32"] == pytest.approx(3.0)
    assert probe["chosen"] == "u8s8-rr", probe["reason"]
    searched = [c for c in report["candidates"] if c["excluded_nodes"]]
    assert searched and all(c["settings"]["weight_type"] == "int8" for c in searched)   # searched with the fast one
    rec = _recommended(report)
    assert rec is not None and model_kind(tmp_path / "out" / rec["path"]) == "int8"
    policy = report["pareto"]["per_device"]["local"]["policy"]
    assert "slower than FP32" in policy["reason"] and policy["verdict"].startswith("quantization pays")


def test_nothing_is_recommended_when_every_candidate_is_slower_and_the_verdict_is_printed(tmp_path, images_dir,
                                                                                          capsys):
    report = _tune(tmp_path, images_dir, everything_slower, strategy="greedy", max_agreement_drop=0.02,
                   probe_recipes=("u8s8", "u8s8-rr"))
    entry = report["pareto"]["per_device"]["local"]
    assert entry["recommended"] is None and report["pareto"]["recommended"] is None
    verdict = entry["policy"]["verdict"]
    assert verdict == ("quantization does not pay for m.onnx on local: best INT8 p50 1.60 ms vs FP32 1.00 ms "
                       "(1.60x FP32, p10-p90 1.60-1.60)")
    # full INT8 of the chosen recipe is slower: float layers will not make it pay, so no search
    assert report["status"]["stopped_by"].startswith("search skipped: full INT8 is slower than FP32 on local")
    assert report["status"]["evaluations"] == 2 and report["ranking"] == []
    print_summary(report, tmp_path / "out" / "report.json")
    printed = capsys.readouterr().out
    assert "local: recommended: none" in printed and "quantization does not pay for m.onnx on local" in printed
    assert "search ended: search skipped" in printed


def test_a_target_driven_search_without_a_budget_ends_by_itself(tmp_path, images_dir):
    """An unreachable target (nothing agrees 100% but full float) and no budget: the default rules end it."""
    channels = (8,) * 12
    report = _tune(tmp_path, images_dir, accurate_but_slow, strategy="greedy", max_agreement_drop=0.0,
                   min_sqnr_db=199.0, channels=channels, latency_runs=1)
    stopped = report["status"]["stopped_by"]
    search = report["search"]["per_device"]["local"]
    assert stopped == search["stopped_by"]
    assert stopped.startswith("plateau: no better candidate on local in 6 evaluations") or \
        stopped.startswith(f"default budget of {default_budget(len(report['ranking']))} evaluations spent")
    assert search["evaluations"] <= default_budget(len(report["ranking"]))
    assert not report["pareto"]["per_device"]["local"]["target"]["met"]
    # rerun: the search replays what it measured, counts it, and stops at the same point
    again = _tune(tmp_path, images_dir, accurate_but_slow, strategy="greedy", max_agreement_drop=0.0,
                  min_sqnr_db=199.0, channels=channels, latency_runs=1)
    assert again["status"]["evaluations"] == 0 and again["status"]["stopped_by"] == stopped
    assert [c["id"] for c in again["candidates"]] == [c["id"] for c in report["candidates"]]


# -- a farm of two device classes ------------------------------------------------------------------
def test_two_device_classes_get_their_own_recommendation_and_a_comparison(tmp_path):
    """cpu-a runs real onnxruntime; npu-x (tests.device_runtimes:npu_like) has no quantized Gemm and
    runs int8 models twice as fast as FP32. Each class is decided on its own measurements."""
    from coordinator.farm.spec import spec_from_local
    from tests.farm_support import IMAGES, Farm

    model = make_classifier(tmp_path / "tiny.onnx")
    raw = {"name": "two", "devices": ["cpu-a", "npu-x"], "models": [{"path": str(model)}],
           "data": {"images": str(IMAGES), "calibration": 8, "eval": 16, "latency_runs": 3},
           "preprocess": {"input_size": 32}, "strategy": {"max_candidates": 2}}
    spec = spec_from_local(raw, "test", tmp_path)
    assert spec.probe_recipes == ("u8s8", "u8s8-rr", "u8s8-bc-prefix2")   # no recipe pinned: measured
    with Farm(tmp_path / "farm", agents={"cpu-a": "ort", "npu-x": "tests.device_runtimes:npu_like"}) as farm:
        report = farm.run_campaign(spec, timeout_s=240)
    assert report["devices"] == ["cpu-a", "npu-x"]
    probe = report["recipe_probe"]["per_device"]
    assert set(probe) == {"cpu-a", "npu-x"} and set(probe["cpu-a"]["measured"]) == set(spec.probe_recipes)
    assert all(e["status"] == "unsupported" for e in probe["npu-x"]["measured"].values())
    assert probe["npu-x"]["reason"] == "no recipe ran"
    assert set(report["search"]["per_device"]) == {"cpu-a", "npu-x"}

    per_device = report["pareto"]["per_device"]
    by_id = {c["id"]: c for c in report["candidates"]}
    npu = per_device["npu-x"]
    assert npu["recommended"] is not None, npu["policy"]
    chosen = by_id[npu["recommended"]]
    assert "fc" in chosen["excluded_nodes"] and chosen["results"]["npu-x"]["status"] == "ok"   # blamed, kept float
    assert chosen["results"]["npu-x"]["latency_ms_p50"] == pytest.approx(0.5)
    assert npu["policy"]["verdict"].startswith("quantization pays for tiny.onnx on npu-x")
    cpu = per_device["cpu-a"]
    assert cpu["policy"]["prefer"] == "balanced" and cpu["policy"]["verdict"]
    if cpu["recommended"] is not None:                      # real latency: whatever it is, never slower
        assert speed({**by_id[cpu["recommended"]]["results"]["cpu-a"]},
                     report["fp32"]["cpu-a"]) != SLOWER

    comp = report["comparison"]
    assert comp["devices"] == ["cpu-a", "npu-x"]
    assert comp["recommended"] == {"cpu-a": cpu["recommended"], "npu-x": npu["recommended"]}
    assert comp["fp32"]["npu-x"]["latency_ms_p50"] == pytest.approx(1.0)
    rows = {row["candidate"]: row for row in comp["rows"]}
    assert set(rows) == set(by_id)
    full_int8 = [cid for cid, c in by_id.items() if not c["excluded_nodes"]]
    for cid in full_int8:
        assert rows[cid]["divergent"] and rows[cid]["why"].startswith("ok on cpu-a; unsupported on npu-x")
    cell = rows[npu["recommended"]]["per_device"]["npu-x"]
    assert cell["status"] == "ok" and cell["latency_ratio_vs_fp32"] == pytest.approx(0.5)


def test_a_two_class_model_end_to_end_agreement_ties_and_sqnr_decides(tmp_path, images_dir):
    """Both recipes flip the same few of 24 images of a 2-class model and run equally fast here: the
    one with the higher output SQNR is chosen and recommended, and SQNR stands in for agreement in
    the fronts (agreement says nothing on this device)."""
    report = _tune(tmp_path, images_dir, accurate_but_slow, classes=2, strategy="greedy", max_agreement_drop=0.1,
                   probe_recipes=("u8s8", "u8s8-rr"))
    probe = report["recipe_probe"]["per_device"]["local"]
    measured = probe["measured"]
    assert len({e["top1_agreement"] for e in measured.values()}) == 1       # agreement ties
    assert len({e["size_bytes"] for e in measured.values()}) == 1             # same size ...
    assert {e["latency_ratio_vs_fp32"] for e in measured.values()} == {0.5}   # ... and speed
    sqnrs = {name: e["output_sqnr_db"] for name, e in measured.items()}
    assert len(set(sqnrs.values())) == 2                                      # only SQNR differs
    best = max(sqnrs, key=sqnrs.get)
    assert probe["chosen"] == best
    entry = report["pareto"]["per_device"]["local"]
    assert entry["recommended"] == measured[best]["candidate"] and entry["target"]["met"]
    assert entry["objectives"][0] == "fidelity" and "for every candidate" in entry["objectives_note"]
    assert report["search"]["skipped"].startswith("full INT8 with the fixed excludes already meets the target")


def test_a_search_that_makes_no_progress_stops_on_the_plateau(tmp_path, images_dir):
    report = _tune(tmp_path, images_dir, broken_int8, strategy="greedy", max_agreement_drop=0.0,
                   channels=(8,) * 12, latency_runs=1)
    search = report["search"]["per_device"]["local"]
    assert report["status"]["stopped_by"] == "plateau: no better candidate on local in 6 evaluations"
    assert 6 <= search["evaluations"] <= 8 < default_budget(len(report["ranking"]))
    ok = [c["results"]["local"] for c in report["candidates"]]
    assert len({(r["top1_agreement"], r["output_sqnr_db"]) for r in ok}) == 1   # every quantized model equally wrong


def test_export_of_the_recommendation_says_why_there_is_none(tmp_path, images_dir):
    from coordinator import cli

    report = _tune(tmp_path, images_dir, everything_slower, strategy="greedy", max_agreement_drop=0.02,
                   probe_recipes=("u8s8",))
    assert report["pareto"]["recommended"] is None
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "export", str(tmp_path / "out" / "report.json"),
                           "--candidate", "recommended", "--device", "local", "-o", str(tmp_path / "x.onnx")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "recommends no candidate for local: quantization does not pay for m.onnx on local" in proc.stderr
    assert cli.main(["export", str(tmp_path / "out" / "report.json"), "--candidate", "recommended", "--device",
                     "gpu", "-o", str(tmp_path / "x.onnx")]) == 2
