"""How the decision reads one measured result: its latency ratio to FP32 on the same device, whether
that makes it slower or faster than FP32 beyond the measurement noise, and its fidelity. One place,
so the Pareto objectives, the recipe probe, the search and the recommendation policy agree.

A result is a report entry (`candidates[].results[<device>]` plus the candidate's `size_bytes`).
Agents that time the candidate interleaved with FP32 report `latency_ratio_vs_fp32` (the median of
per-pair ratios) and its spread `latency_ratio_p10/p90`; older results only carry `latency_ms_p50`,
and the ratio is then that p50 over FP32's p50 on the same device (measured at another moment,
so noisier)."""
from __future__ import annotations

import math
from typing import Mapping

#: a candidate is "slower than FP32" when its median ratio exceeds 1 + NOISE_MARGIN, or when even
#: the 10th percentile of its interleaved ratios is above 1 (slower in 90% of the pairs); it is
#: "faster" when the median is below 1 - NOISE_MARGIN or the 90th percentile is below 1. In
#: between it is "within noise": as fast as FP32 as far as the measurement can tell. 5% is about
#: the run-to-run wander of interleaved ratios on a busy 2-core machine (bench/zoo_baseline.py).
NOISE_MARGIN = 0.05
#: SQNR of identical outputs is infinite; objectives and keys clip it here (dB)
SQNR_CAP_DB = 120.0

FASTER, WITHIN_NOISE, SLOWER, UNMEASURED = "faster", "within noise", "slower", "unmeasured"


def is_ok(result: Mapping | None) -> bool:
    return result is not None and result.get("status") == "ok"


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and not math.isnan(value) else None


def fp32_p50(result: Mapping, fp32: Mapping | None = None) -> float | None:
    """FP32's p50 next to this result: timed in the same job when the agent interleaves, else the
    device's FP32 reference (`fp32[<device>]`)."""
    own = _number(result.get("fp32_latency_ms_p50"))
    if own:
        return own
    return _number((fp32 or {}).get("latency_ms_p50")) or None


def latency_ratio(result: Mapping, fp32: Mapping | None = None) -> float | None:
    """Candidate time / FP32 time on the device (lower is better), or None when not measured."""
    ratio = _number(result.get("latency_ratio_vs_fp32"))
    if ratio is not None:
        return ratio
    p50, base = _number(result.get("latency_ms_p50")), fp32_p50(result, fp32)
    return p50 / base if p50 and base else None         # 0 ms: --latency-runs 0, not measured


def speed(result: Mapping, fp32: Mapping | None = None) -> str:
    """FASTER, WITHIN_NOISE, SLOWER or UNMEASURED (see NOISE_MARGIN)."""
    ratio = latency_ratio(result, fp32)
    if ratio is None:
        return UNMEASURED
    p10, p90 = _number(result.get("latency_ratio_p10")), _number(result.get("latency_ratio_p90"))
    if ratio > 1 + NOISE_MARGIN or (p10 is not None and p10 > 1):
        return SLOWER
    if ratio < 1 - NOISE_MARGIN or (p90 is not None and p90 < 1):
        return FASTER
    return WITHIN_NOISE


def sqnr(result: Mapping) -> float | None:
    """Output SQNR in dB (clipped at SQNR_CAP_DB), or None when not measured."""
    value = _number(result.get("output_sqnr_db"))
    return None if value is None else min(value, SQNR_CAP_DB)


def fidelity_key(result: Mapping | None) -> tuple[float, float]:
    """Higher is more faithful: top-1 agreement first, SQNR breaking its ties (few-class models
    saturate agreement); a failed result is below every measured one."""
    if not is_ok(result):
        return (-1.0, -math.inf)
    agreement = result.get("top1_agreement")
    db = sqnr(result)
    return (-1.0 if agreement is None else float(agreement), -math.inf if db is None else db)


def describe_ratio(result: Mapping, fp32: Mapping | None = None) -> str:
    """"0.69x FP32" (with the spread when measured), or "latency not measured"."""
    ratio = latency_ratio(result, fp32)
    if ratio is None:
        return "latency not measured"
    p10, p90 = _number(result.get("latency_ratio_p10")), _number(result.get("latency_ratio_p90"))
    spread = f", p10-p90 {p10:.2f}-{p90:.2f}" if p10 is not None and p90 is not None else ""
    return f"{ratio:.2f}x FP32{spread}"
