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
    # refinements of the fast u8s8 recipe: integers only (same graph, same kernels) and a float
    # prefix from the input (notes/recipes.md has the measurements)
    "u8s8-bc": {"reduce_range": False, "recipe": {"bias_correction": "on"}},
    "u8s8-adaround": {"reduce_range": False, "recipe": {"adaround": "on"}},
    "u8s8-adaround-bc": {"reduce_range": False, "recipe": {"adaround": "on", "bias_correction": "on"}},
    "u8s8-prefix2": {"reduce_range": False, "recipe": {"float_prefix": "2"}},
    "u8s8-bc-prefix2": {"reduce_range": False, "recipe": {"bias_correction": "on", "float_prefix": "2"}},
    "u8s8-adaround-bc-prefix2": {"reduce_range": False,
                                 "recipe": {"adaround": "on", "bias_correction": "on", "float_prefix": "2"}},
}

#: sensitivity rankings, measured in one pass (coordinator/sensitivity); the chosen one orders the search
RANKING_METHODS = ("seqto", "quantune")

#: strategies that look for the smallest candidate meeting a target (not for a whole front)
TARGET_DRIVEN = ("bisect", "greedy")

#: what the recommendation policy optimises among candidates that are faithful enough and not
#: slower than FP32 (coordinator/policy.py)
PREFERENCES = ("balanced", "latency", "size")

#: recipes probed when the user names none and leaves reduce_range unset: 7-bit weights rescue u8s8
#: on CPUs without VNNI and cost accuracy on CPUs with it, so neither is a safe default; both are
#: cheap, and each device class takes the one it measures best. u8s8-bc-prefix2 (bias correction and
#: the first two layers in float: same int8 kernels, +12-15 CPU s of build) met EfficientNet-Lite0's
#: 99% agreement target on three data splits where u8s8 met it on none (notes in bench/recipes.py)
AUTO_PROBES = ("u8s8", "u8s8-rr", "u8s8-bc-prefix2")
