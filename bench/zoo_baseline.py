"""Baseline for every zoo model: FP32 vs full-INT8 QDQ (per-channel, u8 activations, s8 weights, MinMax),
reduce_range off and on, with onnxruntime.quantization directly (quantize_static + a CalibrationDataReader
over the zoo's calibration.npz), judged on the zoo's real eval.npz.

    .venv/bin/python bench/zoo_baseline.py [NAME ...] --zoo models/zoo --out bench-out/zoo_baseline

Per model it prints: what onnxruntime's quant_pre_process and shape inference said (the exact error text
where they fail), then FP32 and INT8 p50 latency measured INTERLEAVED in one process with 1 intra-op thread
(rounds alternate FP32 / INT8 rr-off / INT8 rr-on; the ratio is taken per round and its median and
p10-p90 spread are shown), top-1 agreement and labelled top-1 (classifiers), and SQNR in dB of every
output against FP32 over the whole eval set (all models); where the package has a decision threshold
(the zoo's `threshold`), the IoU of the thresholded masks (dense) or the agreement of the decisions
(e.g. speech / no speech per VAD frame). CPU flags are printed: VNNI changes the int8 kernels.
"""
from __future__ import annotations

import argparse
import os
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from zoo import ZOO, load_meta  # noqa: E402


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = sorted({f for f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "amx_int8") if f" {f}" in text})
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return f"{model}; flags: {' '.join(flags) or 'none of avx2/avx512f/vnni'}"


def samples(npz: Path) -> list[dict[str, np.ndarray]]:
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(next(iter(arrays.values())))
    # np.asarray: a scalar input (silero's sr) indexes to a numpy scalar, which onnxruntime refuses
    return [{k: np.asarray(v[i]) for k, v in arrays.items()} for i in range(n)]


class Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def short_error(exc: BaseException) -> str:
    """One line: type, message and, for a bare assertion, where it fired."""
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " | ")
    if not str(exc).strip():
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        text += f" at {Path(frame.filename).name}:{frame.lineno} in {frame.name}: {frame.line}"
    return text[:600]


