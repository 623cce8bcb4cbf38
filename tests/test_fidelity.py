"""Fidelity for any output (shared/metrics.py) against numbers computed by hand, task detection,
user metrics and their errors, and a few-class model where agreement ties and SQNR decides."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from coordinator.data import Preprocess, list_images, load_batch, split
from coordinator.evaluators import EvalInputs, LocalEvaluator
from coordinator.prepare import prepare_model
from coordinator.quantize import build_candidate, spec_for
from shared.errors import InvalidArgument
from shared.metrics import (SQNR_CAP_DB, MetricError, cosine, dense_iou, detect_task, fidelity, kl_divergence,
                            load_metric, resolve_task, sqnr_db, user_metrics)
from shared.runners.ort import OrtConfig, OrtRunner
from shared.settings import QuantSettings
from tests.models import make_classifier


def test_sqnr_and_cosine_match_the_formulas():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    cand = np.array([[1.0, 2.0], [3.0, 5.0]])
    assert sqnr_db(ref, cand) == pytest.approx(10 * math.log10(30 / 1))          # signal 1+4+9+16, noise 1
    second = (3 * 3 + 4 * 5) / (5 * math.sqrt(9 + 25))
    assert cosine(ref, cand) == pytest.approx((1.0 + second) / 2)
    assert sqnr_db(ref, ref) == SQNR_CAP_DB                                       # identical: capped, finite
    assert sqnr_db(ref, np.full_like(ref, np.nan)) == -SQNR_CAP_DB                # garbage: the other cap
    assert sqnr_db(np.zeros((2, 2)), cand) == -SQNR_CAP_DB
    assert cosine(np.zeros((1, 3)), np.zeros((1, 3))) == 1.0 and cosine(np.zeros((1, 3)), np.ones((1, 3))) == 0.0


def test_kl_divergence_of_logits_and_of_probabilities():
    p = np.exp([0.0, 2.0]) / np.exp([0.0, 2.0]).sum()
    assert kl_divergence(np.array([[0.0, 2.0]]), np.array([[0.0, 0.0]])) == \
        pytest.approx(float(np.sum(p * np.log(p / 0.5))))
    # FP32 rows that are already probabilities are used as they are, not softmaxed again
    assert kl_divergence(np.array([[0.2, 0.8]]), np.array([[0.5, 0.5]])) == \
        pytest.approx(0.2 * math.log(0.2 / 0.5) + 0.8 * math.log(0.8 / 0.5))
    assert kl_divergence(np.array([[0.2, 0.8]]), np.array([[0.2, 0.8]])) == pytest.approx(0.0)


def test_iou_of_probability_maps_score_maps_and_class_maps():
    prob_ref = np.array([[[[0.9, 0.2], [0.6, 0.4]]]])          # (1, 1, 2, 2): mask [[1, 0], [1, 0]] at 0.5
    prob_cand = np.array([[[[0.7, 0.6], [0.4, 0.1]]]])         # mask [[1, 1], [0, 0]]
    assert dense_iou(prob_ref, prob_cand) == pytest.approx(1 / 3)
    logit_ref = np.array([[[2.0, -1.0], [0.5, -3.0]]])          # (1, 2, 2) logits: thresholded at 0
    logit_cand = np.array([[[1.0, 1.0], [-1.0, -2.0]]])
    assert dense_iou(logit_ref, logit_cand) == pytest.approx(1 / 3)
    classes_ref = np.zeros((1, 3, 2, 2))
    classes_cand = np.zeros((1, 3, 2, 2))
    for (i, j), k in {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 2}.items():
        classes_ref[0, k, i, j] = 5.0
    for (i, j), k in {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 0}.items():
        classes_cand[0, k, i, j] = 5.0
    assert dense_iou(classes_ref, classes_cand) == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)   # argmax, mean IoU
    assert dense_iou(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2))) == 1.0                  # both empty


def test_task_detection_and_forced_tasks():
    n = 3
    assert detect_task({"logits": np.zeros((n, 1000))}) == "classification"
    assert detect_task({"logits": np.zeros((n, 1000, 1, 1))}) == "classification"   # SqueezeNet-style
    assert detect_task({"prob": np.zeros((n, 1, 8, 8))}) == "dense"
    assert detect_task({"depth": np.zeros((n, 8, 8))}) == "dense"
    assert detect_task({"score": np.zeros((n, 1))}) == "generic"
    assert detect_task({"score": np.zeros((n,)), "map": np.zeros((n, 2, 4, 4))}) == "dense"
    with pytest.raises(InvalidArgument, match=r"--task dense needs an output with spatial dims.*logits \[3, 10\]"):
        resolve_task("dense", {"logits": np.zeros((n, 10))})
    with pytest.raises(InvalidArgument, match="--task classification needs"):
        resolve_task("classification", {"score": np.zeros((n, 1))})


def test_fidelity_per_output_and_overall():
    rng = np.random.default_rng(0)
    ref = {"logits": rng.normal(size=(5, 4)), "pooled": rng.normal(size=(5, 16))}
    cand = {"logits": ref["logits"] + 0.1, "pooled": ref["pooled"] * 0.9}
    fid = fidelity(ref, cand, "auto")
    assert fid.task == "classification" and fid.accuracy.top1_agreement == 1.0      # +0.1 keeps every argmax
    logits, pooled = fid.outputs
    assert (logits.name, pooled.name) == ("logits", "pooled")
    assert logits.sqnr_db == pytest.approx(sqnr_db(ref["logits"], cand["logits"])) and pooled.kl is None
    assert logits.kl == pytest.approx(kl_divergence(ref["logits"], cand["logits"])) == fid.kl_divergence
    signal = (ref["logits"] ** 2).sum() + (ref["pooled"] ** 2).sum()
    noise = 0.1 ** 2 * 20 + ((0.1 * ref["pooled"]) ** 2).sum()
    assert fid.output_sqnr_db == pytest.approx(10 * math.log10(signal / noise))   # all outputs concatenated
    assert fid.iou is None
    with pytest.raises(Exception, match="shape"):
        fidelity(ref, {**cand, "pooled": cand["pooled"][:, :3]}, "auto")


def test_user_metrics_return_numbers_or_a_one_line_error():
    ref, cand = {"y": np.ones((2, 3))}, {"y": np.zeros((2, 3))}
    fn = load_metric("tests.metric_plugins:mean_abs_error")
    assert user_metrics("m", fn, ref, cand) == {"mae_y": 1.0, "outputs": 1.0}
    cases = {"tests.metric_plugins:not_a_number": "score='high', not a finite number",
             "tests.metric_plugins:not_a_mapping": "returned [1.0, 2.0]; expected a mapping",
             "tests.metric_plugins:raises": "raised ValueError: this metric always fails"}
    for spec, needle in cases.items():
        with pytest.raises(MetricError, match=re.escape(needle)) as info:
            user_metrics(spec, load_metric(spec), ref, cand)
        assert "\n" not in str(info.value) and spec in str(info.value)
    with pytest.raises(MetricError, match="cannot import module 'no_such_metrics_module'"):
        load_metric("no_such_metrics_module:score")
    with pytest.raises(MetricError, match="has no function 'nope'"):
        load_metric("tests.metric_plugins:nope")
    with pytest.raises(InvalidArgument, match="must name a function as module:function"):
        load_metric("metrics.py")


def test_two_class_model_agreement_ties_and_sqnr_tells_candidates_apart(tmp_path, images_dir):
    """Few classes: every candidate keeps 100% agreement, so agreement cannot rank them; SQNR can."""
    path = make_classifier(tmp_path / "two.onnx", classes=2, outlier_layer=1)
    model = onnx.load(str(path))
    bias = next(t for t in model.graph.initializer if t.name == "fc.b")
    bias.CopyFrom(numpy_helper.from_array(np.array([40.0, 0.0], np.float32), "fc.b"))   # class 0 by a wide margin
    onnx.save(model, str(path))
    prepared = prepare_model(path, tmp_path / "prepared")
    calib, evals = split(list_images(images_dir), 16, 24, 0)
    pre = Preprocess(input_size=32)
    calibration = {"input": load_batch(calib, pre)}
    data = EvalInputs({"input": load_batch(evals, pre)}, None, 0)
    evaluator = LocalEvaluator(OrtRunner(OrtConfig(intra_op_threads=1)), tmp_path / "cache", latency_lock=None)
    evaluator.reference(prepared.path, prepared.sha256, data)
    settings = QuantSettings(per_channel=False, calibration_images=16)
    built = [build_candidate(prepared, spec_for(prepared, settings, excluded), tmp_path / "c", calibration,
                             tmp_path / "k") for excluded in ((), ("conv1",))]
    results = {cid: r for cid, _, r in evaluator.evaluate(built, data)}
    full, one_float = (results[c.id] for c in built)
    assert full.top1_agreement == one_float.top1_agreement == 1.0
    assert one_float.output_sqnr_db > full.output_sqnr_db + 1.0          # the outlier layer in float: closer
    for r in (full, one_float):
        json.dumps(r.to_report(), allow_nan=False)                       # finite numbers only
