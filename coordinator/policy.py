"""The recommendation policy: which measured candidate to ship to one device class, decided on that
device's own accuracy, fidelity, size and speed (README "Recommendation policy").

1. A candidate slower than FP32 on the device beyond the measurement noise (coordinator/measures.py:
   median ratio > 1 + 5%, or 10th percentile > 1) is never recommended, unless `allow_slower`.
2. When no candidate is faster than FP32 there (median < 1 - 5%, or 90th percentile < 1), nothing
   is recommended and the verdict says "quantization does not pay for MODEL on DEVICE".
3. With a target, among the candidates meeting it (and not slower), the preference decides:
   `latency`: lowest latency ratio; `size`: smallest; `balanced`: lowest size/FP32 size + latency
   ratio (each is 1.0 for FP32 itself, so halving the file and halving the time count the same),
   up to the measurement noise: among the candidates within 0.05 of the best score (0.01 of FP32's
   size for `size`), the most faithful (top-1 agreement, then SQNR) wins.
4. With a target that nothing eligible meets: the closest to it (fewest targets missed, smallest
   shortfall in the targeted metrics: an IoU target is approached by IoU), then the most faithful candidate not
   slower than FP32 (agreement, then SQNR; ties by the preference).
5. Without a target, the trade-off of the Pareto front (of the candidates not slower than FP32)
   closest to the ideal point, the preferred objective weighted twice.
When top-1 agreement carries no information on a device (every candidate has the same, e.g. a
2-class model at 100%), output SQNR (`fidelity`) stands in for `accuracy_loss` in the fronts.

Everything here is a pure function of report entries, so a report can be re-decided later."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from coordinator.measures import (FASTER, NOISE_MARGIN, SLOWER, UNMEASURED, describe_ratio, fidelity_key, fp32_p50,
                                  is_ok, latency_ratio, speed, sqnr)
from coordinator.pareto import effective_objectives, pareto
from coordinator.tuner.catalog import PREFERENCES
from coordinator.tuner.targets import Targets
from shared.results import runtime_summary

__all__ = ["PREFERENCES", "Policy", "comparison", "decide", "decide_report", "device_results"]
#: a candidate whose top-1 agreement differs by more than this between two device classes is flagged
#: as divergent in the comparison (2 points: beyond the sampling noise of a few hundred images)
DIVERGENT_AGREEMENT = 0.02
#: sizes within 1% of FP32's size are the same to `prefer size` (see Policy.tolerance)
SIZE_TOLERANCE = 0.01
_PREFERRED_OBJECTIVES = {"latency": ("latency", "latency_ms"), "size": ("size_bytes",), "balanced": ()}
#: how a verdict opens (readers such as the fleet summary tell the cases apart by it)
DOES_NOT_PAY, PAYS, NOTHING_MEASURED = "quantization does not pay", "quantization pays", "nothing measured"
_CRITERION = {"latency": "lowest latency ratio", "size": "smallest", "balanced": "lowest size/FP32 + latency ratio"}


@dataclass(frozen=True)
class Policy:
    prefer: str = "balanced"
    allow_slower: bool = False

    @classmethod
    def from_config(cls, config: Any) -> "Policy":
        return cls(getattr(config, "prefer", "balanced"), bool(getattr(config, "allow_slower", False)))

    def eligible(self, result: Mapping) -> bool:
        """May be recommended at all: measured ok and, unless allowed, not slower than FP32."""
        return is_ok(result) and (self.allow_slower or speed(result) != SLOWER)

    def score(self, result: Mapping, fp32_size: float) -> float:
        """What the preference minimises: the latency ratio, the size as a fraction of FP32's, or
        their sum (balanced). A result without a latency counts as FP32's (ratio 1)."""
        ratio = latency_ratio(result)
        ratio = 1.0 if ratio is None else ratio
        size = result["size_bytes"] / fp32_size if fp32_size else float(result["size_bytes"])
        return {"latency": ratio, "size": size}.get(self.prefer, size + ratio)

    @property
    def tolerance(self) -> float:
        """Scores closer than this to the best are the same to the preference: a latency ratio is
        only known to NOISE_MARGIN; sizes are exact, so `size` tells 1% of FP32's size apart."""
        return SIZE_TOLERANCE if self.prefer == "size" else NOISE_MARGIN

    def key(self, result: Mapping, fp32_size: float) -> tuple:
        """Strict order (lower is preferred): score, then higher agreement, then higher SQNR."""
        agreement, db = fidelity_key(result)
        return (round(self.score(result, fp32_size), 9), -agreement, -db)

    def choose(self, results: Mapping[str, Mapping], fp32_size: float) -> str:
        """Among `results` (all eligible and meeting the target): the candidates within `tolerance`
        of the best score, and of those the most faithful (agreement, then SQNR), then the best score.
        Two recipes 2% apart in latency ratio are equally fast as far as the measurement tells, so
        noise never decides over fidelity."""
        scores = {cid: self.score(r, fp32_size) for cid, r in results.items()}
        best = min(scores.values())
        near = [cid for cid, s in scores.items() if s <= best + self.tolerance + 1e-12]
        return max(near, key=lambda cid: (fidelity_key(results[cid]), -scores[cid], cid))

    def weights(self, objectives: Sequence[str]) -> list[float]:
        return [2.0 if o in _PREFERRED_OBJECTIVES[self.prefer] else 1.0 for o in objectives]

    def to_report(self) -> dict[str, Any]:
        return {"prefer": self.prefer, "allow_slower": self.allow_slower, "noise_margin": NOISE_MARGIN}


