"""Terminal output: progress while candidates run; at the end each device's front (with FP32), the
comparison across device classes, and per device the recommendation, verdict and target."""
from __future__ import annotations

import sys
from typing import Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from coordinator.measures import FASTER, SLOWER, UNMEASURED, WITHIN_NOISE, latency_ratio, speed, sqnr
from coordinator.policy import device_results
from coordinator.tune import TuneEvents
from shared.results import DeviceResult

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 140)  # no terminal: do not squeeze tables to 80


def pct(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio_text(result: Mapping) -> str:
    """Ratio to FP32 ("~" when recomputed from two p50s measured at different moments)."""
    ratio = latency_ratio(result)
    if ratio is None:
        return "-"
    return f"{ratio:.2f}" + ("" if result.get("latency_ratio_vs_fp32") is not None else "~")


_SPEED_MARK = {SLOWER: "[red]slower than FP32[/]", FASTER: "", WITHIN_NOISE: "as fast as FP32", UNMEASURED: ""}


def front_table(report: Mapping, device: str) -> Table:
    """The device's first Pareto front, with FP32 on the first row (its latency is the yardstick)."""
    pareto = report.get("pareto", {}).get("per_device", {}).get(device, {})
    front = (pareto.get("fronts") or [[]])[0]
    view = device_results(report, device)
    by_id = {c["id"]: c for c in report["candidates"]}
    fp32 = report.get("fp32", {}).get(device, {})
    full = fp32.get("size_bytes") or report["model"]["size_bytes"]
    table = Table(title=f"Pareto front on {device} (FP32 top-1 {pct(fp32.get('top1_accuracy'))}%, "
                        f"{full / 1e6:.2f} MB, p50 {num(fp32.get('latency_ms_p50'))} ms)")
    for col in ("candidate", "float layers", "top-1 agree %", "top-5 agree %", "top-1 %", "SQNR dB", "size MB",
                "p50 ms", "x FP32", ""):
        table.add_column(col, justify="right" if col not in ("candidate", "") else "left")
    table.add_row("FP32", "all", "100.0", "100.0", pct(fp32.get("top1_accuracy")), "-", f"{full / 1e6:.2f}",
                  num(fp32.get("latency_ms_p50")), "1.00", "reference", style="dim")
    for cid in front:
        c, r = by_id[cid], view[cid]
        marks = [m for m in ("recommended" if cid == pareto.get("recommended") else "",
                             _SPEED_MARK[speed(r)]) if m]
        table.add_row(cid, str(c["num_excluded"]), pct(r.get("top1_agreement")), pct(r.get("top5_agreement")),
                      pct(r.get("top1_accuracy")), num(sqnr(r), 1), f"{c['size_bytes'] / 1e6:.2f}",
                      num(r.get("latency_ms_p50")), ratio_text(r), ", ".join(marks))
    return table


def comparison_table(report: Mapping, limit: int = 24) -> Table | None:
    """Candidates side by side on every device class (report `comparison`): agreement, SQNR, p50,
    ratio to FP32 and status per class; each class's recommendation; divergences flagged. Shows the
    recommended, front and divergent candidates first, at most `limit` rows."""
    comp = report.get("comparison")
    if not comp:
        return None
    devices = comp["devices"]
    table = Table(title="Across device classes (ratio = p50 / FP32 p50 on that class; * = recommended there)")
    table.add_column("candidate")
    for d in devices:
        fp32 = comp.get("fp32", {}).get(d, {})
        table.add_column(f"{d}\nagree % | SQNR dB | p50 ms | x FP32 (FP32 {num(fp32.get('latency_ms_p50'))} ms)",
                         justify="right")
    table.add_column("divergence")
    rows = _comparison_rows(report, comp, limit)
    for row in rows:
        cells = []
        for d in devices:
            cell = row["per_device"].get(d)
            star = "*" if comp["recommended"].get(d) == row["candidate"] else ""
            if cell is None:
                cells.append("-")
            elif cell["status"] != "ok":
                cells.append(f"[red]{cell['status']}[/]")          # the cause is in the divergence column
            else:
                ratio = cell.get("latency_ratio_vs_fp32")
                slow = "[red]" if cell.get("speed") == SLOWER else ""
                cells.append(f"{star}{pct(cell.get('top1_agreement'))} | {num(cell.get('output_sqnr_db'), 1)} | "
                             f"{num(cell.get('latency_ms_p50'))} | {slow}{num(ratio)}{'[/]' if slow else ''}")
        table.add_row(row["candidate"], *cells, f"[yellow]{row['why']}[/]" if row["divergent"] else "")
    hidden = len(comp["rows"]) - len(rows)
    if hidden > 0:
        table.caption = f"{hidden} more candidate(s) in report.json `comparison`"
    return table


def _comparison_rows(report: Mapping, comp: Mapping, limit: int) -> list[dict]:
    per_device = report.get("pareto", {}).get("per_device", {})
    first = set(comp["recommended"].values())
    fronts = {cid for d in per_device.values() for cid in (d.get("fronts") or [[]])[0]}
    probes = {e["candidate"] for d in (report.get("recipe_probe") or {}).get("per_device", {}).values()
              for e in d.get("measured", {}).values()}

    def rank(row: dict) -> tuple:
        cid = row["candidate"]
        return (cid not in first, not row["divergent"], cid not in probes, cid not in fronts)

    return sorted(comp["rows"], key=rank)[:limit]


def print_summary(report: Mapping, report_path, page=None, notes=()) -> None:
    """Everything a user reads at the end of a tune: each device's front (with FP32), the
    comparison across classes, and per device the recommendation, the policy's verdict and reason,
    whether the target was met, and what ended the search."""
    for device in report.get("devices", []):
        out.print(front_table(report, device))
    table = comparison_table(report)
    if table is not None:
        out.print(table)
    status = report.get("status", {})
    if "evaluations" in status:
        what = "candidates" if len(report.get("devices", [])) < 2 else "results (candidate x device class)"
        out.print(f"evaluated {status['evaluations']} {what} ({status.get('resumed', 0)} already in the report) "
                  f"in {status.get('elapsed_seconds', 0):.0f} s")
    per_device = report.get("pareto", {}).get("per_device", {})
    for device, entry in per_device.items():
        policy = entry.get("policy") or {}
        out.print(f"[bold]{device}[/]: recommended: {entry.get('recommended') or 'none'}"
                  + (f" — {escape(policy['verdict'])}" if policy.get("verdict") else ""))
        if policy.get("reason"):
            out.print(f"  policy: {escape(policy['reason'])}")
        if entry.get("measured_with"):
            what = f"{entry['recommended']} on {device} was" if entry.get("recommended") else \
                f"the candidates on {device} were"
            out.print(f"  {what} measured with {escape(entry['measured_with'])}")
        target = entry.get("target")
        out.print(f"  {escape(target['line'])}" if target else "  no target set (--max-drop, --max-top1-drop, "
                  "--min-sqnr-db, ...): the recommendation is the front's trade-off")
        if entry.get("objectives_note"):
            out.print(f"  note: {escape(entry['objectives_note'])}")
    if status.get("stopped_by"):
        out.print(f"search ended: {escape(status['stopped_by'])}")
    for note in notes:
        out.print(escape(note))
    out.print(f"report: {escape(str(report_path))}" + (f"; page: {escape(str(page))}" if page else ""))


def fleet_table(fleet) -> Table:
    """The fleet summary (coordinator/html/fleet.py) as index.html shows it: a row per model, a
    column per device class with the candidate to ship (or none and why), its latency ratio to FP32
    with p10-p90, agreement / SQNR, size as a share of FP32's and whether the target was met."""
    table = Table(title="What to ship: each model on each device class (ratio = p50 / FP32 p50 on that class)")
    table.add_column("model")
    for d in fleet.devices:
        table.add_column(escape(d))
    for row in fleet.rows:
        cells = []
        for d in fleet.devices:
            p = row.picks.get(d)
            if p is None or not p.decided:
                cells.append("[dim]waiting[/]")
                continue
            ship = f"[bold]{escape(p.ship)}[/]" if p.ships else f"[yellow]{escape(p.ship)}[/]"
            if p.recommended and not p.ships:
                ship += " [yellow](recommended anyway: allow_slower)[/]"
            ratio = f"[red]{p.ratio_text}[/]" if p.speed == SLOWER else p.ratio_text
            target = {"met": "[green]target met[/]", "missed": "[red]target missed[/]"}.get(p.target_text,
                                                                                          "no target")
            cells.append(f"{ship}\n{ratio} | {p.fidelity_text} | size {p.size_text} | {target}")
        table.add_row(f"{escape(row.name)}\n[dim]{escape(row.state)}[/]", *cells)
    return table


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
