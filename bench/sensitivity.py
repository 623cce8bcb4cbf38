"""Sensitivity benchmark: how much top-1 agreement with FP32 each layer-ranking method recovers when
its top-k ranked nodes stay in float, on the same calibration/eval data and the same base settings.

    .venv/bin/python bench/sensitivity.py --model models/effnet_lite0.onnx \
        --images ../shared/data/imagenet-sample --calibration 64 --eval 200

* seqto, quantune: the rankings the Tuner computes (one activation-measurement pass, no candidate
  evaluated to rank);
* revert (NNCF-style measured revert): each node the Tuner ranks excluded alone, measured on the
  first --revert-eval eval images, ranked by agreement gained over full INT8.

Then every method's top-k candidates are measured on the full eval set. Candidates are built once
by id under --out, and an exclusion set two methods share is measured once."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.effnet import add_data_arguments  # noqa: E402
from coordinator.data import Preprocess  # noqa: E402
from coordinator.evaluators import LocalEvaluator  # noqa: E402
from coordinator.quantize import build_candidate, spec_for  # noqa: E402
from coordinator.tune import RANKING_METHODS, Tuner, TuneConfig, TuneEvents, Workspace, load_workspace  # noqa: E402
from shared.errors import ModelError  # noqa: E402
from shared.results import CrashCause, CrashKind, DeviceResult  # noqa: E402
from shared.runners.ort import OrtConfig, OrtRunner  # noqa: E402

log = logging.getLogger("bench.sensitivity")
METHODS = (*RANKING_METHODS, "revert")


class Candidates:
    """Builds candidates (files cached by id) and measures them on the full or the revert eval set
    (results cached by set and id), counting the evaluations actually run."""

    def __init__(self, config: TuneConfig, ws: Workspace, runner: OrtRunner, revert_eval: int):
        self.config, self.ws = config, ws
        full = ws.eval_inputs
        labels = None if full.labels is None else full.labels[:revert_eval]
        self.sets = {"full": full, "revert": replace(full, inputs=full.inputs[:revert_eval], labels=labels)}
        self.evaluators = {name: LocalEvaluator(runner, config.out / "cache") for name in self.sets}
        self.fp32 = {name: ev.reference(ws.prepared.path, ws.prepared.sha256, self.sets[name])["local"]
                     .to_fp32_report() for name, ev in self.evaluators.items()}
        self.results: dict[tuple[str, str], dict] = {}
        self.evaluations = 0

    def measure(self, excluded, eval_set: str = "full") -> dict:
        spec = spec_for(self.ws.prepared, self.config.settings, excluded,
                        calibration_digest=self.ws.calibration_digest)
        key = (eval_set, spec.id)
        if key not in self.results:
            try:
                cand = build_candidate(self.ws.prepared, spec, self.config.out / "candidates",
                                       self.ws.calibration, self.config.out / "cache")
                ((_, _, result),) = self.evaluators[eval_set].evaluate([cand], self.sets[eval_set])
            except ModelError as exc:
                result = DeviceResult.failure(CrashCause(CrashKind.BUILD, str(exc)))
            self.evaluations += 1
            self.results[key] = {**result.to_report(), "candidate": spec.id, "num_excluded": len(spec.excluded_nodes)}
            log.info("%s k=%d %s agreement %s", eval_set, len(spec.excluded_nodes), spec.id,
                     result.get("top1_agreement"))
        return self.results[key]


def tuner_ranking(config: TuneConfig, method: str, evaluator: LocalEvaluator) -> tuple[list[str], float]:
    """The Tuner's ranking for `method` and the seconds its ranking stage took (sweep capped at one
    candidate: the full-INT8 model every method shares)."""
    (config.out / "report.json").unlink(missing_ok=True)  # a fresh report, so the ranking is recomputed
    stamps: dict[str, float] = {}
    events = TuneEvents(on_stage=lambda stage: stamps.setdefault(stage, time.monotonic()))
    report = Tuner(replace(config, ranking_method=method, strategy="sweep", max_candidates=1), evaluator,
                   events).run()
    seconds = stamps["evaluating candidates"] - stamps["ranking layer sensitivity"]
    return [r["node"] for r in report["ranking"]], seconds


def revert_ranking(cands: Candidates, nodes: list[str]) -> tuple[list[str], dict[str, float]]:
    """Each node excluded alone on the revert eval set, most agreement gained first."""
    base = cands.measure((), "revert").get("top1_agreement")
    gains = {}
    for node in nodes:
        agreement = cands.measure((node,), "revert").get("top1_agreement")
        gains[node] = agreement - base if agreement is not None and base is not None else float("-inf")
    return sorted(nodes, key=lambda n: (-gains[n], n)), gains


def sweep_points(cands: Candidates, ranking: list[str], ks: list[int]) -> list[dict]:
    points = []
    for k in ks:
        r = cands.measure(ranking[:k])
        points.append({"k": k, "candidate": r["candidate"], "status": r["status"],
                       "agreement": r.get("top1_agreement"), "top1": r.get("top1_accuracy"),
                       "size_bytes": r.get("size_bytes")})
    return points


def run_method(method: str, cands: Candidates, config: TuneConfig, ks: list[int], tuned: dict) -> dict:
    start, evals_before = time.monotonic(), cands.evaluations
    gains = None
    if method == "revert":
        ranking, gains = revert_ranking(cands, tuned["nodes"])
        ranking_s = time.monotonic() - start
    else:
        ranking, ranking_s = tuner_ranking(config, method, cands.evaluators["full"])
    ranking_evals = cands.evaluations - evals_before   # seqto/quantune: 0 (the Tuner's k=0 is not counted)
    tuned.setdefault("nodes", sorted(ranking))
    measure_start = time.monotonic()
    points = sweep_points(cands, ranking, [k for k in ks if k <= len(ranking)])
    ok = [p for p in points if p["agreement"] is not None]
    best = max(ok, key=lambda p: (p["agreement"], -p["k"])) if ok else None
    return {"method": method, "ranking_evals": ranking_evals, "ranking_seconds": round(ranking_s, 1),
            "measure_seconds": round(time.monotonic() - measure_start, 1),
            "wall_seconds": round(time.monotonic() - start, 1), "ranking": ranking[:max(ks)],
            "revert_gains": gains, "points": points, "best_k": best["k"] if best else None,
            "best_top1": best["top1"] if best else None}


def fmt(v, pct=True) -> str:
    return "-" if v is None else (f"{v * 100:.1f}" if pct else f"{v:.0f}")


def print_table(rows: list[dict], ks: list[int], fp32: dict, revert_eval: int) -> None:
    head = ["method", "ranking evals", "ranking s", *[f"agree % k={k}" for k in ks], "top-1 % at best k", "wall s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        by_k = {p["k"]: p["agreement"] for p in r["points"]}
        best = "-" if r["best_k"] is None else f"{fmt(r['best_top1'])} (k={r['best_k']})"
        cells = [r["method"], str(r["ranking_evals"]), f"{r['ranking_seconds']:.0f}",
                 *[fmt(by_k.get(k)) for k in ks], best, f"{r['wall_seconds']:.0f}"]
        print("| " + " | ".join(cells) + " |")
    print(f"FP32 top-1: {fmt(fp32['top1_accuracy'])} % on {fp32['num_images']} images; "
          f"revert ranked on the first {revert_eval} of them")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p, ROOT / "bench-out" / "sensitivity" / "sensitivity.json")
    p.add_argument("--revert-eval", type=int, default=100, help="eval images the revert ranking is measured on")
    p.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--ranking-images", type=int, default=16)
    p.add_argument("--reuse", action="store_true", help="keep candidates built by an earlier run (timings drop)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)  # progress; onnxruntime's quantizer logs every rescaled bias at INFO
    if not 1 <= args.revert_eval <= args.eval:
        p.error(f"--revert-eval {args.revert_eval} must be in [1, --eval {args.eval}]")
    work = args.out.parent / "work"
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    config = TuneConfig(model=args.model, images=args.images, out=work,
                        preprocess=Preprocess(mean=tuple(args.mean), std=tuple(args.std)),
                        n_calibration=args.calibration, n_eval=args.eval, latency_runs=0, seed=args.seed,
                        ranking_images=args.ranking_images)
    config = replace(config, settings=config.settings.replace(calibration_images=args.calibration))
    ks = sorted(set(args.ks))
    start = time.monotonic()
    cands = Candidates(config, load_workspace(config), OrtRunner(OrtConfig(intra_op_threads=args.threads)),
                       args.revert_eval)
    cands.measure(())  # full INT8, shared by every method: built before any ranking is timed
    tuned: dict = {}   # the node set the Tuner ranks, which revert measures one by one
    order = sorted(args.methods, key=lambda m: m == "revert")  # revert needs a Tuner ranking's node set
    if order == ["revert"]:
        tuned["nodes"] = sorted(tuner_ranking(config, "seqto", cands.evaluators["full"])[0])
    rows = [run_method(m, cands, config, ks, tuned) for m in order]
    wall = time.monotonic() - start
    print_table(rows, ks, cands.fp32["full"], args.revert_eval)
    print(f"total wall: {wall:.0f} s, {cands.evaluations} candidate evaluations, {len(tuned['nodes'])} ranked nodes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": str(args.model), "settings": config.settings.to_dict(), "calibration": args.calibration,
               "eval": args.eval, "revert_eval": args.revert_eval, "ks": ks, "fp32": cands.fp32,
               "wall_seconds": round(wall, 1), "evaluations": cands.evaluations, "methods": rows}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"json: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
