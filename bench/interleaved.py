"""What one evaluation job measures, on a real model and real data: FP32 timed against itself (the
noise floor of this machine) and full-INT8 candidates of the named recipes timed interleaved with
FP32 (per-pair ratio and its p10-p90 spread), with their fidelity (agreement, SQNR, cosine, KL).

    .venv/bin/python bench/interleaved.py --model models/effnet_lite0.onnx \\
        --images ../shared/data/imagenet-sample --calibration 64 --eval 200 --mean 0.498 --std 0.502

Every row comes from the same process, runner and session options (onnxruntime, --threads), one
after the other in one run; wall and CPU seconds are the job's own (inference + timing phase)."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator import data as data_mod  # noqa: E402
from coordinator.evaluators import EvalInputs, LocalEvaluator  # noqa: E402
from coordinator.prepare import prepare_model  # noqa: E402
from coordinator.quantize import build_candidate, spec_for  # noqa: E402
from coordinator.tuner.catalog import RECIPE_PROBES  # noqa: E402
from shared.runners.ort import OrtConfig, OrtRunner  # noqa: E402
from shared.settings import QuantSettings  # noqa: E402


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = sorted({f for f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2") if f" {f}" in text})
    return " ".join(flags) or "none of avx2/avx512f/avx512_vnni/avx_vnni"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def row(name: str, result, wall: float, cpu: float) -> dict:
    r = result.to_report()
    return {"name": name, "agreement": r.get("top1_agreement"), "top1": r.get("top1_accuracy"),
            "sqnr_db": r.get("output_sqnr_db"), "cosine": r.get("cosine"), "kl": r.get("kl_divergence"),
            "p50_ms": r.get("latency_ms_p50"), "fp32_p50_ms": r.get("fp32_latency_ms_p50"),
            "ratio": r.get("latency_ratio_vs_fp32"), "p10": r.get("latency_ratio_p10"),
            "p90": r.get("latency_ratio_p90"), "size_mb": r["size_bytes"] / 1e6, "wall_s": wall, "cpu_s": cpu}


def fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    p.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    p.add_argument("--recipes", nargs="+", default=["u8s8", "u8s8-rr"], choices=sorted(RECIPE_PROBES))
    p.add_argument("--latency-runs", type=int, default=100, help="interleaved pairs per job")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "interleaved")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)

    pre = data_mod.Preprocess(input_size=args.input_size, mean=tuple(args.mean), std=tuple(args.std))
    prepared = prepare_model(args.model, args.out / "prepared")
    calib, evals = data_mod.split(data_mod.list_images(args.images), args.calibration, args.eval, args.seed)
    calibration = {prepared.input_name: data_mod.load_batch(calib, pre)}
    data = EvalInputs({prepared.input_name: data_mod.load_batch(evals, pre)}, data_mod.labels_array(evals),
                      args.latency_runs)
    runner = OrtRunner(OrtConfig(intra_op_threads=args.threads))
    evaluator = LocalEvaluator(runner, args.out / "cache")
    rows = []
    wall, cpu = time.perf_counter(), cpu_seconds()
    fp32 = evaluator.reference(prepared.path, prepared.sha256, data)["local"]
    rows.append(row("FP32 vs FP32", fp32, time.perf_counter() - wall, cpu_seconds() - cpu))
    for name in args.recipes:
        settings = QuantSettings(calibration_images=args.calibration).replace(**RECIPE_PROBES[name])
        cand = build_candidate(prepared, spec_for(prepared, settings, ()), args.out / "candidates", calibration,
                               args.out / "cache")
        wall, cpu = time.perf_counter(), cpu_seconds()
        [(_, _, result)] = list(evaluator.evaluate([cand], data))
        rows.append(row(f"full INT8 {name}", result, time.perf_counter() - wall, cpu_seconds() - cpu))

    print(f"{args.model.name}: {args.eval} eval / {args.calibration} calibration images, {args.latency_runs} "
          f"interleaved pairs per job, onnxruntime threads={args.threads}, {os.cpu_count()} cores, "
          f"CPU flags: {cpu_flags()}")
    print("| job | agree % | top-1 % | SQNR dB | cosine | KL | p50 ms | FP32 p50 ms | ratio p50 [p10, p90] "
          "| MB | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {fmt(r['agreement'], '.1f', 100)} | {fmt(r['top1'], '.1f', 100)} | "
              f"{fmt(r['sqnr_db'], '.1f')} | {fmt(r['cosine'], '.4f')} | {fmt(r['kl'], '.4f')} | "
              f"{fmt(r['p50_ms'], '.2f')} | {fmt(r['fp32_p50_ms'], '.2f')} | {fmt(r['ratio'], '.3f')} "
              f"[{fmt(r['p10'], '.3f')}, {fmt(r['p90'], '.3f')}] | {r['size_mb']:.1f} | {r['wall_s']:.1f} | "
              f"{r['cpu_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
