"""The decision on a real model: EfficientNet-Lite0 tuned by the CLI as a user would, per configuration
one row with what the tuner recommends and whether it meets the targets:

    .venv/bin/python bench/decide.py [--model models/effnet_lite0.onnx]
        [--images ../shared/data/imagenet-sample] [--only NAME ...] [--out bench-out/decide] [-- EXTRA FLAGS]

Targets: top-1 agreement >= 99%, labelled top-1 within 0.5 pt of FP32, latency <= 0.7x FP32 on the
measuring CPU, >= 90% of the full-INT8 size saving kept, <= 24 evaluations. Every run: 64 calibration
+ 200 disjoint evaluation images, Lite preprocessing (mean 0.498, std 0.502), 1 onnxruntime thread,
no budget (the tuner's default budget and plateau rules end the search). The ratio is the report's
interleaved one when the agents measure it that way, else the two p50s' quotient, marked '~' (measured at
different moments: on a busy machine that is noise, say so). Prints the CPU flags (VNNI or not)."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from effnet import IMAGES, MODEL  # noqa: E402
from models import row_from_report  # noqa: E402
from zoo_baseline import cpu_flags  # noqa: E402

ISSUE_PROBES = ["u8s8", "u8s8-rr", "s8s8-rr", "u8u8", "qoperator-s8s8"]
TARGET = ["--strategy", "greedy", "--max-drop", "0.01", "--max-top1-drop", "0.005"]
#: name -> extra flags; every run gets TARGET and the data flags
RUNS = {
    "issue probes, balanced": ["--probe-recipes", *ISSUE_PROBES],
    "default probes, balanced": [],                      # u8s8 u8s8-rr u8s8-bc-prefix2 (catalog.AUTO_PROBES)
    "default probes, prefer latency": ["--prefer", "latency"],
    "default probes, prefer size": ["--prefer", "size"],
}
LIMITS = {"agreement": 0.99, "top1_drop": 0.005, "ratio": 0.7, "size_kept": 0.9, "evaluations": 24}


def command(args, out: Path, extra: list[str]) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "coordinator"), "tune", str(args.model), "--out", str(out),
            "--images", str(args.images), "--calibration", "64", "--eval", "200", "--mean", "0.498", "0.498",
            "0.498", "--std", "0.502", "0.502", "0.502", "--threads", "1", "--latency-runs", str(args.latency_runs),
            *TARGET, *extra, *args.extra]


def run(name: str, extra: list[str], args) -> dict:
    out = args.out / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = command(args, out, extra)
    print("$ " + " ".join(cmd), flush=True)
    log = out.with_suffix(".log")
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=out)
    wall = time.monotonic() - start
    row = {"name": name, "wall_s": wall, "log": str(log)}
    if proc.returncode != 0:
        return {**row, "error": f"exit {proc.returncode}: see {log}"}
    report = json.loads((out / "report.json").read_text())
    row.update(row_from_report(report))
    probe = (report.get("recipe_probe") or {}).get("per_device", {}).get("local", {})
    row["probe"] = {n: (e.get("top1_agreement"), e.get("latency_ratio_vs_fp32")) for n, e in
                    probe.get("measured", {}).items()}
    row["probe_chosen"] = probe.get("chosen")
    return row


def checks(r: dict) -> str:
    """Which targets the recommended candidate meets."""
    if r.get("candidate") is None:
        return "nothing recommended"
    out = []
    top1_drop = None if r["fp32_top1"] is None or r["rec_top1"] is None else r["fp32_top1"] - r["rec_top1"]
    for label, ok in (("agree>=99", (r["agreement"] or 0) >= LIMITS["agreement"]),
                      ("top1", top1_drop is not None and top1_drop <= LIMITS["top1_drop"] + 1e-12),
                      ("<=0.7x", r["ratio"] is not None and r["ratio"] <= LIMITS["ratio"]),
                      ("size>=90%", (r["size_kept"] or 0) >= LIMITS["size_kept"]),
                      ("<=24 evals", (r["evaluations"] or 99) <= LIMITS["evaluations"])):
        out.append(label + (" ok" if ok else " MISSED"))
    return ", ".join(out)


def pct(v, digits=1) -> str:
    return "-" if v is None else f"{v * 100:.{digits}f}"


def print_table(rows: list[dict]) -> None:
    head = ("run", "chosen recipe", "float layers", "agree %", "top-1 % FP32->rec", "FP32 p50 ms", "rec p50 ms",
            "ratio", "SQNR dB", "size kept %", "evals", "wall s", "targets", "stopped by")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} |" + " - |" * (len(head) - 2) + f" {r['error']} |")
            continue
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}" + ("~" if r["ratio_source"] != "report" else "")
        print(f"| {r['name']} | {r['recipe'] or r.get('probe_chosen') or '-'} | "
              f"{'-' if r['float_layers'] is None else r['float_layers']} | {pct(r['agreement'])} | "
              f"{pct(r['fp32_top1'])}->{pct(r['rec_top1'])} | "
              f"{'-' if r['fp32_p50_ms'] is None else format(r['fp32_p50_ms'], '.2f')} | "
              f"{'-' if r['rec_p50_ms'] is None else format(r['rec_p50_ms'], '.2f')} | {ratio} | "
              f"{'-' if r['sqnr_db'] is None else format(r['sqnr_db'], '.1f')} | {pct(r['size_kept'], 0)} | "
              f"{r['evaluations']} | {r['wall_s']:.0f} | {checks(r)} | {r.get('stopped_by') or ''} |")
    for r in rows:
        if "error" not in r:
            probes = ", ".join(f"{n} {pct(a)}% {'-' if q is None else format(q, '.2f')}x" for n, (a, q) in
                               r["probe"].items())
            print(f"- {r['name']}: probes (agreement, ratio) {probes}; chosen {r['probe_chosen']}; {r['verdict']}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--images", type=Path, default=IMAGES)
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "decide")
    p.add_argument("--only", nargs="+", choices=list(RUNS), metavar="RUN", help=f"runs: {'; '.join(RUNS)}")
    p.add_argument("--latency-runs", type=int, default=20)
    args = p.parse_args(argv)
    args.extra = extra
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_flags()}", flush=True)
    rows = []
    for name in args.only or list(RUNS):
        rows.append(run(name, RUNS[name], args))
        (args.out / "decide.json").write_text(json.dumps(rows, indent=1) + "\n")
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