# -- what the decision reads ---------------------------------------------------------------------
def device_results(report: Mapping, device: str) -> dict[str, dict]:
    """Each candidate's result on `device` with the candidate's size and FP32's p50 on the device
    (when the result does not carry the one timed next to it)."""
    base = (report.get("fp32") or {}).get(device, {}).get("latency_ms_p50")
    out = {}
    for c in report["candidates"]:
        result = c["results"].get(device)
        if result is None:
            continue
        view = {**result, "size_bytes": c["size_bytes"]}
        if view.get("fp32_latency_ms_p50") is None and base:
            view["fp32_latency_ms_p50"] = base
        out[c["id"]] = view
    return out


def model_name(report: Mapping) -> str:
    path = Path(str(report.get("model", {}).get("path", "model")))
    return f"{path.parent.name}/{path.name}" if path.stem == "model" and path.parent.name else path.name


def objectives_for(results: Mapping[str, Mapping], objectives: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """The objectives the fronts use on one device, and why they differ from the configured ones:
    when every candidate has the same top-1 agreement (or none has any), SQNR stands in for it."""
    used = effective_objectives(objectives, results)          # no agreement at all (dense, generic outputs)
    if used != tuple(objectives):
        return used, "the outputs have no top-1 agreement: output SQNR (fidelity) stands in for it"
    ok = [r for r in results.values() if is_ok(r)]
    if "accuracy_loss" not in objectives or len(ok) < 2 or all(sqnr(r) is None for r in ok):
        return tuple(objectives), ""
    agreements = {r.get("top1_agreement") for r in ok}
    if len(agreements) != 1:
        return tuple(objectives), ""
    used = tuple(dict.fromkeys("fidelity" if o == "accuracy_loss" else o for o in objectives))
    return used, (f"top-1 agreement is {agreements.pop() * 100:.1f}% for every candidate: output SQNR (fidelity) "
                  "stands in for accuracy_loss")


# -- one device ---------------------------------------------------------------------------------
def decide(device: str, model: str, results: Mapping[str, Mapping], fp32: Mapping, objectives: Sequence[str],
           targets: Targets, policy: Policy) -> dict[str, Any]:
    """The report's `pareto.per_device[<device>]`: fronts, best per objective, the recommended
    candidate (or None), the target summary, the policy with its reason and verdict, and how the
    device ran what was decided on (`measured_with`: its runtime and session options)."""
    ok = {cid: r for cid, r in results.items() if is_ok(r)}
    used, note = objectives_for(ok, objectives)
    front = pareto(ok, used)
    entry: dict[str, Any] = {"fronts": front.fronts, "best": front.best, "objectives": list(used)}
    if note:
        entry["objectives_note"] = note
    fp32_top1 = fp32.get("top1_accuracy")
    fp32_size = float(fp32.get("size_bytes") or 0)
    speeds = {cid: speed(r) for cid, r in ok.items()}
    slower = sorted(cid for cid, s in speeds.items() if s == SLOWER)
    measured = [cid for cid, s in speeds.items() if s != UNMEASURED]
    pays = any(s == FASTER for s in speeds.values()) or not measured
    eligible = {cid: r for cid, r in ok.items() if policy.eligible(r)}
    meeting = [cid for cid, r in ok.items() if targets.meets(r, fp32_top1)] if targets.any else []
    choosable = [cid for cid in meeting if cid in eligible]

    reason = []
    if not ok:
        recommended = None
        reason.append(f"no candidate ran on {device}")
    elif not pays and not policy.allow_slower:
        recommended = None
        reason.append("no candidate is faster than FP32 beyond the noise")
    elif choosable:
        recommended = policy.choose({cid: ok[cid] for cid in choosable}, fp32_size)
        how = _CRITERION[policy.prefer] + _balanced(policy, ok[recommended], fp32_size)
        reason.append(f"prefer {policy.prefer}: {how} (within {policy.tolerance:g} of the best: the most faithful)"
                      f" among {len(choosable)} candidate(s) meeting the target and not slower than FP32")
    elif eligible and targets.any:
        recommended = max(eligible, key=lambda cid: (targets.closeness(ok[cid], fp32_top1), fidelity_key(ok[cid]),
                                                     tuple(-x for x in policy.key(ok[cid], fp32_size)), cid))
        reason.append(f"nothing not slower than FP32 meets the target: the closest to it (fewest targets missed, "
                      f"smallest shortfall in their metrics, then top-1 agreement, then SQNR; ties by prefer "
                      f"{policy.prefer}) among {len(eligible)} candidate(s) not slower than FP32")
    elif eligible:
        recommended = pareto(eligible, used, policy.weights(used)).recommended
        reason.append(f"prefer {policy.prefer}: the trade-off of the front closest to the ideal point over "
                      f"{', '.join(used)}{_weighted(policy, used)}, among {len(eligible)} candidate(s) "
                      f"not slower than FP32")
    else:
        recommended = None
        reason.append("every candidate is slower than FP32")
    if slower and not policy.allow_slower:
        reason.append(f"{len(slower)} candidate(s) slower than FP32 (ratio > {1 + NOISE_MARGIN:.2f} or p10 > 1) "
                      "never recommended")
    if not measured and ok:
        reason.append("latency not measured: the never-slower rule could not be applied")
    entry["recommended"] = recommended
    entry["measured_with"] = measured_with(results, recommended)
    entry["policy"] = {**policy.to_report(), "reason": "; ".join(reason),
                       "verdict": _verdict(device, model, ok, measured, pays, recommended, policy)}
    entry["target"] = _target_summary(device, targets, ok, meeting, choosable, recommended, fp32_top1) \
        if targets.any else None
    return entry


def measured_with(results: Mapping[str, Mapping], recommended: str | None) -> str | None:
    """The runtime and session options the device measured with (the recommended candidate's, else
    any result's): a decision holds for those options (e.g. float layers on onnxruntime's CPU EP)."""
    chosen = [results[recommended]] if recommended in results else list(results.values())
    return next((text for r in chosen if (text := runtime_summary(r.get("runtime"))) is not None), None)


def _balanced(policy: Policy, result: Mapping, fp32_size: float) -> str:
    if policy.prefer != "balanced" or not fp32_size:
        return ""
    ratio = latency_ratio(result)
    size = result["size_bytes"] / fp32_size
    return f" ({size:.2f} + {1.0 if ratio is None else ratio:.2f})"


def _weighted(policy: Policy, used: Sequence[str]) -> str:
    heavy = [o for o in used if o in _PREFERRED_OBJECTIVES[policy.prefer]]
    return f" ({', '.join(heavy)} weighted x2)" if heavy else ""


def _verdict(device: str, model: str, ok: Mapping[str, Mapping], measured: list[str], pays: bool,
             recommended: str | None, policy: Policy) -> str:
    if not ok:
        return f"{NOTHING_MEASURED} for {model} on {device} yet"
    if not measured:
        return f"latency not measured for {model} on {device}: speed was not part of the decision"
    fastest = min(measured, key=lambda cid: (latency_ratio(ok[cid]), cid))
    best = ok[fastest]
    if not pays:
        text = (f"{DOES_NOT_PAY} for {model} on {device}: best INT8 p50 "
                f"{_ms(best.get('latency_ms_p50'))} vs FP32 {_ms(fp32_p50(best))} ({describe_ratio(best)})")
        return text + (f"; {recommended} recommended anyway (allow_slower)" if recommended else "")
    if recommended is None:
        return f"{PAYS} for {model} on {device} ({fastest} at {describe_ratio(best)}), " \
               "but no candidate is eligible"
    rec = ok[recommended]
    return (f"{PAYS} for {model} on {device}: {recommended} at p50 {_ms(rec.get('latency_ms_p50'))} "
            f"vs FP32 {_ms(fp32_p50(rec))} ({describe_ratio(rec)}), agreement {_pct(rec.get('top1_agreement'))}")


def _target_summary(device: str, targets: Targets, ok: Mapping[str, Mapping], meeting: list[str],
                    choosable: list[str], recommended: str | None, fp32_top1: float | None) -> dict[str, Any]:
    met = recommended is not None and recommended in meeting
    summary = {**targets.to_dict(), "met": met, "candidate": recommended if met else None}
    if met:
        r = ok[recommended]
        summary["line"] = (f"target met on {device} by {recommended} (agreement {_pct(r.get('top1_agreement'))}"
                           f"{_sqnr(r)}, {describe_ratio(r)})")
    elif meeting and not choosable:
        fastest = min(meeting, key=lambda cid: (latency_ratio(ok[cid]) or 0.0, cid))
        summary["line"] = (f"target not met on {device} by any candidate not slower than FP32: only by slower "
                           f"ones (fastest: {fastest} at {describe_ratio(ok[fastest])}), never recommended "
                           "(allow_slower accepts them)")
    elif meeting:
        summary["line"] = (f"target not met on {device} by a recommendable candidate: {len(meeting)} meet it, "
                           "but quantization does not pay there")
    elif ok:
        closest = max(ok, key=lambda cid: (targets.closeness(ok[cid], fp32_top1), fidelity_key(ok[cid]), cid))
        summary["line"] = (f"target not met on {device}: closest {closest} ("
                           f"{', '.join(targets.misses(ok[closest], fp32_top1))}); the best-so-far front is kept")
    else:
        summary["line"] = f"target not met on {device}: none measured"
    return summary


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _pct(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _sqnr(result: Mapping) -> str:
    db = sqnr(result)
    return "" if db is None else f", SQNR {db:.1f} dB"


# -- every device, and the comparison between them ------------------------------------------------
def decide_report(report: Mapping, devices: Sequence[str], objectives: Sequence[str], targets: Targets,
                  policy: Policy) -> dict[str, Any]:
    """The report's `pareto` section: per device, and the primary device's entry at the top level."""
    model = model_name(report)
    per_device = {d: decide(d, model, device_results(report, d), (report.get("fp32") or {}).get(d, {}), objectives,
                            targets, policy) for d in devices}
    primary = per_device[devices[0]]
    return {**{k: primary[k] for k in ("objectives", "fronts", "recommended", "best", "target")},
            "policy": primary["policy"], "per_device": per_device}


def comparison(report: Mapping, devices: Sequence[str]) -> dict[str, Any] | None:
    """The report's `comparison` section (two or more device classes): every candidate's status,
    agreement, SQNR, p50 and ratio on each class, flagged divergent when it runs on one class and
    not another, when its agreement differs by more than DIVERGENT_AGREEMENT, or when it is faster
    than FP32 on one class and slower on another."""
    if len(devices) < 2:
        return None
    views = {d: device_results(report, d) for d in devices}
    rows = []
    for c in report["candidates"]:
        cells = {}
        for d in devices:
            r = views[d].get(c["id"])
            if r is None:
                continue
            cells[d] = {"status": r.get("status"), "top1_agreement": r.get("top1_agreement"),
                        "output_sqnr_db": r.get("output_sqnr_db"), "latency_ms_p50": r.get("latency_ms_p50"),
                        "latency_ratio_vs_fp32": latency_ratio(r), "speed": speed(r) if is_ok(r) else None}
            if not is_ok(r) and r.get("crash_cause"):
                cells[d]["crash_cause"] = r["crash_cause"]
        why = _divergence(cells)
        rows.append({"candidate": c["id"], "per_device": cells, "divergent": bool(why), "why": "; ".join(why)})
    pareto_section = report.get("pareto", {}).get("per_device", {})
    return {"devices": list(devices), "divergent_agreement": DIVERGENT_AGREEMENT,
            "fp32": {d: {k: (report.get("fp32") or {}).get(d, {}).get(k) for k in ("latency_ms_p50", "top1_accuracy")}
                     for d in devices},
            "rows": rows, "recommended": {d: pareto_section.get(d, {}).get("recommended") for d in devices}}


def _divergence(cells: Mapping[str, Mapping]) -> list[str]:
    why = []
    ok = [d for d, cell in cells.items() if cell["status"] == "ok"]
    failed = [d for d, cell in cells.items() if cell["status"] != "ok"]
    if ok and failed:
        why.append(f"ok on {', '.join(ok)}; " + ", ".join(
            f"{cells[d]['status']} on {d}" + (f" ({cells[d]['crash_cause']})" if cells[d].get("crash_cause") else "")
            for d in failed))
    agreements = {d: cells[d]["top1_agreement"] for d in ok if cells[d]["top1_agreement"] is not None}
    if len(agreements) >= 2:
        hi, lo = max(agreements, key=agreements.get), min(agreements, key=agreements.get)
        if agreements[hi] - agreements[lo] > DIVERGENT_AGREEMENT + 1e-12:
            why.append(f"agreement {_pct(agreements[hi])} on {hi} vs {_pct(agreements[lo])} on {lo}")
    faster = [d for d in ok if cells[d]["speed"] == FASTER]
    slower = [d for d in ok if cells[d]["speed"] == SLOWER]
    if faster and slower:
        why.append(f"faster than FP32 on {', '.join(faster)}, slower on {', '.join(slower)}")
    return why
