"""Every tuner option is declared once (coordinator/options.py) and reaches the tune the same way
from its CLI flag, from a campaign spec, and through the wire JSON to the coordinator's TuneConfig."""
from __future__ import annotations

import json

import numpy as np
import pytest

from coordinator import options
from coordinator.cli import build_parser, tune_config_from_args
from coordinator.farm.commands import spec_from_tune_args
from coordinator.farm.spec import spec_from_local, spec_from_wire
from coordinator.tune import TuneConfig
from shared.errors import InvalidArgument
from shared.feeds import save_npz
from tests.farm_support import IMAGES
from tests.models import make_classifier


def _other_value(option: options.Option):
    """A valid value that is not the default, for each kind."""
    if option.kind == "int":
        return (option.default or option.minimum or 0) + 2
    if option.kind == "number":
        return 7.5
    if option.kind == "fraction":
        return 0.25
    if option.kind == "bool":
        return not option.default
    if option.kind == "text":
        return "some-dir"
    if option.kind == "shapes":
        return ("input:1x3x32x32",)
    if option.kind == "function":
        return "tests.metric_plugins:mean_abs_error"
    allowed = option.allowed()
    if option.kind == "choice":
        return next(v for v in allowed if v != option.default)
    return (allowed[-1],)


def _flag_args(option: options.Option, value) -> list[str]:
    if option.kind == "bool":
        return [option.flags[0]] if value != option.default else []
    if option.kind == "shapes":            # repeatable: the flag once per value
        return [arg for v in value for arg in (option.flags[0], v)]
    return [option.flags[0], *map(str, value if isinstance(value, tuple) else (value,))]


#: options that apply to tensor datasets only: reached with --data instead of --images
TENSOR_ONLY = ("data_layout",)


@pytest.mark.parametrize("option", options.OPTIONS, ids=lambda o: o.name)
def test_an_option_reaches_the_tune_the_same_way_from_flag_spec_and_wire(option, tmp_path):
    model = make_classifier(tmp_path / "m.onnx")
    value = _other_value(option)
    tensors = option.name in TENSOR_ONLY
    if tensors:
        save_npz(tmp_path / "samples.npz", {"input": np.zeros((4, 3, 32, 32), np.float32)})
    data = ["--data", str(tmp_path / "samples.npz")] if tensors else ["--images", str(IMAGES), "--labels", "synset"]
    base = ["tune", str(model), *data, "--out", str(tmp_path / "o")]
    args = build_parser().parse_args(base + _flag_args(option, value) + ["--coordinator", "127.0.0.1:1",
                                                                        "--devices", "cpu"])
    if not option.spec:                    # a flag of the command only (where it looks), never sent
        assert getattr(args, option.name) == value
        assert option.name not in json.dumps(spec_from_tune_args(args).to_wire())
        return
    from_flag = spec_from_tune_args(args)
    assert getattr(from_flag, option.name) == value
    section = {"data": {"tensors": str(tmp_path / "samples.npz")} if tensors else {"images": str(IMAGES)},
               "strategy": {}}
    raw = {"devices": ["cpu"], "models": [{"path": str(model)}], **section}
    (raw[option.section] if option.section else raw)[option.key] = list(value) if isinstance(value, tuple) else value
    from_spec = spec_from_local(raw, "test", tmp_path)
    assert getattr(from_spec, option.name) == value
    wire = spec_from_wire(from_spec.wire_json())
    assert getattr(wire, option.name) == value and wire.wire_json() == from_spec.wire_json()
    if option.tune:
        assert getattr(tune_config_from_args(args), option.name) == value
        source = {"images": None, "data": tmp_path / "samples.npz"} if tensors else {"images": IMAGES}
        assert getattr(TuneConfig(model, out=tmp_path, **source, **wire.tune_options()), option.name) == value
    else:       # the campaign's own option: not part of what decides results
        (raw[option.section] if option.section else raw).pop(option.key)
        default = spec_from_local(raw, "test", tmp_path)
        assert getattr(default, option.name) == option.default
        assert default.work_key(default.models[0]) == from_spec.work_key(from_spec.models[0])


@pytest.mark.parametrize("name, bad, needle", [
    ("n_eval", 0, "0 must be an integer >= 1"), ("max_agreement_drop", 1.5, "1.5 must be a fraction between 0 and 1"),
    ("budget_seconds", -1, "-1 must be a number > 0"), ("strategy", "annealing", "'annealing' is not one of bisect"),
    ("probe_recipes", ("fp4",), "'fp4' is not one of u8s8"), ("blame_crashes", "yes", "'yes' must be true or false"),
    ("objectives", (), "[] must name at least 1 of accuracy_loss"), ("task", "detection", "'detection' is not one "
    "of auto, classification, dense, generic"), ("metric", "metrics.py", "'metrics.py' must name a function as "
    "module:function"),
    ("input_shape", ("x:1x0x8x8",), "'x:1x0x8x8': dimension 0 must be a positive integer"),
    ("input_shape", ("x1x3",), "'x1x3' is not NAME:DIMS with dimensions joined by 'x'"),
    ("input_shape", ("x:1x3", "x:1x4"), "names input 'x' twice ('x:1x3' and 'x:1x4')"),
    ("input_shape", tuple(f"x{i}:1" for i in range(257)), "names 257 input shapes; at most 256"),
    ("data_layout", "rows", "'rows' is not one of auto, batched, whole-feed")])
def test_a_bad_value_is_named_by_flag_and_by_spec_key(name, bad, needle, tmp_path):
    option = options.BY_NAME[name]
    with pytest.raises(InvalidArgument) as info:
        TuneConfig(tmp_path, IMAGES, tmp_path, **{name: bad})
    assert f"{option.flags[0]} {needle}" in str(info.value)
    errors: list[str] = []
    section = {option.key: list(bad) if isinstance(bad, tuple) else bad}
    options.parse_spec_values(section if not option.section else {}, {option.section: section} if option.section
                              else {}, lambda where, message: errors.append(f"{where}: {message}"))
    assert len(errors) == 1 and errors[0].startswith(f"{option.spec}: {needle}")


def test_help_lists_choices_from_where_they_live():
    text = build_parser()._subparsers._group_actions[0].choices["tune"].format_help()
    assert "(one of: bisect, greedy, nsga2, sweep)" in text.replace("\n", " ").replace("  ", " ")
    assert "--max-drop" in text and "--device-timeout" in text and "--no-blame" in text


def test_flags_and_spec_keys_are_unique():
    flags = [f for o in options.OPTIONS for f in o.flags]
    specs = [o.spec for o in options.OPTIONS if o.spec]
    assert len(flags) == len(set(flags)) and len(specs) == len(set(specs))
    assert json.dumps(options.spec_sections({o.name: o.default for o in options.OPTIONS}))   # JSON-ready
