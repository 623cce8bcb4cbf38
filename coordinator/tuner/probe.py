"""Phase: recipe probing, per device class. The base settings and each named recipe
(coordinator/tuner/catalog.py) are measured as full INT8 (plus the fixed float nodes) on every
device class; then each class picks its own recipe from its own measurements:

* among the recipes meeting the target and not slower than FP32 there, the one the preference
  picks (coordinator/policy.py: latency, size or balanced; within the measurement noise of the
  best, the most faithful: agreement, then SQNR);
* else the most faithful recipe that is not slower than FP32 there (top-1 agreement, then SQNR,
  then the faster): the search for exclusions starts from a model that is both accurate and fast,
  never from an accurate but slow one;
* else (every recipe slower than FP32, and slower ones not allowed) the most faithful, and the search
  of that class is skipped (coordinator/tuner/search.py): float layers do not make INT8 pay."""
from __future__ import annotations

from typing import Mapping

from coordinator.measures import fidelity_key, is_ok, latency_ratio
from coordinator.policy import Policy, device_results
from coordinator.tuner.catalog import RECIPE_PROBES
from coordinator.tuner.run import TuneRun
from coordinator.tuner.targets import Targets
from shared.settings import QuantSettings


def recipe_settings(base: QuantSettings, names: tuple[str, ...]) -> dict[str, QuantSettings]:
    """{"base": base, name: base changed by that recipe, ...}; recipe switches are merged. "base" is
    left out when a named recipe is the same settings."""
    options = {}
    for name in names:
        changes = dict(RECIPE_PROBES[name])
        if "recipe" in changes:
            changes["recipe"] = {**dict(base.recipe), **changes["recipe"]}
        options[name] = base.replace(**changes)
    return options if base in options.values() else {"base": base, **options}


def choose_recipe(measured: Mapping[str, Mapping], fp32: Mapping, targets: Targets,
                  policy: Policy) -> tuple[str | None, str]:
    """(recipe name, why) for one device class from its full-INT8 results by recipe name (report
    entries with size_bytes and FP32's p50 on the device, see policy.device_results)."""
    ok = {name: r for name, r in measured.items() if is_ok(r)}
    if not ok:
        return None, "no recipe ran"
    eligible = {name: r for name, r in ok.items() if policy.eligible(r)}
    meeting = [n for n, r in eligible.items() if targets.any and targets.meets(r, fp32.get("top1_accuracy"))]
    if meeting:
        chosen = policy.choose({n: ok[n] for n in meeting}, float(fp32.get("size_bytes") or 0))
        return chosen, f"meets the target and is not slower than FP32; prefer {policy.prefer} among {sorted(meeting)}"
    pool = eligible or ok
    fp32_top1 = fp32.get("top1_accuracy")
    chosen = max(pool, key=lambda n: (targets.closeness(ok[n], fp32_top1), fidelity_key(ok[n]),
                                      -(latency_ratio(ok[n]) or 1.0), -ok[n]["size_bytes"], n))
    if eligible:
        what = ("closest to the target (in its own metrics), then most faithful (agreement, then SQNR), "
                if targets.any else "most faithful (agreement, then SQNR) ") + "of the recipes not slower than FP32"
        return chosen, what + (" (none meets the target)" if targets.any else "")
    return chosen, "every recipe is slower than FP32 here; the most faithful is kept"


def _entry(spec_id: str, r: Mapping) -> dict:
    return {"candidate": spec_id, "status": r.get("status"), "top1_agreement": r.get("top1_agreement"),
            "top1_accuracy": r.get("top1_accuracy"), "size_bytes": r["size_bytes"],
            "latency_ms_p50": r.get("latency_ms_p50"), "latency_ratio_vs_fp32": latency_ratio(r),
            "latency_ratio_p10": r.get("latency_ratio_p10"), "latency_ratio_p90": r.get("latency_ratio_p90"),
            "output_sqnr_db": r.get("output_sqnr_db")}


def probe_recipes(run: TuneRun) -> dict[str, QuantSettings]:
    """Measure the recipes (within the evaluation budget) on every device class and return the
    settings each class searches with; the report's `recipe_probe` says what was measured and
    chosen, per device (`per_device`) and, as before, for the primary one at the top level."""
    base = run.config.settings
    options = recipe_settings(base, run.config.probe_recipes)
    specs = {name: run.spec(run.ws.excludes, settings) for name, settings in options.items()}
    unique = list(dict.fromkeys(specs.values()))
    todo = [spec for spec in unique if not run.state.complete(spec.id)]
    run.resumed += len(unique) - len(todo)
    run.evaluate(run.budget.cap(todo, run.evaluations))
    per_device, chosen = {}, {}
    for device in run.evaluator.devices:
        view = device_results(run.state.report, device)
        measured = {name: view[spec.id] for name, spec in specs.items() if spec.id in view}
        fp32 = run.state.report["fp32"].get(device, {})
        name, why = choose_recipe(measured, fp32, run.state.targets, run.state.policy)
        settings = options[name] if name is not None else base
        chosen[device] = settings
        per_device[device] = {"chosen": name or "base", "reason": why, "settings": settings.to_dict(),
                              "measured": {n: _entry(specs[n].id, r) for n, r in measured.items()}}
    primary = per_device[run.primary]
    run.state.set_section("recipe_probe", {
        "chosen": primary["chosen"], "settings": primary["settings"],
        "measured": {n: e for n, e in primary["measured"].items() if e["status"] == "ok"},
        "per_device": per_device})
    return chosen
