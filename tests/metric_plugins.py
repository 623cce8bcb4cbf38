"""User metrics for tests (`--metric tests.metric_plugins:NAME`): each receives the FP32 and the
candidate outputs as {output name: array (N, ...)} and returns {name: number}, or misbehaves on
purpose."""
from __future__ import annotations

import numpy as np


def mean_abs_error(fp32, candidate):
    """Mean absolute difference per output, plus the number of outputs compared."""
    out = {f"mae_{name}": float(np.abs(fp32[name] - candidate[name]).mean()) for name in fp32}
    out["outputs"] = len(fp32)
    return out


def not_a_number(fp32, candidate):
    return {"score": "high"}


def not_a_mapping(fp32, candidate):
    return [1.0, 2.0]


def raises(fp32, candidate):
    raise ValueError("this metric always fails")
