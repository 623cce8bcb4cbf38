"""Terminal output: progress while candidates run, and the Pareto table at the end."""
from __future__ import annotations

import sys
from typing import Mapping

from rich.console import Console
from rich.table import Table

from coordinator.tune import TuneEvents
from shared.results import DeviceResult

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 140)  # no terminal: do not squeeze tables to 80


def pct(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def front_table(report: Mapping, device: str) -> Table:
    pareto = report.get("pareto", {}).get("per_device", {}).get(device, {})
    front = (pareto.get("fronts") or [[]])[0]
    by_id = {c["id"]: c for c in report["candidates"]}
    fp32 = report.get("fp32", {}).get(device, {})
    full = fp32.get("size_bytes") or report["model"]["size_bytes"]
    table = Table(title=f"Pareto front on {device} (FP32 top-1 {pct(fp32.get('top1_accuracy'))}%, "
                        f"{full / 1e6:.2f} MB)")
    for col in ("candidate", "float layers", "top-1 agree %", "top-5 agree %", "top-1 %", "SQNR dB", "size MB",
                "p50 ms", "x FP32", ""):
        table.add_column(col, justify="right" if col not in ("candidate", "") else "left")
    for cid in front:
        c = by_id[cid]
        r = c["results"][device]
        mark = "recommended" if cid == pareto.get("recommended") else ""
        table.add_row(cid, str(c["num_excluded"]), pct(r.get("top1_agreement")), pct(r.get("top5_agreement")),
                      pct(r.get("top1_accuracy")), num(r.get("output_sqnr_db"), 1), f"{c['size_bytes'] / 1e6:.2f}",
                      num(r.get("latency_ms_p50"), 2), num(r.get("latency_ratio_vs_fp32"), 2), mark)
    return table


def num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def progress_events(progress) -> TuneEvents:
    """Tuner callbacks that drive a rich progress bar and report failed candidates."""
    task = progress.add_task("starting", total=None)

    def on_plan(total: int) -> None:
        progress.update(task, total=(progress.tasks[0].total or 0) + total)

    def on_result(cid: str, device: str, result: DeviceResult) -> None:
        progress.advance(task)
        if not result.ok:
            console.print(f"[yellow]{cid} on {device}: {result.status.value} ({result.crash_cause})")

    return TuneEvents(on_stage=lambda stage: progress.update(task, description=stage), on_plan=on_plan,
                      on_result=on_result)
