"""The model zoo's declarations and the helpers of bench/zoo.py and bench/models.py (no network, no
packages installed: the zoo's fetch itself is exercised by running it, see bench/zoo.py)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import zoo  # noqa: E402

# bench/models.py under its own name: `models` alone could be another module (tests/models.py)
_spec = importlib.util.spec_from_file_location("bench_models", BENCH / "models.py")
bench_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_models)
from coordinator.cli import build_parser, preprocess_from_args  # noqa: E402


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_declaration_is_complete_and_pinned(name):
    m = zoo.ZOO[name]
    assert m.name == name
    assert m.task in ("classification", "dense", "generic")
    assert m.data in zoo.BUILDERS
    assert m.labels in ("synset", "rotation", "none")
    assert all("==" in p for p in m.source.packages), m.source.packages
    assert m.source.kind in ("wheel", "sdist", "export")
    assert m.source.kind == "export" or m.source.member.endswith(".onnx")
    if m.task == "classification" and m.labels == "rotation":
        assert len(m.classes) in (2, 4)


@pytest.mark.parametrize("name", sorted(n for n, m in zoo.ZOO.items() if m.images))
def test_qfarm_flags_reproduce_the_zoo_preprocessing(name):
    """`coordinator tune --images data/images <qfarm_flags>` must feed the tensors the npz files hold."""
    m = zoo.ZOO[name]
    args = build_parser().parse_args(["tune", "m.onnx", "--out", "o", "--images", "i", *m.images.qfarm_flags()])
    assert preprocess_from_args(args) == m.images.preprocess()


def test_textline_tensor_keeps_aspect_and_pads_with_zero():
    crop = np.full((20, 40, 3), 255, np.uint8)           # aspect 2 -> 96 of 192 columns
    x = zoo.textline_tensor(crop)
    assert x.shape == zoo.TEXTLINE_SHAPE
    assert np.allclose(x[:, :, :96], 1.0) and np.all(x[:, :, 96:] == 0.0)
    wide = zoo.textline_tensor(np.zeros((10, 400, 3), np.uint8))   # wider than 4:1 -> squeezed to 192
    assert np.allclose(wide, -1.0)


def test_text_lines_keep_line_shaped_boxes_only():
    boxes = [(0, 0, 60, 20), (0, 0, 20, 20), (0, 0, 100, 5), (0, 0, 300, 120)]
    assert zoo.text_lines(boxes, height=300) == [(0, 0, 60, 20)]


def test_vad_frames_carry_64_samples_of_context():
    audio = np.arange(2 * zoo.VAD_FRAME + 10, dtype=np.float32)
    frames = zoo.vad_frames(audio)
    assert frames.shape == (2, zoo.VAD_FRAME + zoo.VAD_CONTEXT)
    assert np.all(frames[0, :zoo.VAD_CONTEXT] == 0) and frames[0, zoo.VAD_CONTEXT] == 0.0
    assert frames[1, 0] == zoo.VAD_FRAME - zoo.VAD_CONTEXT and frames[1, -1] == 2 * zoo.VAD_FRAME - 1


def test_split_is_disjoint_and_shrinks_to_what_exists():
    cal, ev = zoo.split_indices(87, 16, 50)
    assert (len(cal), len(ev)) == (16, 50) and not set(cal) & set(ev)
    cal, ev = zoo.split_indices(40, 64, 200)
    assert (len(cal), len(ev)) == (10, 30) and not set(cal) & set(ev)


def _report(**rec_result):
    settings = {"reduce_range": False}
    return {"model": {"size_bytes": 1000}, "status": {"evaluations": 5},
            "fp32": {"local": {"latency_ms_p50": 10.0, "size_bytes": 1000}},
            "pareto": {"recommended": "b", "per_device": {"local": {"recommended": "b",
                                                                    "target": {"met": True}}}},
            "candidates": [
                {"id": "a", "num_excluded": 0, "size_bytes": 200, "settings": settings, "results": {}},
                {"id": "x", "num_excluded": 0, "size_bytes": 100, "settings": {"reduce_range": True}, "results": {}},
                {"id": "b", "num_excluded": 2, "size_bytes": 300, "settings": settings,
                 "results": {"local": {"latency_ms_p50": 6.0, "top1_agreement": 0.99, **rec_result}}}]}


def test_models_row_reads_missing_keys_as_none_and_recomputes_the_ratio():
    row = bench_models.row_from_report(_report())
    assert row["ratio"] == pytest.approx(0.6) and row["ratio_source"] == "recomputed"
    assert row["sqnr_db"] is None and row["target_met"] is True and row["evaluations"] == 5
    # size kept against the full-INT8 candidate of the SAME recipe: (1000-300)/(1000-200)
    assert row["size_kept"] == pytest.approx(0.875)


def test_recipe_is_named_from_the_recommended_candidates_settings():
    assert bench_models.row_from_report(_report())["recipe"] == "u8s8"
    assert bench_models.recipe_label({"activation_type": "int8", "weight_type": "int8", "reduce_range": True,
                                      "format": "qdq", "recipe": {"cle": "on"}}) == "s8s8-rr cle=on"


def test_models_row_prefers_the_reports_own_ratio_and_sqnr():
    row = bench_models.row_from_report(_report(latency_ratio_vs_fp32=0.7, output_sqnr_db={"logits": 21.5}))
    assert row["ratio"] == 0.7 and row["ratio_source"] == "report" and row["sqnr_db"] == 21.5
    dense = bench_models.row_from_report(_report(iou=0.91, cosine=0.998))
    assert dense["iou"] == 0.91 and dense["cosine"] == 0.998


def test_candidate_rows_show_the_trade_off_of_a_sweep():
    report = _report(output_sqnr_db=12.0, iou=0.8, cosine=0.99, latency_ratio_vs_fp32=0.7, status="ok",
                     outputs={"prob": {"sqnr_db": 12.0}})
    rows = bench_models.candidate_rows(report)
    assert [(r["float_layers"], r["sqnr_db"], r["iou"], r["ratio"], r["outputs"]) for r in rows] == \
        [(2, 12.0, 0.8, 0.7, {"prob": 12.0})]


def test_a_farm_report_is_read_on_its_device_class():
    report = {**_report(latency_ratio_vs_fp32=0.7), "devices": ["local"]}
    text = json.dumps(report).replace('"local"', '"cpu-bench"')
    row = bench_models.row_from_report(json.loads(text))
    assert row["ratio"] == 0.7 and row["fp32_p50_ms"] == 10.0 and row["agreement"] == 0.99


def test_models_table_prints_dashes_and_reasons(capsys):
    row = {"name": "m", "task": "classification", "wall_s": 3.0, **bench_models.row_from_report(_report())}
    bench_models.print_table([row, {"name": "d", "task": "dense", "unsupported": "dynamic H/W"}])
    out = capsys.readouterr().out
    assert "| m | classification | local | 10.00 | 6.00 | 0.60~ | 99.0 | - | - | - | - | 88 |" in out
    assert "not run: dynamic H/W" in out


def test_sqnr_and_iou_are_the_textbook_numbers():
    import zoo_baseline as zb

    ref = np.array([1.0, 1.0])
    assert zb.sqnr_db(ref, np.array([1.1, 0.9])) == pytest.approx(20.0)   # 10 log10(2 / 0.02)
    assert zb.sqnr_db(ref, ref) == float("inf")
    a, b = np.array([0.9, 0.9, 0.1, 0.1]), np.array([0.9, 0.1, 0.9, 0.1])
    assert zb.iou(a, b, 0.3) == pytest.approx(1 / 3)
    assert zb.iou(np.zeros(4), np.zeros(4), 0.3) == 1.0


def test_npz_samples_feed_scalars_as_0d_arrays(tmp_path):
    import zoo_baseline as zb

    np.savez(tmp_path / "d.npz", **{"input:0": np.zeros((3, 1, 4), np.float32), "sr": np.full(3, 16000, np.int64)})
    feeds = zb.samples(tmp_path / "d.npz")
    assert len(feeds) == 3 and feeds[0]["input:0"].shape == (1, 4)
    assert isinstance(feeds[0]["sr"], np.ndarray) and feeds[0]["sr"].shape == ()


def test_interleaved_reports_a_ratio_per_candidate():
    """Shape of the result only: no timing is asserted."""
    import zoo_baseline as zb

    class Fake:
        def __init__(self, n):
            self.n = n

        def run(self, _outputs, _feed):
            return sum(range(self.n))

    out = zb.interleaved({"fp32": Fake(200), "int8": Fake(20)}, {}, rounds=3, runs=2)
    assert set(out) == {"fp32", "int8"} and "ratio_median" not in out["fp32"]
    assert out["int8"]["ratio_p10"] <= out["int8"]["ratio_median"] <= out["int8"]["ratio_p90"]
