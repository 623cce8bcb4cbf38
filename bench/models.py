"""`coordinator tune` on every zoo model (bench/zoo.py), one row per model, read from each report.json.

    .venv/bin/python bench/zoo.py fetch                      # once: models + real data under models/zoo
    .venv/bin/python bench/models.py [--only NAME ...] [--skip-unsupported] [--try-unsupported]
        [--zoo models/zoo] [--out bench-out/models] [-- EXTRA TUNE FLAGS]

Each model is tuned with its own input convention (the zoo's `qfarm_flags`) and the same search flags
(defaults below, overridable after `--`) into OUT/<name>/, by the repository's own CLI
(.venv/bin/coordinator), in a fresh output dir. Columns: FP32 p50, the recommended candidate's p50 and
its ratio to FP32, top-1 agreement, labelled top-1 (FP32 -> recommended, where labels exist), output SQNR,
size kept (share of the full-INT8 size saving of the recommended candidate's recipe that it keeps),
evaluations, wall seconds, whether the target was met, the policy's verdict for the model on this
machine ("quantization pays ..." / "quantization does not pay ...": then nothing is recommended) and
the rule that ended the search. Keys a report does not carry yet print '-'; a ratio
that the report does not carry is recomputed from the two p50s and marked '~' (those two were measured at
different moments, not interleaved). Models the tuner cannot run yet are listed with the reason
(`--try-unsupported` runs them anyway and shows the tuner's own error).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from zoo import ZOO, load_meta  # noqa: E402
from zoo_baseline import cpu_flags  # noqa: E402

# no --budget-evals and no --probe-recipes: the tuner's own defaults (probes u8s8, u8s8-rr,
# u8s8-bc-prefix2; default budget and plateau rules) must pick the recipe and end every search
SEARCH = ["--strategy", "greedy", "--max-drop", "0.01", "--threads", "1"]
N_EVAL, N_CAL = 200, 64
#: models without top-1 (dense maps, audio): no agreement target applies (--min-sqnr-db / --min-iou do,
#: at values not settled yet), so a sweep of the ranking measures the trade-off instead
SEARCH_NO_TOP1 = ["--strategy", "sweep", "--max-candidates", "6", "--threads", "1"]


def search_flags(meta: dict) -> list[str]:
    return SEARCH if meta["task"] == "classification" else SEARCH_NO_TOP1


#: models fed from the zoo's npz files, with their --data-layout: the text-line classifier's
#: preprocessing is no image-folder convention (batched rows, x [N, 1, 3, 48, 192]); Silero VAD as
#: shipped takes whole feeds (sr a 0-d int64, state [2, 1, 128] with its batch on axis 1)
TENSOR_MODELS = {"ppocr_textline_cls": "batched", "silero_vad": "whole-feed", "silero_vad_seq": "whole-feed"}


def tensor_command(meta: dict, zoo: Path, out: Path, extra: list[str]) -> list[str] | None:
    """Models fed from their zoo npz (calibration.npz / eval.npz, disjoint recordings or photos)."""
    layout = TENSOR_MODELS.get(meta["name"])
    if layout is None:
        return None
    data = zoo / meta["name"] / "data"
    return [str(ROOT / ".venv" / "bin" / "coordinator"), "tune", str(zoo / meta["name"] / "model.onnx"),
            "--out", str(out), "--data", str(data / "eval.npz"), "--calibration-data", str(data / "calibration.npz"),
            "--data-layout", layout, "--calibration", str(N_CAL), "--eval", str(N_EVAL)] + search_flags(meta) + extra


def tune_command(meta: dict, zoo: Path, out: Path, extra: list[str]) -> list[str]:
    tensors = tensor_command(meta, zoo, out, extra)
    if tensors is not None:
        return tensors
    data = zoo / meta["name"] / "data"
    images = data / "images"
    n_images = len(list(images.iterdir()))
    cmd = [str(ROOT / ".venv" / "bin" / "coordinator"), "tune", str(zoo / meta["name"] / "model.onnx"),
           "--out", str(out), "--images", str(images),
           "--labels", "synset" if meta["labels"] == "synset" else "none", *(meta["qfarm_flags"] or [])]
    cal_dir = data / "calibration_images"
    if cal_dir.is_dir():
        cmd += ["--calibration-images", str(cal_dir), "--calibration", str(min(N_CAL, len(list(cal_dir.iterdir())))),
                "--eval", str(min(N_EVAL, n_images))]
    else:
        n_eval = min(N_EVAL, n_images - min(N_CAL, n_images // 4))
        cmd += ["--calibration", str(min(N_CAL, n_images - n_eval)), "--eval", str(n_eval)]
    return cmd + search_flags(meta) + extra


def local(result: dict | None, device: str = "local") -> dict:
    return (result or {}).get(device, {}) if isinstance(result, dict) else {}


def first_number(value):
    """A number, or the first number of a per-output mapping ({output: value})."""
    if isinstance(value, dict):
        value = next(iter(value.values()), None)
    return value if isinstance(value, (int, float)) else None


def recipe_label(settings: dict) -> str:
    """The recommended candidate's own recipe, named like --probe-recipes (u8s8, u8s8-rr, s8s8-rr, ...)."""
    short = {"uint8": "u8", "int8": "s8", "uint16": "u16", "int16": "s16"}
    label = (short.get(settings.get("activation_type", "uint8"), "?")
             + short.get(settings.get("weight_type", "int8"), "?"))
    if settings.get("format") == "qoperator":
        label = "qoperator-" + label
    if settings.get("mode") == "dynamic":
        label = "dynamic-" + label
    if settings.get("reduce_range"):
        label += "-rr"
    if settings.get("per_channel") is False:
        label += " per-tensor"
    if settings.get("calibrate", "minmax") != "minmax":
        label += " " + settings["calibrate"]
    for key, value in sorted((settings.get("recipe") or {}).items()):
        label += f" {key}={value}"
    return label


