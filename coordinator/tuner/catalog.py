"""What the tuner offers by name, in a module that imports nothing of the tuner: the options
schema (coordinator/options.py) lists these as choices, the phases use them."""
from __future__ import annotations

from typing import Any

#: recipes the tuner can probe as whole-model INT8 before searching exclusions (the recipe often
#: matters more than which nodes stay in float, README "Recipes"); each is a change to the base settings
RECIPE_PROBES: dict[str, dict[str, Any]] = {
    "u8s8": {"reduce_range": False},
    "u8s8-rr": {"reduce_range": True},
    "s8s8-rr": {"activation_type": "int8", "reduce_range": True},
    "u8u8": {"weight_type": "uint8", "reduce_range": False},
    "qoperator-s8s8": {"format": "qoperator", "activation_type": "int8", "reduce_range": False},
    "per-tensor": {"per_channel": False},
    "entropy": {"calibrate": "entropy"},
    "cle": {"recipe": {"cle": "on"}},
}

#: sensitivity rankings, measured in one pass (coordinator/sensitivity); the chosen one orders the search
RANKING_METHODS = ("seqto", "quantune")

#: strategies that look for the smallest candidate meeting a target (not for a whole front)
TARGET_DRIVEN = ("bisect", "greedy")
