"""Layers kept in float in the middle of a QDQ model, on onnxruntime's CPU EP: are they float where
onnxruntime runs them, what do they buy, what do they cost. All side by side, in one process.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/float_islands.py [--models effnet_lite0 ppocr_det]
        [--k 0 2 8 32] [--pairs 60] [--zoo models/zoo] [--out bench-out/float_islands]

For each model: the prepared FP32 model and its data exactly as `coordinator tune` reads them
(EfficientNet-Lite0: 64 calibration + 200 disjoint evaluation images of imagenet-sample, mean 0.498
std 0.502; the PP-OCRv4 detector: the zoo's calibration.npz / eval.npz, 54 + 164 photos at 320x320),
QDQ per-channel u8s8 (reduce_range off: the fast recipe on VNNI CPUs), the SeQTO ranking, and the
k most sensitive layers kept in float, built two ways:

* plain: the quantizer's own graph, DQ -> float layer -> Q (`--float-islands plain`);
* pinned: each island's input dequantized per channel (coordinator/recipes/float_islands.py, the default);

each measured on two onnxruntime configurations of the same CPU EP (ORT_ENABLE_ALL, 1 thread):

* default session options;
* `disabled_optimizers=["WeightBiasQuantization"]` (`--ort-disable-optimizers WeightBiasQuantization`).

Columns: how many of the k float layers that have weights (Conv, ConvTranspose, Gemm, MatMul; the
ranking also holds Add, Mul, pooling...) are float where onnxruntime runs them (its optimized
graph at ORT_ENABLE_BASIC: weights not produced by a DequantizeLinear), fidelity to FP32 over the
evaluation set (top-1 agreement, output SQNR dB, and for the detector the IoU of its probability
mask at 0.3, the package's threshold, and at 0.5), and batch-1 latency as the median of per-pair
ratios to FP32 with p10-p90 (wall and CPU seconds), every configuration of a model timed in the
same rounds, round-robin in a shuffled order, each pair FP32/candidate in a random order, so
machine noise hits them alike. Say which CPU flags you had: the header prints them."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.effnet import IMAGES, MODEL  # noqa: E402
from bench.interleaved import cpu_flags  # noqa: E402
from bench.recipes import ranking  # noqa: E402
from coordinator.preprocess import Preprocess  # noqa: E402
from coordinator.quantize import build_candidate, spec_for  # noqa: E402
from coordinator.recipes.float_islands import has_float_weights, runtime_graph  # noqa: E402
from coordinator.tune import TuneConfig, load_workspace  # noqa: E402
from shared.feeds import feed_at  # noqa: E402
from shared.metrics import fidelity  # noqa: E402
from shared.runners.base import run_outputs  # noqa: E402
from shared.runners.ort import FLOAT_ISLAND_OPTIMIZERS, OrtConfig, OrtRunner  # noqa: E402
from shared.settings import QuantSettings  # noqa: E402

RUNTIMES = {"default": (), "no-WBQ": FLOAT_ISLAND_OPTIMIZERS}
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ARRANGEMENTS = ("plain", "pinned")


@dataclass(frozen=True)
class Config:
    k: int
    arrangement: str          # plain | pinned (k = 0: full INT8, no island)
    runtime: str              # default | no-WBQ
    path: Path
    weighted: tuple[str, ...]  # the float layers with weights (Conv, ConvTranspose, Gemm, MatMul)

    @property
    def name(self) -> str:
        return f"k={self.k} {self.arrangement if self.k else 'full INT8'} / {self.runtime}"


def model_config(name: str, zoo: Path, out: Path, images: Path) -> TuneConfig:
    if name == "effnet_lite0":
        return TuneConfig(model=MODEL, images=images, out=out,
                          preprocess=Preprocess(mean=(0.498,) * 3, std=(0.502,) * 3), n_calibration=64, n_eval=200,
                          settings=QuantSettings(reduce_range=False, calibration_images=64))
    data = zoo / name / "data"
    counts = {"ppocr_det": (54, 164)}[name]
    return TuneConfig(model=zoo / name / "model.onnx", images=None, data=data / "eval.npz",
                      calibration_data=data / "calibration.npz", out=out, n_calibration=counts[0], n_eval=counts[1],
                      settings=QuantSettings(reduce_range=False, calibration_images=counts[0]), task="dense")


def float_at_runtime(path: Path, nodes: tuple[str, ...], disabled: tuple[str, ...]) -> int:
    """How many of `nodes` keep float weights in the graph onnxruntime builds (ORT_ENABLE_BASIC,
    where WeightBiasQuantization runs; later levels rename fused nodes)."""
    if not nodes:
        return 0
    graph = runtime_graph(path, "basic", disabled)
    present = {n.name for n in graph.graph.node}
    return sum(has_float_weights(graph, name) for name in nodes if name in present)


def mask_iou(ref: np.ndarray, cand: np.ndarray, threshold: float) -> float:
    a, b = ref > threshold, cand > threshold
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def measure_model(name: str, args) -> dict:
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    config = model_config(name, args.zoo, out, args.images)
    ws = load_workspace(config)
    settings = config.settings
    order = ranking(ws.prepared, settings, ws.calibration, out / "ranking", args.ranking_images)
    print(f"{name}: {len(order)} quantizable layers ranked; top-8: {order[:8]}", flush=True)
    runners = {rt: OrtRunner(OrtConfig(intra_op_threads=args.threads, disabled_optimizers=dis))
               for rt, dis in RUNTIMES.items()}
    configs: list[Config] = []
    for k in args.k:
        excluded = tuple(order[:k])
        for arrangement in (ARRANGEMENTS if k else ("plain",)):
            s = settings.replace(recipe={"float_islands": arrangement})
            spec = spec_for(ws.prepared, s, excluded, calibration_digest=ws.calibration_digest)
            built = build_candidate(ws.prepared, spec, out / "candidates", ws.calibration, out / "cache",
                                    layout=ws.layout)
            weighted = tuple(n for n in spec.excluded_nodes if ws.prepared.op_type_of(n) in WEIGHTED)
            configs += [Config(k, arrangement, runtime, built.path, weighted) for runtime in RUNTIMES]
    feeds, layout = ws.eval_inputs.feeds, ws.layout
    reference = {rt: run_outputs(r, ws.prepared.path, feeds, layout) for rt, r in runners.items()}
    rows = []
    for c in configs:
        outputs = run_outputs(runners[c.runtime], c.path, feeds, layout)
        fid = fidelity(reference[c.runtime], outputs, ws.eval_inputs.task, ws.eval_inputs.labels)
        first = next(iter(outputs))
        row = {"config": c.name, "k": c.k, "arrangement": c.arrangement, "runtime": c.runtime,
               "runtime_options": runners[c.runtime].info().options,
               "float_at_runtime": float_at_runtime(c.path, c.weighted, RUNTIMES[c.runtime]),
               "weighted": len(c.weighted),
               "agreement": fid.accuracy and fid.accuracy.top1_agreement,
               "top1": fid.accuracy and fid.accuracy.top1_accuracy, "sqnr_db": fid.output_sqnr_db, "iou": fid.iou,
               "size_bytes": c.path.stat().st_size}
        if fid.task == "dense":
            row["iou_at_0.3"] = mask_iou(reference[c.runtime][first], outputs[first], 0.3)
        rows.append(row)
        print(f"  {c.name}: float at run time {row['float_at_runtime']}/{len(c.weighted)} weighted, SQNR {fid.output_sqnr_db:.2f} dB"
              + (f", agreement {row['agreement'] * 100:.1f} %" if row["agreement"] is not None else "")
              + (f", IoU@0.3 {row['iou_at_0.3']:.3f}" if "iou_at_0.3" in row else ""), flush=True)
    timing = time_side_by_side(runners, ws.prepared.path, configs, feed_at(feeds, 0, layout), layout, args)
    for row, stats in zip(rows, timing):
        row.update(stats)
    fp32 = {"p50_ms": float(np.median(timing[0]["fp32_ms"])), "size_bytes": ws.prepared.size_bytes}
    for row in rows:
        row.pop("fp32_ms")
    return {"model": name, "fp32": fp32, "rows": rows, "layers": len(order), "wall_s": time.monotonic() - started,
            "eval": ws.eval_inputs.num_samples, "calibration": next(iter(ws.calibration.values())).shape[0]}


def time_side_by_side(runners: dict, fp32: Path, configs: list[Config], sample: dict, layout: str, args) -> list[dict]:
    """Every config's interleaved pairs with FP32, all configs in the same rounds (see the module doc)."""
    from contextlib import ExitStack

    from shared.runners.base import timers_of

    rng = np.random.default_rng(0)
    with ExitStack() as stack:
        timers = {}
        for rt, runner in runners.items():
            mine = [c for c in configs if c.runtime == rt]
            got = stack.enter_context(timers_of(runner, [fp32] + [c.path for c in mine], sample, layout))
            timers[rt] = got[0]
            for c, t in zip(mine, got[1:]):
                timers[c] = t
        for t in list(timers.values()):
            for _ in range(3):
                t(1)
        pairs: dict[Config, list[tuple[float, float, float, float]]] = {c: [] for c in configs}
        rounds = max(1, args.pairs // args.per_round)
        for _ in range(rounds):
            for index in rng.permutation(len(configs)):
                c = configs[index]
                for _ in range(args.per_round):
                    first_fp32 = rng.random() < 0.5
                    order = [(timers[c.runtime], "ref"), (timers[c], "cand")]
                    got = {}
                    for timer, key in (order if first_fp32 else order[::-1]):
                        cpu = time.process_time()
                        wall = timer(1)[0]
                        got[key] = (wall, time.process_time() - cpu)
                    pairs[c].append((got["ref"][0], got["cand"][0], got["ref"][1], got["cand"][1]))
    out = []
    for c in configs:
        p = np.asarray(pairs[c])
        wall = p[:, 1] / p[:, 0]
        cpu = p[:, 3] / np.maximum(p[:, 2], 1e-9)
        out.append({"ratio": float(np.median(wall)), "ratio_p10": float(np.percentile(wall, 10)),
                    "ratio_p90": float(np.percentile(wall, 90)), "cpu_ratio": float(np.median(cpu)),
                    "p50_ms": float(np.median(p[:, 1]) * 1000), "fp32_ms": list(p[:, 0] * 1000), "pairs": len(p)})
    return out


def print_tables(result: dict) -> None:
    print(f"\n{result['model']}: {result['layers']} quantizable layers, {result['calibration']} calibration + "
          f"{result['eval']} evaluation samples; FP32 p50 {result['fp32']['p50_ms']:.2f} ms (this run, loaded "
          f"machine: read the ratios); {result['wall_s']:.0f} s")
    head = ("k float", "islands", "onnxruntime", "weighted float at run time", "agree %", "SQNR dB", "IoU@0.3", "IoU@0.5",
            "x FP32 wall p50 (p10-p90)", "x FP32 CPU", "size MB")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in result["rows"]:
        agree = "-" if r["agreement"] is None else f"{r['agreement'] * 100:.1f}"
        iou3 = f"{r['iou_at_0.3']:.3f}" if "iou_at_0.3" in r else "-"
        iou5 = "-" if r["iou"] is None else f"{r['iou']:.3f}"
        print(f"| {r['k']} | {r['arrangement'] if r['k'] else '-'} | {r['runtime']} | {r['float_at_runtime']}/{r['weighted']} | "
              f"{agree} | {r['sqnr_db']:.2f} | {iou3} | {iou5} | {r['ratio']:.2f} ({r['ratio_p10']:.2f}-{r['ratio_p90']:.2f}) | "
              f"{r['cpu_ratio']:.2f} | {r['size_bytes'] / 1e6:.2f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["effnet_lite0", "ppocr_det"], choices=["effnet_lite0", "ppocr_det"])
    p.add_argument("--k", nargs="+", type=int, default=[0, 2, 8, 32])
    p.add_argument("--pairs", type=int, default=60, help="interleaved FP32/candidate pairs per configuration")
    p.add_argument("--per-round", type=int, default=10, help="pairs of one configuration in a row, per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ranking-images", type=int, default=16)
    p.add_argument("--zoo", type=Path, default=ROOT / "models" / "zoo")
    p.add_argument("--images", type=Path, default=IMAGES)
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "float_islands")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    import onnxruntime

    print(f"CPU flags: {cpu_flags()}; onnxruntime {onnxruntime.__version__} CPU EP, ORT_ENABLE_ALL, "
          f"{args.threads} intra-op thread(s); {args.pairs} pairs per configuration", flush=True)
    results = [measure_model(name, args) for name in args.models]
    for result in results:
        print_tables(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "float_islands.json").write_text(json.dumps({"cpu_flags": cpu_flags(), "results": results},
                                                            indent=1) + "\n")
    print(f"json: {args.out / 'float_islands.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