def row_from_report(report: dict) -> dict:
    device = (report.get("devices") or ["local"])[0]      # "local", or the farm's device class
    fp32 = report.get("fp32", {}).get(device, {})
    pareto = report.get("pareto", {})
    rec_id = pareto.get("per_device", {}).get(device, {}).get("recommended", pareto.get("recommended"))
    cands = report.get("candidates", [])
    rec = next((c for c in cands if c.get("id") == rec_id), None)
    res = local(rec.get("results"), device) if rec else {}
    size_kept = None
    if rec:
        full = [c for c in cands if c.get("num_excluded") == 0 and not c.get("int16_nodes")
                and c.get("settings") == rec.get("settings")]
        full_size = min((c["size_bytes"] for c in full), default=None)
        fp32_size = fp32.get("size_bytes") or report.get("model", {}).get("size_bytes")
        if full_size and fp32_size and fp32_size > full_size:
            size_kept = (fp32_size - rec["size_bytes"]) / (fp32_size - full_size)
    ratio, ratio_src = res.get("latency_ratio_vs_fp32"), "report"
    if ratio is None and res.get("latency_ms_p50") and fp32.get("latency_ms_p50"):
        ratio, ratio_src = res["latency_ms_p50"] / fp32["latency_ms_p50"], "recomputed"
    entry = pareto.get("per_device", {}).get(device, {})
    target = entry.get("target")
    settings = (rec or {}).get("settings", {})
    # FP32's p50 timed next to the recommended candidate (interleaved) when there is one: the ratio's base
    fp32_p50 = res.get("fp32_latency_ms_p50") or fp32.get("latency_ms_p50")
    return {"candidate": rec_id, "fp32_p50_ms": fp32_p50, "rec_p50_ms": res.get("latency_ms_p50"),
            "ratio": ratio, "ratio_source": ratio_src, "agreement": res.get("top1_agreement"),
            "fp32_top1": fp32.get("top1_accuracy"), "rec_top1": res.get("top1_accuracy"),
            "sqnr_db": first_number(res.get("output_sqnr_db")), "cosine": res.get("cosine"), "iou": res.get("iou"),
            "size_kept": size_kept,
            "float_layers": (rec or {}).get("num_excluded"), "recipe": recipe_label(settings) if rec else None,
            "evaluations": report.get("status", {}).get("evaluations"),
            "stopped_by": report.get("status", {}).get("stopped_by"),
            "verdict": (entry.get("policy") or {}).get("verdict"),
            "target_met": None if not target else target.get("met")}


