"""Targets of a tune and whether a result meets them: top-1 agreement with FP32
(max_agreement_drop) and labelled top-1 against the FP32 model's (max_top1_drop)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

EPSILON = 1e-12     # a result exactly at the target meets it, whatever the float rounding


@dataclass(frozen=True)
class Targets:
    max_agreement_drop: float | None = None
    max_top1_drop: float | None = None

    @property
    def any(self) -> bool:
        return self.max_agreement_drop is not None or self.max_top1_drop is not None

    def meets(self, result: Mapping, fp32_top1: float | None) -> bool:
        """`result`: a report entry (with size_bytes); `fp32_top1`: the FP32 model's labelled top-1
        on the same device (None when unlabelled)."""
        if result.get("status") != "ok":
            return False
        if self.max_agreement_drop is not None and (result.get("top1_agreement") is None or
                                                    1.0 - result["top1_agreement"] > self.max_agreement_drop + EPSILON):
            return False
        if self.max_top1_drop is not None:
            if fp32_top1 is None or result.get("top1_accuracy") is None:
                return False
            if fp32_top1 - result["top1_accuracy"] > self.max_top1_drop + EPSILON:
                return False
        return True

    def summary(self, device: str, results: Mapping[str, Mapping], fp32_top1: float | None) -> dict | None:
        """The report's `pareto.per_device[<device>].target`: whether a candidate meets the targets
        (the smallest that does is recommended) and one line saying so."""
        if not self.any:
            return None
        meeting = [cid for cid, r in results.items() if self.meets(r, fp32_top1)]
        target = {"max_agreement_drop": self.max_agreement_drop, "max_top1_drop": self.max_top1_drop}
        if meeting:
            best = min(meeting, key=lambda cid: (results[cid]["size_bytes"], -results[cid]["top1_agreement"], cid))
            return {**target, "met": True, "candidate": best,
                    "line": f"target met on {device} by {best} "
                            f"(agreement {results[best]['top1_agreement'] * 100:.1f}%)"}
        ok = [r for r in results.values() if r.get("status") == "ok" and r.get("top1_agreement") is not None]
        best_agree = max((r["top1_agreement"] for r in ok), default=None)
        shown = "none measured" if best_agree is None else f"best agreement {best_agree * 100:.1f}%"
        return {**target, "met": False, "candidate": None,
                "line": f"target not met on {device}: {shown}; the best-so-far front is kept"}
