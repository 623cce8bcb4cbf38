"""Search strategies: their logic against a known synthetic response surface, and each one end to
end on a real tiny model under budgets."""
from __future__ import annotations

import json

import pytest

from coordinator import cli
from coordinator.strategies import StrategyContext, make_strategy
from coordinator.strategies.sweep import sweep_ks
from shared.errors import InvalidArgument
from shared.settings import QuantSettings
from tests.models import make_classifier

NODES = tuple(f"n{i}" for i in range(20))
HARMFUL = {"n2": 0.05, "n5": 0.04, "n11": 0.02}   # agreement lost when these stay quantized


def surface(ex) -> dict:
    """Agreement = 1 - damage of harmful nodes still quantized; size grows with float nodes."""
    lost = sum(v for n, v in HARMFUL.items() if n not in ex)
    return {"status": "ok", "top1_agreement": 1.0 - lost, "size_bytes": 100 + 10 * len(ex)}


def drive(strategy, limit=200):
    history, order = {}, []
    for _ in range(limit):
        batch = strategy.next_batch(history)
        if not batch:
            return history, order
        for ex in batch:
            if ex not in history:
                history[ex] = surface(ex)
                order.append(ex)
    raise AssertionError("strategy did not finish")


def ctx(**kw):
    return StrategyContext(ranking=NODES, fixed_excludes=(), **kw)


def meets(drop):
    return lambda r: 1.0 - r["top1_agreement"] <= drop + 1e-9


def test_sweep_caps_evenly():
    assert sweep_ks(20, None) == list(range(21))
    assert sweep_ks(20, 5) == [0, 5, 10, 15, 20]
    _, order = drive(make_strategy("sweep", ctx(max_candidates=3)))
    assert [len(ex) for ex in order] == [0, 10, 20]


def test_bisect_finds_minimal_set_and_prunes():
    history, order = drive(make_strategy("bisect", ctx(meets_target=meets(0.0))))
    met = [ex for ex in order if meets(0.0)(history[ex])]
    smallest = min(met, key=len)
    assert set(smallest) == set(HARMFUL)  # pruning removed every node that does not matter
    assert len(order) < 21                # fewer evaluations than the full sweep


def test_bisect_needs_a_target():
    with pytest.raises(InvalidArgument, match="needs a target"):
        make_strategy("bisect", ctx())


def test_greedy_reverts_harmful_nodes_first():
    history, order = drive(make_strategy("greedy", ctx(meets_target=meets(0.0), parallelism=4)))
    final = order[-1]
    assert meets(0.0)(history[final]) or any(meets(0.0)(history[ex]) for ex in order)
    best = min((ex for ex in order if meets(0.0)(history[ex])), key=len)
    assert set(best) == set(HARMFUL)


def test_nsga2_is_seeded_and_deterministic():
    a_hist, a_order = drive(make_strategy("nsga2", ctx(top_m=12, generations=4, population=6, seed=1)))
    b_hist, b_order = drive(make_strategy("nsga2", ctx(top_m=12, generations=4, population=6, seed=1)))
    assert a_order == b_order and len(a_order) > 6
    assert all(set(ex) <= set(NODES[:12]) for ex in a_order)
    best = max(a_hist.values(), key=lambda r: (r["top1_agreement"], -r["size_bytes"]))
    assert best["top1_agreement"] >= 0.95


def test_unknown_strategy():
    with pytest.raises(InvalidArgument, match="'annealing'"):
        make_strategy("annealing", ctx())


TUNE = ["--input-size", "32", "--calibration", "8", "--eval", "24", "--latency-runs", "1", "--ranking-images", "4"]


