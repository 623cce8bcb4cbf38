"""Phase: recipe probing. The base settings and each named recipe (coordinator/tuner/catalog.py)
are measured as full INT8 (plus the fixed float nodes); the search then runs with the recipe that
meets the target with the smallest model, or else the most accurate one on the primary device."""
from __future__ import annotations

from coordinator.tuner.catalog import RECIPE_PROBES
from coordinator.tuner.run import TuneRun
from shared.settings import QuantSettings


def recipe_settings(base: QuantSettings, names: tuple[str, ...]) -> dict[str, QuantSettings]:
    """{"base": base, name: base changed by that recipe, ...}; recipe switches are merged."""
    options = {"base": base}
    for name in names:
        changes = dict(RECIPE_PROBES[name])
        if "recipe" in changes:
            changes["recipe"] = {**dict(base.recipe), **changes["recipe"]}
        options[name] = base.replace(**changes)
    return options


def probe_recipes(run: TuneRun) -> QuantSettings:
    """Measure the recipes (within the evaluation budget) and return the settings to search with;
    the report's `recipe_probe` says what was measured and chosen."""
    base = run.config.settings
    options = recipe_settings(base, run.config.probe_recipes)
    specs = {name: run.spec(run.ws.excludes, settings) for name, settings in options.items()}
    todo = [spec for spec in dict.fromkeys(specs.values()) if not run.state.complete(spec.id)]
    run.evaluate(run.budget.cap(todo, run.evaluations))
    measured = {}
    for name, spec in specs.items():
        result = run.state.result(spec.id, run.primary)
        if result and result.get("status") == "ok":
            measured[name] = result
    if not measured:
        return base
    meeting = [n for n, r in measured.items() if run.config.has_target and run.meets_target(r, run.primary)]
    if meeting:
        chosen = min(meeting, key=lambda n: (measured[n]["size_bytes"], measured[n].get("latency_ms_p50", 0)))
    else:
        chosen = max(measured, key=lambda n: (measured[n]["top1_agreement"], -measured[n]["size_bytes"]))
    run.state.set_section("recipe_probe", {
        "chosen": chosen, "settings": options[chosen].to_dict(),
        "measured": {n: {"candidate": specs[n].id, "top1_agreement": r["top1_agreement"],
                         "top1_accuracy": r.get("top1_accuracy"), "size_bytes": r["size_bytes"],
                         "latency_ms_p50": r.get("latency_ms_p50")} for n, r in measured.items()}})
    return options[chosen]
