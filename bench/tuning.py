"""Tuning benchmark (issue 4): each recipe's full-INT8 result and each search strategy, measured in
one process and one run on a real model and real images, as one table (and JSON).

    .venv/bin/python bench/tuning.py --model models/effnet_lite0.onnx \
        --images ../shared/data/imagenet-sample --calibration 64 --eval 200

Each strategy runs in its own output dir, so its evaluations and wall time are its own."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.effnet import add_data_arguments  # noqa: E402
from coordinator.data import Preprocess  # noqa: E402
from coordinator.evaluators import LocalEvaluator  # noqa: E402
from coordinator.tune import Tuner, TuneConfig  # noqa: E402
from shared.runners.ort import OrtConfig, OrtRunner  # noqa: E402
from shared.settings import QuantSettings  # noqa: E402

RECIPES = {
    "qdq per-tensor u8s8": QuantSettings(per_channel=False, reduce_range=False),
    "qdq per-channel u8s8": QuantSettings(reduce_range=False),
    "qdq per-channel u8s8 reduce_range (default)": QuantSettings(),
    "qdq per-channel s8s8 reduce_range": QuantSettings(activation_type="int8"),
    "qdq per-channel u8s8 rr entropy": QuantSettings(calibrate="entropy"),
    "qdq per-channel u8s8 rr cle": QuantSettings(recipe={"cle": "on"}),
    "qdq per-tensor u8s8 rr cle-relu6": QuantSettings(per_channel=False, recipe={"cle": "relu6"}),
    "qdq per-channel u8u8": QuantSettings(weight_type="uint8", reduce_range=False),
    "qoperator per-channel s8s8": QuantSettings(format="qoperator", activation_type="int8", reduce_range=False),
    "qdq per-channel u8s8 rr keep depthwise": QuantSettings(recipe={"keep_float": "depthwise"}),
}


def run_tune(name: str, args, settings: QuantSettings, **overrides) -> tuple[dict, float]:
    out = args.out / name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "and")
    shutil.rmtree(out, ignore_errors=True)
    pre = Preprocess(mean=tuple(args.mean), std=tuple(args.std))
    config = TuneConfig(model=args.model, images=args.images, out=out, preprocess=pre,
                        n_calibration=args.calibration, n_eval=args.eval,
                        settings=settings.replace(calibration_images=args.calibration),
                        latency_runs=args.latency_runs, seed=args.seed, **overrides)
    evaluator = LocalEvaluator(OrtRunner(OrtConfig(intra_op_threads=args.threads)), out / "cache")
    start = time.monotonic()
    report = Tuner(config, evaluator).run()
    return report, time.monotonic() - start


def candidates(report: dict) -> list[dict]:
    return [c for c in report["candidates"] if c["results"].get("local", {}).get("status") == "ok"]


def hypervolume(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    from pymoo.indicators.hv import HV

    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return float(HV(ref_point=np.array([1.1, 1.1]))((points - lo) / span))


def row(name: str, report: dict, seconds: float, full_int8_size: float) -> dict:
    fp32 = report["fp32"]["local"]
    rec_id = report["pareto"].get("recommended")
    rec = next((c for c in report["candidates"] if c["id"] == rec_id), None)
    res = rec["results"]["local"] if rec else {}
    size_kept = None
    if rec and fp32["size_bytes"] > full_int8_size:
        size_kept = (fp32["size_bytes"] - rec["size_bytes"]) / (fp32["size_bytes"] - full_int8_size)
    target = report["pareto"]["per_device"]["local"].get("target")
    return {"name": name, "evaluations": report["status"]["evaluations"], "seconds": round(seconds, 1),
            "fp32_top1": fp32["top1_accuracy"], "top1": res.get("top1_accuracy"),
            "agreement": res.get("top1_agreement"), "latency_ms_p50": res.get("latency_ms_p50"),
            "size_bytes": rec["size_bytes"] if rec else None, "size_kept": size_kept,
            "target_met": None if target is None else target["met"], "candidate": rec_id,
            "points": [[1 - c["results"]["local"]["top1_agreement"], c["size_bytes"]] for c in candidates(report)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p, ROOT / "bench-out" / "tuning")
    p.add_argument("--latency-runs", type=int, default=10)
    p.add_argument("--sweep-max", type=int, default=None, help="cap the reference sweep (default: full)")
    p.add_argument("--max-drop", type=float, default=0.03)
    p.add_argument("--max-top1-drop", type=float, default=0.005)
    p.add_argument("--budget-evals", type=int, default=12)
    p.add_argument("--skip-recipes", action="store_true")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    if not args.skip_recipes:
        for name, settings in RECIPES.items():
            report, secs = run_tune("recipe " + name, args, settings, max_candidates=1)
            full = report["candidates"][0]["size_bytes"]
            rows.append({**row("recipe: " + name, report, secs, full), "kind": "recipe"})
            print(f"{name}: {rows[-1]['agreement']}", flush=True)
    target = {"max_agreement_drop": args.max_drop, "max_top1_drop": args.max_top1_drop}
    sweep, sweep_secs = run_tune("strategy sweep", args, QuantSettings(), max_candidates=args.sweep_max, **target)
    full_int8 = next(c for c in sweep["candidates"] if c["num_excluded"] == 0)["size_bytes"]
    rows.append({**row("strategy: sweep (SeQTO)", sweep, sweep_secs, full_int8), "kind": "strategy"})
    budget = max(1, sweep["status"]["evaluations"] // 4)
    probes = ("u8u8", "qoperator-s8s8")
    runs = [("bisect", "bisect", {}), ("greedy", "greedy", {}), ("nsga2", "nsga2", {"budget_evals": budget}),
            ("bisect + recipe probe", "bisect", {"probe_recipes": probes}),
            ("greedy + recipe probe", "greedy", {"probe_recipes": probes})]
    for label, strategy, extra in runs:
        extra = {"budget_evals": args.budget_evals, **extra}
        report, secs = run_tune(f"strategy {label}", args, QuantSettings(), strategy=strategy, **extra, **target)
        rows.append({**row(f"strategy: {label}", report, secs, full_int8), "kind": "strategy"})
    # hypervolume vs the full sweep: common normalisation and reference point over every strategy's points
    strategy_rows = [r for r in rows if r["kind"] == "strategy"]
    allpts = np.array([pt for r in strategy_rows for pt in r["points"]], dtype=float)
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    hv_sweep = hypervolume(np.array(strategy_rows[0]["points"]), lo, hi)
    for r in strategy_rows:
        r["hv_ratio"] = hypervolume(np.array(r["points"]), lo, hi) / hv_sweep if hv_sweep > 0 else None
    for r in rows:
        r.pop("points")
    print_table(rows, sweep_secs)
    (args.out / "tuning.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"json: {args.out / 'tuning.json'}")
    return 0


def fmt(v, pct=False, digits=1):
    if v is None:
        return "-"
    return f"{v * 100:.{digits}f}" if pct else f"{v:.{digits}f}"


def print_table(rows, sweep_secs) -> None:
    head = ("strategy/recipe", "evals", "wall s", "top-1 %", "agree %", "size kept %", "p50 ms", "HV vs sweep",
            "speed-up", "target")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        speed = fmt(sweep_secs / r["seconds"]) + "x" if r["kind"] == "strategy" and r["seconds"] else "-"
        target = "-" if r["target_met"] is None else ("met" if r["target_met"] else "not met")
        print(f"| {r['name']} | {r['evaluations']} | {r['seconds']:.0f} | {fmt(r['top1'], True)} | "
              f"{fmt(r['agreement'], True)} | {fmt(r['size_kept'], True, 0)} | {fmt(r['latency_ms_p50'])} | "
              f"{fmt(r.get('hv_ratio'), False, 3)} | {speed} | {target} |")
    print(f"FP32 top-1: {fmt(rows[0]['fp32_top1'], True)} %")


if __name__ == "__main__":
    sys.exit(main())
