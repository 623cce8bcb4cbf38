"""Quantization settings: one frozen value, validated at construction, with one canonical
serialisation that enters candidate ids, the report and the wire."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from shared.errors import InvalidArgument

MODES = ("static", "dynamic")
FORMATS = ("qdq", "qoperator")
CALIBRATIONS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8")
#: recipe switches: key -> allowed values ("keep_float" takes a comma list of presets)
RECIPES = {
    "cle": ("off", "on", "relu6"),            # cross-layer equalisation (relu6: also through ReLU6)
    "keep_float": ("depthwise", "first", "last", "first-last"),
    "adaround": ("off", "on"),                # learned weight rounding (QDQ static only)
    "bias_correction": ("off", "on"),         # per-channel bias absorbs the rounding's mean shift
    "float_prefix": ("off", "1", "2", "3", "4"),  # first k compute layers from the input stay float
    # float layers between QDQ nodes: "pinned" (default) keeps them float under onnxruntime's optimizers,
    # "plain" leaves the quantizer's DQ -> float layer -> Q, which onnxruntime's CPU EP re-quantizes
    "float_islands": ("pinned", "plain"),
}
#: recipes that only edit the integers of the built model
REFINE_RECIPES = ("adaround", "bias_correction")
#: recipes the calibrated ranges do not depend on (they act on the built model or on which nodes
#: are quantized, and excluding nodes does not change FP32 activations)
CALIBRATION_FREE_RECIPES = (*REFINE_RECIPES, "float_prefix", "float_islands")
#: recipe switches whose default value is the same as leaving them out (so candidate ids stay stable)
_DEFAULT_IS_ABSENT = {"cle": "off", "adaround": "off", "bias_correction": "off", "float_prefix": "off",
                      "float_islands": "pinned"}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidArgument(f"{name}={value!r} is not one of {', '.join(allowed)}", step="settings")


@dataclass(frozen=True)
class QuantSettings:
    """Everything that decides how a candidate is quantized, except which nodes stay float."""

    mode: str = "static"
    format: str = "qdq"
    per_channel: bool = True
    reduce_range: bool = True   # a starting point only: the tuner probes both per device unless pinned
    calibrate: str = "minmax"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    calibration_images: int = 64
    recipe: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("format", self.format, FORMATS)
        _choice("calibrate", self.calibrate, CALIBRATIONS)
        _choice("activation_type", self.activation_type, ACTIVATION_TYPES)
        _choice("weight_type", self.weight_type, WEIGHT_TYPES)
        for flag in ("per_channel", "reduce_range"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidArgument(f"{flag}={getattr(self, flag)!r} must be true or false", step="settings")
        if not isinstance(self.calibration_images, int) or isinstance(self.calibration_images, bool) \
                or self.calibration_images < 1:
            raise InvalidArgument(
                f"calibration_images={self.calibration_images!r} must be a positive integer", step="settings")
        if not isinstance(self.recipe, Mapping):
            raise InvalidArgument(f"recipe={self.recipe!r} must be a table of switches, e.g. {{cle = \"on\"}}",
                                  step="settings")
        recipe = dict(self.recipe)
        for key, value in recipe.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidArgument(f"recipe entry {key!r}={value!r} must map text to text", step="settings")
            if key not in RECIPES:
                raise InvalidArgument(f"unknown recipe {key!r}; known: {', '.join(RECIPES)}", step="settings")
            values = value.split(",") if key == "keep_float" else [value]
            for item in values:
                if item not in RECIPES[key]:
                    raise InvalidArgument(f"recipe {key}={item!r} is not one of {', '.join(RECIPES[key])}",
                                          step="settings")
        recipe = {k: v for k, v in recipe.items() if _DEFAULT_IS_ABSENT.get(k) != v}
        object.__setattr__(self, "recipe", MappingProxyType(dict(sorted(recipe.items()))))

    def __hash__(self) -> int:  # recipe is a read-only mapping; hash the canonical text instead
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def is_static(self) -> bool:
        return self.mode == "static"

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["recipe"] = dict(self.recipe)
        return data

    def canonical(self) -> str:
        """Stable text for hashing: the same settings always give the same bytes."""
        data = self.to_dict()
        if self.mode == "dynamic":  # onnxruntime's dynamic path has no format, types or calibration
            for unused in ("format", "calibrate", "calibration_images", "activation_type"):
                data.pop(unused)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"unknown quantization setting(s): {', '.join(unknown)}", step="settings")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "QuantSettings":
        return dataclasses.replace(self, **changes)