@pytest.mark.parametrize("strategy", ["bisect", "greedy", "nsga2"])
def test_strategies_end_to_end_under_budget(tmp_path, images_dir, strategy):
    model = make_classifier(tmp_path / "m.onnx", channels=(8, 16, 16, 16), outlier_layer=1)
    out = tmp_path / "out"
    code = cli.main(["tune", str(model), "--images", str(images_dir), "--out", str(out), *TUNE,
                     "--strategy", strategy, "--max-drop", "0.0", "--budget-evals", "5"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    evaluated = [c for c in report["candidates"] if c["results"]]
    ids = [c["id"] for c in report["candidates"]]
    assert len(ids) == len(set(ids)) and 1 <= len(evaluated) <= 5
    assert report["status"]["evaluations"] == len(evaluated)
    target = report["pareto"]["per_device"]["local"]["target"]
    assert target["line"].startswith("target met" if target["met"] else "target not met")
    assert report["pareto"]["fronts"], "a best-so-far front is always reported"


def test_target_not_met_is_said(tmp_path, images_dir, capsys):
    model = make_classifier(tmp_path / "m.onnx", outlier_layer=0)
    out = tmp_path / "out"
    assert cli.main(["tune", str(model), "--images", str(images_dir), "--out", str(out), *TUNE,
                     "--strategy", "sweep", "--max-top1-drop", "0.0", "--max-drop", "0.0",
                     "--max-candidates", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    target = report["pareto"]["per_device"]["local"]["target"]
    printed = capsys.readouterr().out
    if not target["met"]:
        assert "target not met" in printed
    else:
        assert "target met" in printed


def test_recipe_probe_picks_a_recipe_and_searches_with_it(tmp_path, images_dir):
    model = make_classifier(tmp_path / "m.onnx", outlier_layer=1)
    out = tmp_path / "out"
    assert cli.main(["tune", str(model), "--images", str(images_dir), "--out", str(out), *TUNE,
                     "--probe-recipes", "u8u8", "per-tensor", "--strategy", "greedy", "--max-drop", "0.0",
                     "--budget-evals", "6"]) == 0
    report = json.loads((out / "report.json").read_text())
    probe = report["recipe_probe"]
    assert set(probe["measured"]) == {"base", "u8u8", "per-tensor"}
    chosen = probe["settings"]
    full = {c["id"]: c for c in report["candidates"]}
    for name, row in probe["measured"].items():
        assert full[row["candidate"]]["excluded_nodes"] == []
    searched = [c for c in report["candidates"] if c["excluded_nodes"]]
    assert all(c["settings"] == chosen for c in searched)
    # the most faithful recipe that is not slower than FP32 here (latency is measured, so which that is
    # depends on the machine), unless one meets the target
    from coordinator.measures import SLOWER, speed

    not_slower = [r for r in probe["measured"].values() if speed(r) != SLOWER] or list(probe["measured"].values())
    best = max(r["top1_agreement"] for r in not_slower)
    assert probe["measured"][probe["chosen"]]["top1_agreement"] == best or \
        report["pareto"]["per_device"]["local"]["target"]["met"]
    assert probe["per_device"]["local"]["chosen"] == probe["chosen"]
    assert report["status"]["evaluations"] <= 6


def test_unknown_probe_recipe_is_named(tmp_path, images_dir, capsys):
    model = make_classifier(tmp_path / "m.onnx")
    code = cli.main(["tune", str(model), "--images", str(images_dir), "--out", str(tmp_path / "o"), *TUNE,
                     "--probe-recipes", "int4"])
    assert code == 2 and "'int4'" in capsys.readouterr().err


def test_target_met_by_full_int8_skips_ranking_and_search(tmp_path, images_dir):
    model = make_classifier(tmp_path / "m.onnx")
    out = tmp_path / "out"
    assert cli.main(["tune", str(model), "--images", str(images_dir), "--out", str(out), *TUNE,
                     "--strategy", "bisect", "--max-drop", "1.0", "--reduce-range", "--allow-slower"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"]["evaluations"] == 1 and report["ranking"] == []
    assert report["search"]["skipped"].startswith("full INT8")
    assert report["status"]["stopped_by"].startswith("search skipped: full INT8")
    only = report["candidates"][0]
    assert only["excluded_nodes"] == [] and report["pareto"]["recommended"] == only["id"]
    assert report["pareto"]["per_device"]["local"]["target"]["met"]


def test_ranking_is_reused_across_tunes_that_share_the_cache(tmp_path, images_dir, monkeypatch):
    """The farm links every tune's cache to one folder: a second device class tuning the same model
    and settings gets the ranking without measuring it again. (Builds run in this process here, so
    the measurement can be counted.)"""
    from shared.runners.ort import OrtConfig, OrtRunner
    from coordinator import sensitivity
    from coordinator.buildpool import BuildLimits, BuildPool
    from coordinator.data import Preprocess
    from coordinator.evaluators import LocalEvaluator
    from coordinator.tune import TuneConfig, Tuner

    model = make_classifier(tmp_path / "tiny.onnx")

    def tune(out, device, share=True):
        out.mkdir(parents=True, exist_ok=True)
        if share:
            (out / "cache").symlink_to(tmp_path / "first" / "cache", target_is_directory=True)
        config = TuneConfig(model=model, images=images_dir, out=out, preprocess=Preprocess(input_size=32),
                            n_calibration=8, n_eval=16, settings=QuantSettings(calibration_images=8),
                            ranking_images=4, latency_runs=1, max_candidates=2)
        evaluator = LocalEvaluator(OrtRunner(OrtConfig(intra_op_threads=1)), out / "fp32", device=device)
        return Tuner(config, evaluator, pool=BuildPool(BuildLimits(workers=0))).run()

    first = tune(tmp_path / "first", "cpu-a", share=False)
    measured = []
    original = sensitivity.score_all
    monkeypatch.setattr(sensitivity, "score_all", lambda *a, **k: measured.append(1) or original(*a, **k))
    second = tune(tmp_path / "second", "cpu-b")
    assert measured == [] and second["ranking"] == first["ranking"] and first["ranking"]
    cache = next((tmp_path / "first" / "cache").glob("ranking-*.json"))
    cache.write_text("{torn")                          # a torn cache file is measured again
    third = tune(tmp_path / "third", "cpu-c")
    assert measured == [1] and third["ranking"] == first["ranking"]
    assert json.loads(cache.read_text()) == first["ranking"]


def test_a_strategy_repeating_itself_on_unchanged_results_ends_the_search(tmp_path, images_dir, monkeypatch):
    """The search stops a strategy that never returns [] but only proposes what is measured: once a
    proposal comes back with no new result in between, it would go round forever."""
    from coordinator import strategies
    from coordinator.data import Preprocess
    from coordinator.evaluators import LocalEvaluator
    from coordinator.tune import TuneConfig, Tuner
    from shared.runners.ort import OrtConfig, OrtRunner

    asked = []

    class Circling:                      # full INT8 and one exclusion in turn, forever
        def __init__(self, context):
            self.ranking = context.ranking

        def next_batch(self, history):
            asked.append(len(history))
            return [()] if len(asked) % 2 else [(self.ranking[0],)]

    monkeypatch.setitem(strategies.STRATEGIES, "circling", Circling)
    config = TuneConfig(model=make_classifier(tmp_path / "tiny.onnx"), images=images_dir, out=tmp_path / "out",
                        preprocess=Preprocess(input_size=32), n_calibration=8, n_eval=8,
                        settings=QuantSettings(calibration_images=8), ranking_images=4, latency_runs=0,
                        strategy="circling")
    report = Tuner(config, LocalEvaluator(OrtRunner(OrtConfig(intra_op_threads=1)), tmp_path / "fp32")).run()
    assert report["status"]["evaluations"] == 2
    assert report["status"]["stopped_by"] == "the strategy proposed again what it had already measured (it would loop)"
    assert asked == [0, 1, 2, 2, 2]      # () and (n0,) measured, proposed again, then () a third time: stop
