"""Recipes side by side on one real model: what each costs to build, how faithful it is to FP32
and how fast it runs on THIS CPU, all measured in one process.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/recipes.py --model models/effnet_lite0.onnx \
        --images ../shared/data/imagenet-sample --calibration 64 --eval 200

Every row is one candidate built from the same prepared model and the same 64 calibration
images (seeded split, disjoint from the evaluation images, exactly as `coordinator tune` splits
them). Columns: evaluations it takes (a row that needs a sensitivity ranking counts the ranking
as no evaluation, it is measured once for all rows), build seconds (CPU and wall; calibration
is shared by all rows of one method and reported once), labelled top-1, top-1 agreement with
FP32, output SQNR in dB vs FP32's logits over the evaluation set, share of the full-INT8 size
saving kept, and batch-1 latency as a ratio to FP32, measured the way every tune measures it
(coordinator/evaluators.py LocalEvaluator: FP32 and the candidate timed in interleaved pairs in
this process with the same session options, ORT_ENABLE_ALL and --threads intra-op threads, under
the host-wide latency lock; median of the per-pair ratios with their p10-p90). Output SQNR comes
from the same evaluation (dB of the candidate's logits against FP32's over the evaluation set).

Rows are chosen with --rows (default: all); `--list` prints them."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.interleaved import cpu_flags, cpu_seconds  # noqa: E402
from bench.effnet import add_data_arguments  # noqa: E402
from coordinator import data as data_mod  # noqa: E402
from coordinator.evaluators import EvalInputs, LocalEvaluator  # noqa: E402
from coordinator.prepare import prepare_model  # noqa: E402
from coordinator.quantize import build_candidate, quantizable_nodes, spec_for  # noqa: E402
from shared.feeds import take  # noqa: E402
from shared.runners.ort import OrtConfig, OrtRunner  # noqa: E402
from shared.settings import QuantSettings  # noqa: E402

FAST = {"reduce_range": False}   # QDQ per-channel u8s8: the fast recipe on VNNI CPUs


@dataclass(frozen=True)
class Row:
    """One candidate: settings changes on top of QDQ per-channel u8s8, plus the k most sensitive
    nodes kept in float or given 16-bit activations (W8A16)."""

    name: str
    changes: dict = field(default_factory=dict)
    float_top: int = 0
    int16_top: int = 0


AR_BC = {"adaround": "on", "bias_correction": "on"}
ROWS = [
    Row("u8s8 (QDQ per-channel, rr off)", FAST),
    Row("u8s8 reduce_range", {"reduce_range": True}),
    Row("u8s8 + bias correction", {**FAST, "recipe": {"bias_correction": "on"}}),
    Row("u8s8 + adaround", {**FAST, "recipe": {"adaround": "on"}}),
    Row("u8s8 + adaround + bias correction", {**FAST, "recipe": AR_BC}),
    Row("u8s8 percentile (whole model)", {**FAST, "calibrate": "percentile"}),
    Row("u8s8 + W8A16 top-1 (SeQTO)", FAST, int16_top=1),
    Row("u8s8 + W8A16 top-2 (SeQTO)", FAST, int16_top=2),
    Row("u8s8 + float top-1 (SeQTO)", FAST, float_top=1),
    Row("u8s8 + float top-2 (SeQTO)", FAST, float_top=2),
    Row("u8s8 + float prefix 1", {**FAST, "recipe": {"float_prefix": "1"}}),
    Row("u8s8 + float prefix 2", {**FAST, "recipe": {"float_prefix": "2"}}),
    Row("u8s8 + float prefix 3", {**FAST, "recipe": {"float_prefix": "3"}}),
    Row("u8s8 + bc + float prefix 2", {**FAST, "recipe": {"bias_correction": "on", "float_prefix": "2"}}),
    Row("u8s8 + adaround + bc + float prefix 2", {**FAST, "recipe": {**AR_BC, "float_prefix": "2"}}),
    Row("u8s8 + adaround + bc + float prefix 3", {**FAST, "recipe": {**AR_BC, "float_prefix": "3"}}),
    Row("u8u8 (reference: accurate, slow)", {"weight_type": "uint8", "reduce_range": False}),
]


def ranking(prepared, settings: QuantSettings, calibration: dict, work: Path, images: int) -> list[str]:
    """SeQTO order (most damaged first) of the quantizable nodes, as the tuner ranks them."""
    from coordinator.sensitivity import score_all

    spec = spec_for(prepared, settings, ())
    full = build_candidate(prepared, spec, work / "candidates", calibration, work / "cache")
    feeds = [take(calibration, i, i + 1) for i in range(images)]
    allowed = set(quantizable_nodes(prepared, settings))
    return [s.node for s in score_all(prepared.path, full.path, feeds)["seqto"] if s.node in allowed]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p, ROOT / "bench-out" / "recipes")
    p.add_argument("--ranking-images", type=int, default=16)
    p.add_argument("--latency-runs", type=int, default=100, help="interleaved FP32/candidate pairs per row")
    p.add_argument("--rows", nargs="*", default=None, help="row numbers (1-based) to run; default all")
    p.add_argument("--list", action="store_true")
    p.add_argument("--reuse", action="store_true", help="keep built candidates (build seconds then read 0)")
    args = p.parse_args(argv)
    if args.list:
        for i, row in enumerate(ROWS, 1):
            print(f"{i:2d}  {row.name}")
        return 0
    rows = ROWS if not args.rows else [ROWS[int(i) - 1] for i in args.rows]
    if not args.reuse:
        shutil.rmtree(args.out, ignore_errors=True)
    work = args.out
    work.mkdir(parents=True, exist_ok=True)

    prepared = prepare_model(args.model, work / "prepared")
    pre = data_mod.Preprocess(mean=tuple(args.mean), std=tuple(args.std))
    cal_set, eval_set = data_mod.split(data_mod.list_images(args.images), args.calibration, args.eval, args.seed)
    calibration = {prepared.input_name: data_mod.load_batch(cal_set, pre)}
    data = EvalInputs({prepared.input_name: data_mod.load_batch(eval_set, pre)}, data_mod.labels_array(eval_set),
                      args.latency_runs)
    evaluator = LocalEvaluator(OrtRunner(OrtConfig(intra_op_threads=args.threads)), work / "eval-cache")
    fp32 = evaluator.reference(prepared.path, prepared.sha256, data)["local"].to_report()

    base = QuantSettings(calibration_images=args.calibration)
    shared_seconds = {}
    for method in sorted({row.changes.get("calibrate", "minmax") for row in rows}):
        # calibration is cached per method and shared by every candidate, as in a tune: paid once
        start = time.monotonic()
        build_candidate(prepared, spec_for(prepared, base.replace(calibrate=method, reduce_range=False), ()),
                        work / "calibration", calibration, work / "cache")
        shared_seconds[f"calibration {method}"] = time.monotonic() - start
    order: list[str] = []
    if any(row.float_top or row.int16_top for row in rows):
        start = time.monotonic()
        order = ranking(prepared, base.replace(**FAST), calibration, work / "ranking", args.ranking_images)
        shared_seconds["ranking (SeQTO, once)"] = time.monotonic() - start

    results = []
    for row in rows:
        settings = base.replace(**row.changes)
        spec = spec_for(prepared, settings, order[:row.float_top], int16_nodes=order[:row.int16_top])
        wall, cpu = time.monotonic(), cpu_seconds()
        built = build_candidate(prepared, spec, work / "candidates", calibration, work / "cache")
        wall, cpu = time.monotonic() - wall, cpu_seconds() - cpu
        [(_, _, result)] = list(evaluator.evaluate([built], data))
        r = result.to_report()
        if r.get("status") != "ok":
            raise SystemExit(f"{row.name}: {r.get('status')} {r.get('crash_cause')}")
        results.append({"name": row.name, "candidate": built.id, "evaluations": 1, "build_wall_s": wall,
                        "build_cpu_s": cpu, "top1": r.get("top1_accuracy"), "agreement": r["top1_agreement"],
                        "sqnr_db": r.get("output_sqnr_db"), "size_bytes": built.size_bytes,
                        "ratio": r.get("latency_ratio_vs_fp32"), "ratio_p10": r.get("latency_ratio_p10"),
                        "ratio_p90": r.get("latency_ratio_p90"), "p50_ms": r.get("latency_ms_p50"),
                        "float_nodes": list(spec.excluded_nodes), "int16_nodes": list(spec.int16_nodes)})
        print(f"{row.name}: agreement {r['top1_agreement']:.3f}", flush=True)

    full_int8 = next((r["size_bytes"] for r in results if r["name"].startswith("u8s8 (")), None)
    saving = prepared.size_bytes - (full_int8 or prepared.size_bytes)
    for r in results:
        r["size_kept"] = (prepared.size_bytes - r["size_bytes"]) / saving if saving > 0 else None
    header = {"cpu_flags": cpu_flags(), "onnxruntime": _version("onnxruntime"), "threads": args.threads,
              "calibration_images": args.calibration, "eval_images": data.num_samples,
              "fp32": {"top1": fp32.get("top1_accuracy"), "p50_ms": fp32.get("latency_ms_p50"),
                       "size_bytes": prepared.size_bytes},
              "latency_runs": args.latency_runs, "shared_seconds": shared_seconds, "commit": _commit()}
    print_table(header, results)
    (work / "recipes.json").write_text(json.dumps({"header": header, "rows": results}, indent=2) + "\n")
    print(f"json: {work / 'recipes.json'}")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return ""


def print_table(header: dict, rows: list[dict]) -> None:
    fp = header["fp32"]
    print(f"CPU flags: {header['cpu_flags']}; onnxruntime {header['onnxruntime']} CPU EP, ORT_ENABLE_ALL, "
          f"{header['threads']} intra-op thread(s); {header['calibration_images']} calibration + "
          f"{header['eval_images']} evaluation images")
    print(f"FP32: top-1 {fp['top1'] * 100:.1f} %, p50 {fp['p50_ms']:.2f} ms, {fp['size_bytes'] / 1e6:.1f} MB; "
          f"{header['latency_runs']} interleaved pairs per row; shared seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in header["shared_seconds"].items()))
    head = ("recipe", "evals", "build CPU s", "build wall s", "top-1 %", "agree %", "SQNR dB", "size kept %",
            "p50 ratio vs FP32 (p10-p90)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        kept = "-" if r["size_kept"] is None else f"{r['size_kept'] * 100:.0f}"
        print(f"| {r['name']} | {r['evaluations']} | {r['build_cpu_s']:.1f} | {r['build_wall_s']:.1f} | "
              f"{r['top1'] * 100:.1f} | {r['agreement'] * 100:.1f} | {r['sqnr_db']:.2f} | {kept} | "
              f"{r['ratio']:.3f} ({r['ratio_p10']:.2f}-{r['ratio_p90']:.2f}) |")


if __name__ == "__main__":
    sys.exit(main())
