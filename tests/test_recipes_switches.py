"""The new recipe switches reach the built candidates, deterministically, and bad values are named."""
from __future__ import annotations

import onnx
import pytest

from coordinator.data import Preprocess, list_images, load_batch, split
from coordinator.prepare import prepare_model
from coordinator.quantize import build_candidate, spec_for
from coordinator.tune import RECIPE_PROBES, TuneConfig
from shared.errors import InvalidArgument, ModelError
from shared.settings import QuantSettings
from tests.models import make_classifier

REFINED = QuantSettings(reduce_range=False, recipe={"adaround": "on", "bias_correction": "on"})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, images_dir):
    root = tmp_path_factory.mktemp("w")
    prepared = prepare_model(make_classifier(root / "m.onnx"), root / "prep")
    calibration = {"input": load_batch(split(list_images(images_dir), 8, 8, 0)[0], Preprocess(input_size=32))}
    return root, prepared, calibration


def _build(workspace, settings, where, excluded=()):
    root, prepared, calibration = workspace
    spec = spec_for(prepared, settings, excluded)
    return build_candidate(prepared, spec, root / where / "c", calibration, root / where / "k")


def test_refined_candidate_is_deterministic_and_keeps_the_graph(workspace):
    first, second = _build(workspace, REFINED, "a"), _build(workspace, REFINED, "b")
    plain = _build(workspace, REFINED.replace(recipe={}), "a")
    assert first.id == second.id != plain.id
    assert first.sha256 == second.sha256 != plain.sha256
    ops = [n.op_type for n in onnx.load(str(first.path)).graph.node]
    assert ops == [n.op_type for n in onnx.load(str(plain.path)).graph.node]


def test_off_is_the_same_candidate_as_absent(workspace):
    _, prepared, _ = workspace
    off = QuantSettings(recipe={"adaround": "off", "bias_correction": "off", "float_prefix": "off"})
    assert spec_for(prepared, off, ()).id == spec_for(prepared, QuantSettings(), ()).id


def test_refinement_needs_static_qdq(workspace):
    settings = QuantSettings(format="qoperator", recipe={"bias_correction": "on"})
    with pytest.raises(ModelError, match="bias_correction needs static QDQ"):
        _build(workspace, settings, "q")


@pytest.mark.parametrize("key,value", [("adaround", "yes"), ("bias_correction", "1"), ("float_prefix", "9"),
                                       ("float_prefix", "-1"), ("float_islands", "x")])
def test_bad_switch_value_is_one_line_naming_it(key, value):
    with pytest.raises(InvalidArgument) as caught:
        QuantSettings(recipe={key: value})
    text = str(caught.value)
    assert repr(value) in text and key in text and "\n" not in text


def test_every_probe_is_valid_settings(tmp_path):
    base = QuantSettings()
    for name, changes in RECIPE_PROBES.items():
        changes = dict(changes)
        if "recipe" in changes:
            changes["recipe"] = {**dict(base.recipe), **changes["recipe"]}
        base.replace(**changes)
    new = [n for n in RECIPE_PROBES if "bc" in n or "adaround" in n or "prefix" in n]
    assert new
    TuneConfig(model=tmp_path / "m.onnx", images=tmp_path, out=tmp_path / "o", probe_recipes=tuple(new))


def test_refining_a_qdq_model_with_every_weight_layer_in_float_leaves_it_unchanged(tmp_path):
    """A search can keep every weight layer in float under a refining recipe: nothing to refine is
    not an error (only a non-QDQ model is)."""
    import onnx

    from coordinator.recipes.refine import refine_quantized
    from tests.models import make_classifier

    model = onnx.load(str(make_classifier(tmp_path / "m.onnx")))
    same, report = refine_quantized(model, model, [], bias_correction=True)
    assert same is model and report.layers == 0