def run_one(meta: dict, args) -> dict:
    out = args.out / meta["name"]
    if not (args.zoo / meta["name"] / "data" / "images").is_dir() and meta["name"] not in TENSOR_MODELS:
        return {"name": meta["name"], "task": meta["task"], "wall_s": 0.0,
                "error": "no image folder in the zoo data and no tensor layout known for it"}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = tune_command(meta, args.zoo, out, args.extra)
    if args.farm:
        cmd += ["--coordinator", args.farm, "--devices", FARM_DEVICE]
    print("$ " + " ".join(cmd), flush=True)
    start = time.monotonic()
    log = args.out / f"{meta['name']}.log"
    with open(log, "w") as f:
        # cwd: a failing quant_pre_process leaves sym_shape_infer_temp.onnx and <uuid>.data in the cwd
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=out)
    wall = time.monotonic() - start
    row = {"name": meta["name"], "task": meta["task"], "wall_s": wall, "log": str(log),
           "where": f"farm ({FARM_DEVICE}, 1 agent)" if args.farm else "local"}
    report_path = out / "report.json"
    if proc.returncode != 0 or not report_path.exists():
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        err = next((ln for ln in lines if ln.startswith("error:")), lines[-1] if lines else "no output")
        return {**row, "error": f"exit {proc.returncode}: {err.strip()}"}
    return {**row, **row_from_report(json.loads(report_path.read_text()))}


def fmt(v, spec=".1f", scale=1.0) -> str:
    if v is None:
        return "-"
    return format(v * scale if scale != 1.0 else v, spec)


def print_table(rows: list[dict]) -> None:
    head = ("model", "task", "where", "FP32 p50 ms", "rec p50 ms", "ratio", "agree %", "top-1 % FP32->rec", "SQNR dB",
            "cosine", "IoU", "size kept %", "float layers", "recipe", "evals", "wall s", "target", "verdict",
            "stopped by")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        if "error" in r or "unsupported" in r:
            note = r.get("error") or "not run: " + r["unsupported"]
            print(f"| {r['name']} | {r['task']} | {r.get('where', '-')} |" + " - |" * (len(head) - 4) + f" {note} |")
            continue
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}" + ("~" if r["ratio_source"] != "report" else "")
        top1 = "-" if r["fp32_top1"] is None else f"{fmt(r['fp32_top1'], '.1f', 100)}->{fmt(r['rec_top1'], '.1f', 100)}"
        target = "-" if r["target_met"] is None else ("met" if r["target_met"] else "not met")
        print(f"| {r['name']} | {r['task']} | {r.get('where', 'local')} | {fmt(r['fp32_p50_ms'], '.2f')} | {fmt(r['rec_p50_ms'], '.2f')} | "
              f"{ratio} | {fmt(r['agreement'], '.1f', 100)} | {top1} | {fmt(r['sqnr_db'])} | "
              f"{fmt(r.get('cosine'), '.4f')} | {fmt(r.get('iou'), '.3f')} | "
              f"{fmt(r['size_kept'], '.0f', 100)} | {fmt(r['float_layers'], 'd')} | {r['recipe'] or '-'} | "
              f"{fmt(r['evaluations'], 'd')} | {r['wall_s']:.0f} | {target} | {r.get('verdict') or '-'} | "
              f"{r.get('stopped_by') or ''} |")


def candidate_rows(report: dict) -> list[dict]:
    """Every candidate of a report by float layers: size, fidelity (SQNR, cosine, IoU) and its latency
    ratio to FP32 (p10-p90), on the report's first device: the trade-off a sweep measured."""
    device = (report.get("devices") or ["local"])[0]
    rows = []
    for c in sorted(report.get("candidates", []), key=lambda c: c.get("num_excluded", 0)):
        res = local(c.get("results"), device)
        if res.get("status") != "ok":
            continue
        rows.append({"float_layers": c.get("num_excluded"), "size_mb": c["size_bytes"] / 1e6,
                     "sqnr_db": first_number(res.get("output_sqnr_db")), "cosine": res.get("cosine"),
                     "iou": res.get("iou"), "ratio": res.get("latency_ratio_vs_fp32"),
                     "p10": res.get("latency_ratio_p10"), "p90": res.get("latency_ratio_p90"),
                     "outputs": {k: v.get("sqnr_db") for k, v in (res.get("outputs") or {}).items()}})
    return rows


