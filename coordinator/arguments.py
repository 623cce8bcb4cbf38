"""Argument helpers shared by the `coordinator` subcommands: flag groups (data, quantization,
limits, farm address) and the values they parse into. coordinator/cli.py and
coordinator/farm/commands.py both build on it, and it imports neither."""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_ADDRESS = "127.0.0.1:50051"

def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The samples (an image folder or a tensor dataset) and the image preprocessing; defaults and
    choices come from coordinator.preprocess."""
    from coordinator.preprocess import LAYOUTS, PIXEL_SCALES, Preprocess

    d = Preprocess()
    p.add_argument("--images", type=Path, help="image folder (JPEG/PNG) for a single-input image model")
    p.add_argument("--calibration-images", type=Path, help="separate calibration folder (default: --images)")
    p.add_argument("--data", type=Path, metavar="PATH",
                   help="tensor dataset instead of --images: a folder of .npz files (one sample each, one array "
                        "per model input, named like it) or one .npz/.npy with a leading sample axis; any dtype")
    p.add_argument("--calibration-data", type=Path, metavar="PATH",
                   help="separate calibration tensor dataset (default: --data)")
    p.add_argument("--input-size", type=int, default=d.input_size)
    p.add_argument("--mean", type=float, nargs=3, default=d.mean, metavar=("R", "G", "B"))
    p.add_argument("--std", type=float, nargs=3, default=d.std, metavar=("R", "G", "B"))
    p.add_argument("--pixel-scale", type=int, choices=PIXEL_SCALES, default=d.pixel_scale)
    p.add_argument("--bgr", action="store_true", default=d.bgr, help="feed channels as BGR")
    p.add_argument("--layout", choices=LAYOUTS, default=d.layout)


def add_quant_arguments(p: argparse.ArgumentParser) -> None:
    """Quantization flags; defaults from QuantSettings, choices from shared.settings."""
    from shared.settings import ACTIVATION_TYPES, CALIBRATIONS, FORMATS, MODES, RECIPES, WEIGHT_TYPES, QuantSettings

    d = QuantSettings()
    p.add_argument("--mode", choices=MODES, default=d.mode)
    p.add_argument("--format", choices=FORMATS, default=d.format)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--per-channel", dest="per_channel", action="store_true", default=d.per_channel)
    group.add_argument("--per-tensor", dest="per_channel", action="store_false")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="7-bit weights: avoid u8s8 saturation on CPUs without VNNI, cost accuracy on CPUs with it "
                        "(default: both measured per device, see --probe-recipes)")
    p.add_argument("--cle", choices=RECIPES["cle"], default="off",
                   help="cross-layer equalisation before quantizing (relu6: also through ReLU6 clips)")
    p.add_argument("--keep-float", nargs="+", default=[], choices=RECIPES["keep_float"],
                   help="node presets always kept in float")
    p.add_argument("--float-islands", choices=RECIPES["float_islands"], default="pinned",
                   help="layers kept in float between quantized ones: pinned (default) gives each its own "
                        "per-channel DequantizeLinear so onnxruntime's CPU EP cannot quantize it again; plain "
                        "leaves the quantizer's graph (on onnxruntime it then runs in int8 unless the device "
                        "disables WeightBiasQuantization)")
    p.add_argument("--calibrate", choices=CALIBRATIONS, default=d.calibrate)
    p.add_argument("--activation-type", choices=ACTIVATION_TYPES, default=d.activation_type)
    p.add_argument("--weight-type", choices=WEIGHT_TYPES, default=d.weight_type)


def settings_from_args(args: argparse.Namespace):
    from shared.settings import QuantSettings

    reduce_range = QuantSettings().reduce_range if args.reduce_range is None else args.reduce_range
    return QuantSettings(mode=args.mode, format=args.format, per_channel=args.per_channel,
                         reduce_range=reduce_range, calibrate=args.calibrate,
                         activation_type=args.activation_type, weight_type=args.weight_type,
                         calibration_images=args.n_calibration, recipe=recipe_from_args(args))


def tune_option_values(args: argparse.Namespace, selected=None) -> dict:
    """The tuner options of `coordinator tune`'s flags. --probe-recipes defaults to measuring the
    cheap recipes of coordinator.tuner.catalog.AUTO_PROBES unless the user pinned the recipe with
    --reduce-range/--no-reduce-range: no recipe default is right for every CPU."""
    from coordinator import options
    from coordinator.tuner.catalog import AUTO_PROBES

    values = options.values_from_args(args, options.OPTIONS if selected is None else selected)
    if "probe_recipes" in values and not values["probe_recipes"] and getattr(args, "reduce_range", True) is None:
        values["probe_recipes"] = AUTO_PROBES
    return values


def recipe_from_args(args: argparse.Namespace) -> dict[str, str]:
    recipe = {}
    if args.cle != "off":
        recipe["cle"] = args.cle
    if args.keep_float:
        recipe["keep_float"] = ",".join(sorted(set(args.keep_float)))
    if args.float_islands != "pinned":
        recipe["float_islands"] = args.float_islands
    return recipe


def preprocess_from_args(args: argparse.Namespace):
    from coordinator.preprocess import Preprocess

    return Preprocess(input_size=args.input_size, mean=tuple(args.mean), std=tuple(args.std),
                      pixel_scale=args.pixel_scale, bgr=args.bgr, layout=args.layout)


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per shared.limits.Limits field (--max-message-bytes, --max-campaign-candidates, ...)."""
    from dataclasses import fields

    from shared.limits import DEFAULT_LIMITS

    group = p.add_argument_group("limits on what callers send (exceeding one is refused, naming it)")
    for f in fields(DEFAULT_LIMITS):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=int, default=getattr(DEFAULT_LIMITS,
                           f.name), metavar="N", help=f"default {getattr(DEFAULT_LIMITS, f.name)}")


