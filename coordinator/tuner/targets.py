"""Targets of a tune and whether a result meets them: top-1 agreement with FP32
(max_agreement_drop), labelled top-1 against the FP32 model's (max_top1_drop), and fidelity of the
outputs to FP32's (min_sqnr_db, min_cosine, min_iou). A target whose metric a result does not carry
is not met by it: nothing is assumed. Which meeting candidate is recommended is the policy's call
(coordinator/policy.py)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

EPSILON = 1e-12     # a result exactly at the target meets it, whatever the float rounding

#: the lower bounds on a fidelity metric: target field -> (result key, how it is shown)
FLOORS = {"min_sqnr_db": ("output_sqnr_db", "SQNR {:.1f} dB"), "min_cosine": ("cosine", "cosine {:.4f}"),
          "min_iou": ("iou", "IoU {:.3f}")}


@dataclass(frozen=True)
class Targets:
    max_agreement_drop: float | None = None
    max_top1_drop: float | None = None
    min_sqnr_db: float | None = None
    min_cosine: float | None = None
    min_iou: float | None = None

    @classmethod
    def from_config(cls, config: Any) -> "Targets":
        """The targets among an object's fields (TuneConfig, CampaignSpec)."""
        return cls(**{f.name: getattr(config, f.name, None) for f in fields(cls)})

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def to_dict(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def misses(self, result: Mapping, fp32_top1: float | None) -> list[str]:
        """What keeps `result` (a report entry) from meeting the targets, one phrase each; [] = met.
        `fp32_top1`: the FP32 model's labelled top-1 on the same device (None when unlabelled)."""
        if result.get("status") != "ok":
            return [f"status {result.get('status')}"]
        out = []
        if self.max_agreement_drop is not None:
            agreement = result.get("top1_agreement")
            if agreement is None:
                out.append("agreement not measured")
            elif 1.0 - agreement > self.max_agreement_drop + EPSILON:
                out.append(f"agreement {agreement * 100:.1f}% < {(1 - self.max_agreement_drop) * 100:.1f}%")
        if self.max_top1_drop is not None:
            top1 = result.get("top1_accuracy")
            if fp32_top1 is None or top1 is None:
                out.append("labelled top-1 not measured")
            elif fp32_top1 - top1 > self.max_top1_drop + EPSILON:
                out.append(f"top-1 {top1 * 100:.1f}% < FP32 {fp32_top1 * 100:.1f}% - "
                           f"{self.max_top1_drop * 100:.1f} pt")
        for name, (key, shown) in FLOORS.items():
            floor = getattr(self, name)
            if floor is None:
                continue
            value = result.get(key)
            if not isinstance(value, (int, float)) or value != value:       # absent or NaN
                out.append(f"{shown.split()[0]} not measured")
            elif value < floor - EPSILON:
                out.append(f"{shown.format(value)} < {shown.format(floor).split(' ', 1)[1]}")
        return out

    def meets(self, result: Mapping, fp32_top1: float | None) -> bool:
        return not self.misses(result, fp32_top1)

    def closeness(self, result: Mapping, fp32_top1: float | None) -> tuple[int, float]:
        """How close `result` comes to the targets, higher is closer: fewer targets missed first,
        then the smaller summed shortfall, each in the target's own metric (agreement, top-1,
        cosine and IoU as fractions, SQNR with 1 dB counted like 1 point). A target on IoU is
        approached by IoU, not by agreement or SQNR; (0, 0.0) is met."""
        if result.get("status") != "ok":
            return (-len(fields(self)) - 1, -float("inf"))
        shortfalls = []
        if self.max_agreement_drop is not None:
            shortfalls.append(_short(result.get("top1_agreement"), 1.0 - self.max_agreement_drop))
        if self.max_top1_drop is not None:
            floor = None if fp32_top1 is None else fp32_top1 - self.max_top1_drop
            shortfalls.append(_short(result.get("top1_accuracy"), floor))
        for name, (key, _) in FLOORS.items():
            floor = getattr(self, name)
            if floor is not None:
                scale = 100.0 if name == "min_sqnr_db" else 1.0
                shortfalls.append(_short(result.get(key), floor, scale))
        missed = [x for x in shortfalls if x > EPSILON]
        return (-len(missed), -sum(missed))


def _short(value: Any, floor: float | None, scale: float = 1.0) -> float:
    """How far `value` is below `floor` (0 when it is not), in units of `scale`; a metric not
    measured is as far as it can be."""
    if floor is None or not isinstance(value, (int, float)) or value != value:
        return float("inf")
    return max(0.0, (floor - float(value)) / scale)
