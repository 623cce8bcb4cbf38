"""PNG figures of a report: SeQTO's two figures, from report.json alone."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _ok(cand: Mapping, device: str) -> bool:
    return cand.get("results", {}).get(device, {}).get("status") == "ok"


def plot_objectives(report: Mapping, device: str, path: Path) -> Path:
    """Agreement, labelled top-1 and size vs number of excluded layers; top-3 front as lines."""
    cands = sorted((c for c in report["candidates"] if _ok(c, device)), key=lambda c: c["num_excluded"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if cands:
        ks = [c["num_excluded"] for c in cands]
        if cands[0]["results"][device].get("top1_agreement") is not None:
            ax.plot(ks, [c["results"][device]["top1_agreement"] * 100 for c in cands], "o-", label="top-1 agreement %")
        else:       # dense or generic outputs: fidelity in dB instead
            ax.plot(ks, [c["results"][device].get("output_sqnr_db") for c in cands], "o-", label="output SQNR dB")
        if cands[0]["results"][device].get("top1_accuracy") is not None:
            ax.plot(ks, [c["results"][device]["top1_accuracy"] * 100 for c in cands], "s-", label="labelled top-1 %")
        ax2 = ax.twinx()
        ax2.plot(ks, [c["size_bytes"] / 1e6 for c in cands], "^--", color="tab:gray", label="size MB")
        ax2.set_ylabel("size (MB)")
        front = report.get("pareto", {}).get("per_device", {}).get(device, {}).get("fronts") or [[]]
        by_id = {c["id"]: c for c in cands}
        for i, cid in enumerate(front[0][:3]):
            if cid in by_id:
                ax.axvline(by_id[cid]["num_excluded"], color=f"C{i + 3}", linestyle=":",
                           label=f"front {cid[:8]} (k={by_id[cid]['num_excluded']})")
    ax.set_xlabel("layers kept in float")
    ax.set_ylabel("% / dB")
    ax.set_title(f"{Path(report['model']['path']).name} on {device}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    else:       # nothing ran on this device: say so instead of an empty chart
        ax.text(0.5, 0.5, "no candidate ran on this device", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_layer_errors(report: Mapping, path: Path, top: int = 40) -> Path:
    """Per-layer normalised SeQTO errors (1 - norm SQNR: higher = more damaged), most damaged first."""
    rows = [r for r in report.get("ranking", []) if r.get("seqto")][:top]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if rows:
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [1 - r["seqto"].get("qdq_norm", 0) for r in rows], width=0.4, label="qdq error")
        ax.bar([i + 0.2 for i in x], [1 - r["seqto"].get("xmodel_norm", 0) for r in rows], width=0.4,
               label="xmodel error")
        ax.set_xticks(list(x))
        ax.set_xticklabels([r["node"][-28:] for r in rows], rotation=90, fontsize=6)
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no ranking in this report (search skipped)", ha="center", transform=ax.transAxes)
    ax.set_ylabel("normalised error (1 = worst)")
    ax.set_title("per-layer quantization error (SeQTO)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(report: Mapping, out_dir: Path) -> list[Path]:
    paths = [plot_layer_errors(report, out_dir / "layers.png")]
    for device in report.get("devices", []):
        paths.append(plot_objectives(report, device, out_dir / f"objectives-{device}.png"))
    return paths


def plots_task(report_path: str, out_dir: str) -> list[str]:
    """`write_plots` for a report.json on disk, as a build-worker task: the coordinator process never
    loads matplotlib (its memory and CPU stay with the workers)."""
    import json

    report = json.loads(Path(report_path).read_text())
    return [str(path) for path in write_plots(report, Path(out_dir))]
