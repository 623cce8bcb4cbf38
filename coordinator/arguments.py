"""Argument helpers shared by the `coordinator` subcommands: flag groups (data, quantization,
limits, farm address) and the values they parse into. coordinator/cli.py and
coordinator/farm/commands.py both build on it, and it imports neither."""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_ADDRESS = "127.0.0.1:50051"

# Defaults of the demo model (EfficientNet-Lite0 was trained with mean 127, std 128 on [0,255]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, required=True, help="image folder (JPEG/PNG)")
    p.add_argument("--calibration-images", type=Path, help="separate calibration folder (default: --images)")
    p.add_argument("--labels", choices=("synset", "none"), default="synset",
                   help="labels from the file name's synset prefix, or none")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN, metavar=("R", "G", "B"))
    p.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD, metavar=("R", "G", "B"))
    p.add_argument("--pixel-scale", type=int, choices=(1, 255), default=1)
    p.add_argument("--bgr", action="store_true", help="feed channels as BGR")
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW")
    p.add_argument("--calibration", type=int, default=64, help="calibration images")
    p.add_argument("--eval", type=int, default=300, help="evaluation images")


def add_quant_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("static", "dynamic"), default="static")
    p.add_argument("--format", choices=("qdq", "qoperator"), default="qdq")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--per-channel", dest="per_channel", action="store_true", default=True)
    group.add_argument("--per-tensor", dest="per_channel", action="store_false")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=True,
                   help="7-bit weights: avoids u8s8 saturation on CPUs without VNNI (default: on)")
    p.add_argument("--cle", choices=("off", "on", "relu6"), default="off",
                   help="cross-layer equalisation before quantizing (relu6: also through ReLU6 clips)")
    p.add_argument("--keep-float", nargs="+", default=[], choices=("depthwise", "first", "last", "first-last"),
                   help="node presets always kept in float")
    p.add_argument("--calibrate", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--activation-type", choices=("uint8", "int8", "uint16", "int16"), default="uint8")
    p.add_argument("--weight-type", choices=("int8", "uint8"), default="int8")


def settings_from_args(args: argparse.Namespace):
    from shared.settings import QuantSettings

    return QuantSettings(mode=args.mode, format=args.format, per_channel=args.per_channel,
                         reduce_range=args.reduce_range, calibrate=args.calibrate,
                         activation_type=args.activation_type, weight_type=args.weight_type,
                         calibration_images=args.calibration, recipe=recipe_from_args(args))


def recipe_from_args(args: argparse.Namespace) -> dict[str, str]:
    recipe = {}
    if args.cle != "off":
        recipe["cle"] = args.cle
    if args.keep_float:
        recipe["keep_float"] = ",".join(sorted(set(args.keep_float)))
    return recipe


def preprocess_from_args(args: argparse.Namespace):
    from coordinator.data import Preprocess

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
    p.add_argument("--device-timeout", type=float, default=600.0,
                   help="with --coordinator: fail if a device class has no agent for this long")
    from shared.auth import add_client_arguments

    add_client_arguments(p)
