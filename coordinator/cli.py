"""`coordinator` command line. Each subcommand is added by one `add_*` function; errors a user can
cause are QfarmError and print as one line with exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from coordinator.arguments import (add_data_arguments, add_farm_tune_arguments, add_quant_arguments,
                                   preprocess_from_args, settings_from_args)
from shared.errors import InvalidArgument, NotFound, QfarmError

log = logging.getLogger("coordinator")

def add_tune(sub) -> None:
    p = sub.add_parser("tune", help="rank layers, build and evaluate selectively quantized candidates")
    p.add_argument("model", type=Path, help="FP32 ONNX model")
    p.add_argument("--out", type=Path, required=True, help="output dir; report.json there is the checkpoint")
    add_data_arguments(p)
    add_quant_arguments(p)
    p.add_argument("--exclude", nargs="+", default=[], metavar="NODE", help="node names always kept in float")
    p.add_argument("--strategy", default="sweep", help="sweep | bisect | greedy | nsga2")
    p.add_argument("--max-candidates", type=int, help="cap the sweep, sampling k evenly")
    p.add_argument("--max-drop", "--max-agreement-drop", dest="max_agreement_drop", type=float,
                   help="target: at most this fraction of images may change top-1 vs FP32 (e.g. 0.03)")
    p.add_argument("--max-top1-drop", type=float, help="target: labelled top-1 within this fraction of FP32")
    p.add_argument("--budget-evals", type=int, help="stop after this many candidate evaluations")
    p.add_argument("--probe-recipes", nargs="+", default=[], metavar="RECIPE",
                   help="measure these recipes as full INT8 first and search with the best "
                        "(u8s8 u8s8-rr s8s8-rr u8u8 qoperator-s8s8 per-tensor entropy cle)")
    p.add_argument("--no-blame", action="store_true",
                   help="do not bisect crashing candidates to the nodes a device cannot run quantized")
    p.add_argument("--budget-seconds", type=float, help="stop starting new candidates after this many seconds")
    p.add_argument("--rank-by", choices=("seqto", "quantune"), default="seqto")
    p.add_argument("--ranking-images", type=int, default=16)
    p.add_argument("--objectives", nargs="+", default=["accuracy_loss", "size_bytes"])
    p.add_argument("--latency-runs", type=int, default=20, help="batch-1 timed runs per candidate")
    p.add_argument("--ort-optimization", choices=("disable", "basic", "extended", "all"), default="all")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    add_farm_tune_arguments(p)                           # farm mode: --coordinator, --devices
    p.set_defaults(func=cmd_tune)


def tune_config_from_args(args: argparse.Namespace):
    from coordinator.tune import TuneConfig

    return TuneConfig(
        model=args.model, images=args.images, out=args.out, calibration_images=args.calibration_images,
        labels=args.labels, preprocess=preprocess_from_args(args), n_calibration=args.calibration,
        n_eval=args.eval, settings=settings_from_args(args), excludes=tuple(args.exclude),
        strategy=args.strategy, seed=args.seed, max_candidates=args.max_candidates, ranking_method=args.rank_by,
        ranking_images=args.ranking_images, objectives=tuple(args.objectives), latency_runs=args.latency_runs,
        max_agreement_drop=args.max_agreement_drop, max_top1_drop=args.max_top1_drop,
        budget_evals=args.budget_evals, budget_seconds=args.budget_seconds,
        probe_recipes=tuple(args.probe_recipes), blame_crashes=not args.no_blame)


def cmd_tune(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shared.runners.ort import OrtConfig, OrtRunner
    from coordinator.console import console, front_table, out, progress_events
    from coordinator.evaluators import LocalEvaluator
    from coordinator.plots import write_plots
    from coordinator.tune import Tuner

    if args.coordinator:  # farm mode: the same tune as a campaign on the coordinator's agents
        from coordinator.farm.commands import cmd_tune_farm

        return cmd_tune_farm(args)
    config = tune_config_from_args(args)
    runner = OrtRunner(OrtConfig(optimization=args.ort_optimization, intra_op_threads=args.threads))
    evaluator = LocalEvaluator(runner, args.out / "cache")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False, disable=not console.is_terminal) as progress:
        report = Tuner(config, evaluator, progress_events(progress)).run()
    write_plots(report, args.out)
    for device in report["devices"]:
        out.print(front_table(report, device))
    status = report["status"]
    out.print(f"evaluated {status['evaluations']} candidates ({status['resumed']} already in the report) in "
              f"{status['elapsed_seconds']:.0f} s; recommended: {report['pareto'].get('recommended')}")
    for device, summary in report["pareto"]["per_device"].items():
        if summary.get("target"):
            out.print(summary["target"]["line"])
    if status.get("stopped_by"):
        out.print(f"stopped early: {status['stopped_by']}")
    out.print(f"report: {args.out / 'report.json'}")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="copy a candidate's model out of a report")
    p.add_argument("report", type=Path)
    p.add_argument("--candidate", required=True, help="candidate id, or 'recommended'")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from coordinator.prepare import sha256_file
    from coordinator.report import find_candidate, read_report

    report = read_report(args.report)
    cid = args.candidate
    if cid == "recommended":
        cid = report.get("pareto", {}).get("recommended")
        if not cid:
            raise NotFound(f"{args.report} has no recommended candidate yet", step="export")
    cand = find_candidate(report, cid)
    if not cand.get("path"):
        raise NotFound(f"candidate {cid} was never built (build failed: see its results)", step="export")
    src = args.report.parent / cand["path"]
    if not src.is_file():
        raise NotFound(f"candidate file {src} is missing; rerun the tune to rebuild it", step="export")
    if sha256_file(src) != cand["sha256"]:
        raise InvalidArgument(f"candidate file {src} does not match the sha256 in the report (corrupted); "
                              "delete it and rerun the tune", step="export")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(args.output)
    print(f"wrote {args.output} (candidate {cid}, sha256 {cand['sha256'][:12]})")
    return 0


def _farm_subcommands() -> list:
    from coordinator.farm.commands import SUBCOMMANDS as farm  # serve, submit, status, report

    return farm


SUBCOMMANDS = [add_tune, add_export, *_farm_subcommands()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coordinator", description="qfarm coordinator")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except QfarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
