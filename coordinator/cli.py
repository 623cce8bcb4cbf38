"""`coordinator` command line. Each subcommand is added by one `add_*` function; errors a user can
cause are QfarmError and print as one line with exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from coordinator import options
from coordinator.arguments import (add_build_arguments, add_data_arguments, add_farm_tune_arguments,
                                   add_quant_arguments, build_limits_from_args, preprocess_from_args,
                                   report_policy_from_args, settings_from_args, tune_option_values)
from shared.atomic import atomic_output
from shared.errors import InvalidArgument, NotFound, QfarmError

log = logging.getLogger("coordinator")

def add_tune(sub) -> None:
    p = sub.add_parser("tune", help="rank layers, build and evaluate selectively quantized candidates",
                       formatter_class=options.HelpFormatter)
    p.add_argument("model", type=Path, help="FP32 ONNX model: a file, or hub:NAME[@OPSET] from the ONNX Model Hub's "
                   "cache (--hub-dir)")
    p.add_argument("--out", type=Path, required=True, help="output dir; report.json there is the checkpoint")
    add_data_arguments(p)
    add_quant_arguments(p)
    p.add_argument("--exclude", nargs="+", default=[], metavar="NODE", help="node names always kept in float")
    options.add_arguments(p)                             # every tuner option: coordinator/options.py
    p.add_argument("--ort-optimization", choices=("disable", "basic", "extended", "all"), default="all")
    from shared.runners.ort_flags import add_ort_optimizer_argument

    add_ort_optimizer_argument(p)                        # a runtime option of this process's onnxruntime
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    from shared.latency import add_lock_arguments

    add_lock_arguments(p)                                # the host-wide timing lock, shared with agents
    add_build_arguments(p)                               # local builds; a farm's are its coordinator's
    add_farm_tune_arguments(p)                           # farm mode: --coordinator, --devices
    p.set_defaults(func=cmd_tune)


def tune_config_from_args(args: argparse.Namespace):
    from coordinator.tune import TuneConfig

    return TuneConfig(model=args.model, images=args.images, out=args.out, calibration_images=args.calibration_images,
                      data=args.data, calibration_data=args.calibration_data,
                      preprocess=preprocess_from_args(args), settings=settings_from_args(args),
                      excludes=tuple(args.exclude), **tune_option_values(args, options.TUNE_OPTIONS))


def cmd_tune(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shared.runners.ort import OrtConfig, OrtRunner
    from coordinator.buildpool import BuildPool
    from coordinator.console import console, out, print_summary, progress_events
    from coordinator.evaluators import LocalEvaluator
    from coordinator.html import write_html
    from coordinator.plots import write_plots
    from coordinator.progress_lines import line_events
    from coordinator.thirdparty import divert_third_party
    from coordinator.tune import Tuner

    if args.coordinator:  # farm mode: the same tune as a campaign on the coordinator's agents
        if args.ort_disable_optimizers:
            raise InvalidArgument("--ort-disable-optimizers sets the onnxruntime of this process; on the farm each "
                                  "device runs as its agent was started (agent register --ort-disable-optimizers "
                                  f"{' '.join(args.ort_disable_optimizers)})", step="tune")
        from coordinator.farm.commands import cmd_tune_farm

        return cmd_tune_farm(args)
    from coordinator.hub import is_hub_ref, resolve

    if is_hub_ref(args.model):
        args.model, entry = resolve(str(args.model), args.hub_dir)
        out.print(f"hub:{entry.name}@{entry.opset}: {args.model}")
    from shared.latency import check_lock_path
    from shared.metrics import load_metric

    config = tune_config_from_args(args)
    if config.metric is not None:
        load_metric(config.metric)                       # importable here, or one line before anything runs
    runner = OrtRunner(OrtConfig(optimization=args.ort_optimization, intra_op_threads=args.threads,
                                 disabled_optimizers=tuple(args.ort_disable_optimizers)))
    evaluator = LocalEvaluator(runner, args.out / "cache", latency_lock=check_lock_path(args.latency_lock))
    with BuildPool(build_limits_from_args(args)) as pool, divert_third_party(args.out) as diverted, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=console, transient=False, disable=not console.is_terminal) as progress:
        events = progress_events(progress) if console.is_terminal else line_events(out.print)
        report = Tuner(config, evaluator, events, pool=pool, report_policy=report_policy_from_args(args)).run()
    write_plots(report, args.out)
    html = write_html(report, args.out)
    print_summary(report, args.out / "report.json", page=html,
                  notes=[diverted.summary()] if diverted.count else [])
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="copy a candidate's model out of a report")
    p.add_argument("report", type=Path)
    p.add_argument("--candidate", required=True, help="candidate id, or 'recommended'")
    p.add_argument("--device", help="with --candidate recommended: this device class's (default: the first)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from coordinator.prepare import sha256_file
    from coordinator.report import find_candidate, read_report

    report = read_report(args.report)
    cid = args.candidate
    if cid == "recommended":
        cid = recommended_for(report, args.device, args.report)
    cand = find_candidate(report, cid)
    if not cand.get("path"):
        raise NotFound(f"candidate {cid} was never built (build failed: see its results)", step="export")
    src = args.report.parent / cand["path"]
    if not src.is_file():
        raise NotFound(f"candidate file {src} is missing; rerun the tune to rebuild it", step="export")
    if sha256_file(src) != cand["sha256"]:
        raise InvalidArgument(f"candidate file {src} does not match the sha256 in the report (corrupted); "
                              "delete it and rerun the tune", step="export")
    with atomic_output(args.output) as tmp:
        shutil.copyfile(src, tmp)
    print(f"wrote {args.output} (candidate {cid}, sha256 {cand['sha256'][:12]})")
    return 0


def recommended_for(report: dict, device: str | None, path: Path) -> str:
    """The candidate the policy recommends on `device` (default: the report's first device); when
    it recommends none, the error says why (e.g. "quantization does not pay ...")."""
    pareto = report.get("pareto", {})
    per_device = pareto.get("per_device", {})
    if device is not None and device not in per_device:
        raise NotFound(f"device class {device!r} is not in {path} (devices: {', '.join(per_device) or 'none'})",
                       step="export")
    entry = per_device.get(device) if device is not None else pareto
    cid = (entry or {}).get("recommended")
    if not cid:
        verdict = ((entry or {}).get("policy") or {}).get("verdict")
        raise NotFound(f"{path} recommends no candidate" + (f" for {device}" if device else "") +
                       (f": {verdict}" if verdict else " yet"), step="export")
    return cid


def _farm_subcommands() -> list:
    from coordinator.farm.commands import SUBCOMMANDS as farm  # serve, submit, status, report

    return farm


def _html_subcommands() -> list:
    from coordinator.html.command import add_export_html

    return [add_export_html]


SUBCOMMANDS = [add_tune, add_export, *_html_subcommands(), *_farm_subcommands()]


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