def check_preprocess(model: Path, work: Path) -> tuple[Path, dict]:
    """Run the steps qfarm's prepare runs, record each one's verdict, return the model to quantize."""
    verdict = {}
    m = onnx.load(str(model))
    try:
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
        verdict["onnx_strict_shape_inference"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded for the note, not swallowed
        verdict["onnx_strict_shape_inference"] = short_error(exc)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        SymbolicShapeInference.infer_shapes(m, auto_merge=False, guess_output_rank=False)
        verdict["symbolic_shape_inference"] = "ok"
    except Exception as exc:  # noqa: BLE001
        verdict["symbolic_shape_inference"] = short_error(exc)
    out = work / "pre.onnx"
    try:
        quant_pre_process(str(model), str(out))
        verdict["quant_pre_process"] = "ok"
        return out, verdict
    except Exception as exc:  # noqa: BLE001
        verdict["quant_pre_process"] = short_error(exc)
    try:
        quant_pre_process(str(model), str(out), skip_symbolic_shape=True)
        verdict["quant_pre_process_skip_symbolic"] = "ok"
        return out, verdict
    except Exception as exc:  # noqa: BLE001
        verdict["quant_pre_process_skip_symbolic"] = short_error(exc)
    return model, verdict


def quantize(model: Path, out: Path, cal: list[dict], reduce_range: bool) -> str:
    try:
        quantize_static(str(model), str(out), Reader(cal), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        return "ok"
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return short_error(exc)


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def outputs(sess: ort.InferenceSession, feeds: list[dict]) -> list[np.ndarray]:
    runs = [sess.run(None, f) for f in feeds]
    return [np.stack([r[i] for r in runs]) for i in range(len(runs[0]))]


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal > 0 else float("-inf")


def iou(ref: np.ndarray, got: np.ndarray, thr: float) -> float:
    a, b = ref > thr, got > thr
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def interleaved(sessions: dict[str, ort.InferenceSession], feed: dict, rounds: int, runs: int) -> dict:
    """Per round, each session runs `runs` times, in rotating order; per-round medians give the ratios."""
    names = list(sessions)
    for s in sessions.values():   # warm-up
        for _ in range(3):
            s.run(None, feed)
    per_round = {n: [] for n in names}
    all_times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = []
            for _ in range(runs):
                start = time.perf_counter()
                sessions[n].run(None, feed)
                t.append((time.perf_counter() - start) * 1e3)
            per_round[n].append(float(np.median(t)))
            all_times[n].extend(t)
    out = {n: {"p50_ms": float(np.median(all_times[n])), "p90_ms": float(np.percentile(all_times[n], 90))}
           for n in names}
    base = np.asarray(per_round[names[0]])
    for n in names[1:]:
        ratios = np.asarray(per_round[n]) / base
        out[n].update(ratio_median=float(np.median(ratios)), ratio_p10=float(np.percentile(ratios, 10)),
                      ratio_p90=float(np.percentile(ratios, 90)))
    return out


def evaluate(name: str, zoo: Path, work: Path, rounds: int, runs: int) -> dict:
    meta = load_meta(zoo, name)
    model = zoo / name / "model.onnx"
    data = zoo / name / "data"
    cal, ev = samples(data / "calibration.npz"), samples(data / "eval.npz")
    labels_path = data / "eval_labels.npy"
    labels = np.load(labels_path) if labels_path.exists() else None
    to_quantize, verdict = check_preprocess(model, work)
    row: dict = {"name": name, "task": meta["task"], "preprocess": verdict, "n_eval": len(ev), "n_cal": len(cal),
                 "fp32_size": model.stat().st_size, "quantized_from": "quant_pre_process output"
                 if to_quantize != model else "original model (quant_pre_process failed)"}
    paths, sessions = {"fp32": model}, {"fp32": session(model)}
    for label, rr in (("int8", False), ("int8_rr", True)):
        path = work / f"{label}.onnx"
        row[f"{label}_quantize"] = quantize(to_quantize, path, cal, rr)
        if row[f"{label}_quantize"] != "ok":
            continue
        try:
            sessions[label] = session(path)
        except Exception as exc:  # noqa: BLE001 - e.g. per-channel DequantizeLinear `axis` below opset 13
            row[f"{label}_session"] = short_error(exc)
            if "opset13" not in paths:
                paths["opset13"] = work / "opset13.onnx"
                onnx.save(version_converter.convert_version(onnx.load(str(to_quantize)), 13), str(paths["opset13"]))
                row["retried_at_opset"] = 13
            row[f"{label}_quantize"] = quantize(paths["opset13"], path, cal, rr)
            if row[f"{label}_quantize"] != "ok":
                continue
            sessions[label] = session(path)
        row[f"{label}_size"] = path.stat().st_size
    out_names = [o.name for o in sessions["fp32"].get_outputs()]
    ref = outputs(sessions["fp32"], ev)
    if labels is not None:
        row["fp32_top1"] = float((ref[0].reshape(len(ev), -1).argmax(1) == labels).mean())
    for k in [k for k in sessions if k != "fp32"]:
        try:
            got = outputs(sessions[k], ev)
        except Exception as exc:  # noqa: BLE001
            row[f"{k}_run"] = short_error(exc)
            sessions.pop(k)
            continue
        row[f"{k}_sqnr_db"] = {n: sqnr_db(r, g) for n, r, g in zip(out_names, ref, got)}
        if meta["task"] == "classification":
            a, b = ref[0].reshape(len(ev), -1).argmax(1), got[0].reshape(len(ev), -1).argmax(1)
            row[f"{k}_agreement"] = float((a == b).mean())
            if labels is not None:
                row[f"{k}_top1"] = float((b == labels).mean())
        threshold = ZOO[name].threshold
        if meta["task"] == "dense" and threshold is not None:
            row[f"{k}_iou"] = iou(ref[0], got[0], threshold)
        elif threshold is not None:   # e.g. speech / no speech per VAD frame
            row[f"{k}_decision_agreement"] = float(((ref[0] > threshold) == (got[0] > threshold)).mean())
        row[f"{k}_max_abs_err"] = {n: float(np.max(np.abs(r - g))) for n, r, g in zip(out_names, ref, got)}
    row["latency"] = interleaved(sessions, ev[0], rounds, runs)
    return row


def fmt(v, spec=".1f", scale=1.0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not np.isfinite(v):
        return "inf" if v > 0 else "-inf"
    return format(v * scale, spec)


def thresholded(row: dict, k: str) -> str:
    if row.get(f"{k}_iou") is not None:
        return fmt(row[f"{k}_iou"], ".3f")
    return fmt(row.get(f"{k}_decision_agreement"), ".1f", 100)


def print_table(rows: list[dict]) -> None:
    head = ("model", "task", "fp32 p50 ms", "int8 p50 ms", "ratio (p10-p90)", "int8-rr p50 ms", "ratio (p10-p90)",
            "agree % rr-off/on", "top-1 % fp32/off/on", "SQNR dB off/on (1st output)", "IoU or decisions % off/on",
            "size int8/fp32")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        lat = r.get("latency", {})

        def ratio(k):
            x = lat.get(k)
            return "-" if not x else f"{x['ratio_median']:.2f} ({x['ratio_p10']:.2f}-{x['ratio_p90']:.2f})"

        def first_sqnr(k):
            s = r.get(f"{k}_sqnr_db")
            return fmt(next(iter(s.values()))) if s else "-"

        size = f"{r['int8_size'] / r['fp32_size']:.2f}" if r.get("int8_size") else "-"
        print(f"| {r['name']} | {r['task']} | {fmt(lat.get('fp32', {}).get('p50_ms'), '.2f')} | "
              f"{fmt(lat.get('int8', {}).get('p50_ms'), '.2f')} | {ratio('int8')} | "
              f"{fmt(lat.get('int8_rr', {}).get('p50_ms'), '.2f')} | {ratio('int8_rr')} | "
              f"{fmt(r.get('int8_agreement'), '.1f', 100)}/{fmt(r.get('int8_rr_agreement'), '.1f', 100)} | "
              f"{fmt(r.get('fp32_top1'), '.1f', 100)}/{fmt(r.get('int8_top1'), '.1f', 100)}/"
              f"{fmt(r.get('int8_rr_top1'), '.1f', 100)} | {first_sqnr('int8')}/{first_sqnr('int8_rr')} | "
              f"{thresholded(r, 'int8')}/{thresholded(r, 'int8_rr')} | {size} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(ZOO)}")
    p.add_argument("--zoo", type=Path, default=ROOT / "models" / "zoo")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "zoo_baseline")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--runs", type=int, default=5, help="timed runs per session per round")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in ZOO]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(ZOO)}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_flags()}; onnxruntime {ort.__version__}, onnx {onnx.__version__}; 1 intra-op thread",
          flush=True)
    rows = []
    for name in args.names or list(ZOO):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.monotonic()
            # cwd: a failing quant_pre_process leaves sym_shape_infer_temp.onnx and <uuid>.data in the cwd
            here = os.getcwd()
            os.chdir(tmp)
            try:
                row = evaluate(name, args.zoo.resolve(), Path(tmp), args.rounds, args.runs)
            finally:
                os.chdir(here)
            row["wall_s"] = round(time.monotonic() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "baseline.json").write_text(json.dumps(rows, indent=1) + "\n")
    print_table(rows)
    print(f"json: {args.out / 'baseline.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