def limits_from_args(args: argparse.Namespace):
    from dataclasses import fields

    from shared.limits import Limits

    return Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})


def add_coordinator_argument(p: argparse.ArgumentParser, required: bool = False) -> None:
    from shared.auth import add_client_arguments

    p.add_argument("--coordinator", metavar="HOST:PORT", required=required, default=None if required
                   else DEFAULT_ADDRESS, help=f"coordinator address (default {DEFAULT_ADDRESS})")
    add_client_arguments(p)


def add_farm_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coordinator", metavar="HOST:PORT", help="evaluate on the farm instead of in this process")
    p.add_argument("--devices", help="with --coordinator: device classes, comma-separated (e.g. cpu-x86,mali-g68)")
    from shared.auth import add_client_arguments

    add_client_arguments(p)


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    """Where the coordinator's heavy work runs (coordinator/buildpool.py): preparing the model and
    data, calibration, the sensitivity ranking and candidate builds, in worker processes."""
    from coordinator.buildpool import BuildLimits

    d = BuildLimits()
    group = p.add_argument_group("build workers (model preparation, calibration, ranking, candidate builds)")
    group.add_argument("--build-workers", type=int, default=d.workers, metavar="N",
                       help=f"processes building at once (default: cores - 1 = {d.workers}); 0 builds in this "
                            "process, without memory or time limits (debugging only)")
    group.add_argument("--build-memory-mb", type=int, default=d.memory_mb, metavar="MB",
                       help=f"address-space limit of each build worker (default {d.memory_mb}; 0: none); a build "
                            "above it fails with cause oom")
    group.add_argument("--build-timeout-s", type=float, default=d.timeout_s, metavar="S",
                       help=f"time limit of one build task (default {d.timeout_s:g})")
    from coordinator.tuner.state import ReportPolicy

    p.add_argument("--report-interval-s", type=float, default=ReportPolicy().every_s, metavar="S",
                   help="a running tune's report.json is rewritten whole at most this often (results are "
                        "journaled as they arrive; phases, the end and report requests write it at once); "
                        "0: after every result")


def build_limits_from_args(args: argparse.Namespace):
    from coordinator.buildpool import BuildLimits

    return BuildLimits(workers=args.build_workers, memory_mb=args.build_memory_mb, timeout_s=args.build_timeout_s)


def report_policy_from_args(args: argparse.Namespace):
    from coordinator.tuner.state import ReportPolicy

    return ReportPolicy(every_s=args.report_interval_s)