def print_candidates(name: str, report: dict) -> None:
    print(f"\n{name}: every candidate (float layers, size MB, SQNR dB per output, cosine, IoU, latency x FP32 p10-p90)")
    for r in candidate_rows(report):
        outputs = ", ".join(f"{k} {fmt(v)}" for k, v in r["outputs"].items())
        print(f"  {fmt(r['float_layers'], 'd'):>4} | {r['size_mb']:.2f} | {outputs} | {fmt(r['cosine'], '.4f')} | "
              f"{fmt(r['iou'], '.3f')} | {fmt(r['ratio'], '.2f')} ({fmt(r['p10'], '.2f')}-{fmt(r['p90'], '.2f')})")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"models to run (default: all of {', '.join(ZOO)})")
    p.add_argument("--skip-unsupported", action="store_true", help="leave models the tuner cannot run out of the table")
    p.add_argument("--try-unsupported", action="store_true", help="run them anyway and show the tuner's error")
    p.add_argument("--zoo", type=Path, default=ROOT / "models" / "zoo")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "models")
    p.add_argument("--table-only", action="store_true", help="print the table of OUT/models.json, run nothing")
    p.add_argument("--farm", action="store_true", help="tune on a farm: `coordinator serve` and one ORT agent "
                   f"(device class {FARM_DEVICE}, 1 thread) as processes on loopback, `tune --coordinator`")
    args = p.parse_args(argv)
    args.extra = extra
    unknown = [n for n in args.only or [] if n not in ZOO]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(ZOO)}")
    args.zoo, args.out = args.zoo.resolve(), args.out.resolve()
    print(f"CPU: {cpu_flags()}", flush=True)
    if args.table_only:
        rows = json.loads((args.out / "models.json").read_text())
        for r in rows:   # re-read each report: the table follows the reports, not an old reading of them
            report = args.out / r["name"] / "report.json"
            if "error" not in r and "unsupported" not in r and report.exists():
                r.update(row_from_report(json.loads(report.read_text())))
        done = {r["name"] for r in rows}
        if not args.skip_unsupported:
            rows += [{"name": n, "task": m.task, "unsupported": m.unsupported} for n, m in ZOO.items()
                     if m.unsupported and n not in done and (not args.only or n in args.only)]
        print_table(rows)
        return 0
    print(f"search flags: {' '.join(SEARCH + extra)} (models without top-1: {' '.join(SEARCH_NO_TOP1 + extra)})",
          flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with farm(args.out / "farm") if args.farm else contextlib.nullcontext() as address:
        args.farm = address
        rows = []
        for name in args.only or list(ZOO):
            model = ZOO[name]
            if model.unsupported and not args.try_unsupported:
                if not args.skip_unsupported:
                    rows.append({"name": name, "task": model.task, "unsupported": model.unsupported})
                continue
            rows.append(run_one(load_meta(args.zoo, name), args))
            (args.out / "models.json").write_text(json.dumps(rows, indent=1) + "\n")
            print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    for r in rows:            # the trade-off itself where no top-1 target picks a candidate
        report = args.out / r["name"] / "report.json"
        if r.get("task") != "classification" and "error" not in r and "unsupported" not in r and report.exists():
            print_candidates(r["name"], json.loads(report.read_text()))
    return 0


FARM_DEVICE = "cpu-bench"


@contextlib.contextmanager
def farm(work: Path):
    """`coordinator serve` (port 0) and one `agent register --device cpu-bench --threads 1`, real
    processes on 127.0.0.1 (coordinator.testing's launchers); yields the coordinator's address."""
    sys.path.insert(0, str(ROOT))
    from coordinator.testing import agent_process, coordinator_process, stop_process, wait_for

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port_file = work / "port"
    server = coordinator_process(work / "data", 0, port_file, work / "coordinator.log")
    agent = None
    try:
        port = wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, "the coordinator's port")
        address = f"127.0.0.1:{port}"
        agent = agent_process(FARM_DEVICE, address, work / "agent")
        yield address
    finally:
        for proc in (agent, server):
            if proc is not None:
                stop_process(proc)


if __name__ == "__main__":
    sys.exit(main())
