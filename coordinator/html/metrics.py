"""Which numbers a page shows and how, derived from what the results contain.

Known result keys get a label, a unit and a direction (higher or lower is better). Any other number
in a result, at any depth (a metric a later tuner adds, a per-output fidelity, a user metric), still
gets a column, labelled by its dotted key: the renderer is never tied to one report version's keys."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Metric:
    key: str                 # dotted path in a flattened result
    label: str
    kind: str = "number"     # pct | mb | ms | ratio | db | int | number
    better: str = ""         # higher | lower | "" (no direction)
    title: str = ""


KNOWN: tuple[Metric, ...] = (
    Metric("top1_agreement", "top-1 agree %", "pct", "higher", "share of images whose top-1 class equals FP32's"),
    Metric("top5_agreement", "top-5 agree %", "pct", "higher", "share of images whose FP32 top-1 is in the top-5"),
    Metric("output_sqnr_db", "output SQNR dB", "db", "higher", "SQNR of the outputs against FP32's"),
    Metric("kl_divergence", "KL div", "number", "lower", "KL divergence of the output distribution from FP32's"),
    Metric("cosine", "cosine", "number", "higher", "cosine similarity of the outputs to FP32's"),
    Metric("iou", "IoU", "number", "higher", "IoU of thresholded output masks against FP32's"),
    Metric("top1_accuracy", "top-1 %", "pct", "higher", "labelled top-1 accuracy"),
    Metric("top5_accuracy", "top-5 %", "pct", "higher", "labelled top-5 accuracy"),
    Metric("size_bytes", "size MB", "mb", "lower", "model file size"),
    Metric("latency_ms_p50", "p50 ms", "ms", "lower", "batch-1 latency, median"),
    Metric("latency_ms_p90", "p90 ms", "ms", "lower", "batch-1 latency, 90th percentile"),
    Metric("latency_ratio_vs_fp32", "p50 / FP32", "ratio", "lower",
           "candidate p50 divided by FP32 p50 on the same device (below 1: faster)"),
)
KNOWN_BY_KEY = {m.key: m for m in KNOWN}

#: result keys that are bookkeeping, not measurements of the candidate
NOT_METRICS = frozenset({"status", "crash_cause", "stderr_tail", "stderr", "runtime", "num_images", "wall_seconds",
                         "attempt", "finished_at", "started_at", "origin", "agent", "host"})

#: fidelity keys, best first: the first one a report has is what charts put on the accuracy axis
FIDELITY_KEYS = ("top1_agreement", "output_sqnr_db", "cosine", "iou", "top1_accuracy")


def flatten(result: Any, prefix: str = "", depth: int = 3) -> dict[str, float]:
    """Numbers of a result by dotted key (nested dicts included, bookkeeping and booleans left out)."""
    flat: dict[str, float] = {}
    if not isinstance(result, Mapping) or depth < 0:
        return flat
    for key, value in result.items():
        if not isinstance(key, str) or (not prefix and key in NOT_METRICS):
            continue
        dotted = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            if math.isfinite(value):
                flat[dotted] = float(value)
        elif isinstance(value, Mapping):
            flat.update(flatten(value, dotted + ".", depth - 1))
    return flat


def guess(key: str) -> Metric:
    """A metric this renderer has no entry for, typed from its name."""
    if key in KNOWN_BY_KEY:
        return KNOWN_BY_KEY[key]
    leaf = key.rsplit(".", 1)[-1]
    known = KNOWN_BY_KEY.get(leaf)
    if known is not None:    # a per-output value of a known metric: outputs.logits.output_sqnr_db
        return Metric(key, f"{key.rsplit('.', 1)[0]} {known.label}", known.kind, known.better, known.title)
    label = key.replace("_", " ")
    if leaf.endswith("_db"):
        return Metric(key, label, "db", "higher")
    if "ratio" in leaf:
        return Metric(key, label, "ratio", "lower")
    if leaf.endswith("_ms") or "_ms_" in leaf or leaf.startswith("latency"):
        return Metric(key, label, "ms", "lower")
    if leaf.endswith("_bytes"):
        return Metric(key, label, "mb", "lower")
    if leaf.endswith(("agreement", "accuracy")):
        return Metric(key, label, "pct", "higher")
    return Metric(key, label)


def columns(flat_results: Iterable[Mapping[str, float]]) -> list[Metric]:
    """Known metrics present in any result, in catalogue order, then the others in order of appearance."""
    seen: dict[str, None] = {}
    for flat in flat_results:
        for key in flat:
            seen.setdefault(key)
    known = [m for m in KNOWN if m.key in seen]
    return known + [guess(k) for k in seen if k not in KNOWN_BY_KEY]


def _sig(value: float) -> str:
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt(metric: Metric | None, value: Any) -> str:
    """A value as a table shows it ('-' when missing)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    kind = metric.kind if metric else "number"
    if kind == "pct":
        return f"{value * 100:.1f}"
    if kind == "mb":
        return _sig(value / 1e6)
    if kind == "ms":
        return _sig(value)
    if kind == "ratio":
        return f"{value:.2f}x"
    if kind == "db":
        return f"{value:.1f}"
    if kind == "int" or (isinstance(value, int) and kind == "number"):
        return f"{value:d}" if isinstance(value, int) else f"{value:.0f}"
    return f"{value:.4g}"


def axis_value(metric: Metric, value: float) -> float:
    """The value a chart axis plots (percent as 0-100, bytes as MB)."""
    if metric.kind == "pct":
        return value * 100
    if metric.kind == "mb":
        return value / 1e6
    return value
