"""EfficientNet-Lite0 on the ImageNet sample, as the benches use it: where they find the model (the
file scripts/demo.sh exports) and the images (../shared beside the repository) by default, and the
data flags they share (Lite preprocessing: mean 0.498, std 0.502)."""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "effnet_lite0.onnx"
IMAGES = ROOT.parent / "shared" / "data" / "imagenet-sample"
MEAN, STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)


def add_data_arguments(p: argparse.ArgumentParser, out: Path) -> None:
    """--model --images --out --calibration --eval --mean --std --threads --seed, with the defaults above."""
    p.add_argument("--model", type=Path, default=MODEL)
    p.add_argument("--images", type=Path, default=IMAGES)
    p.add_argument("--out", type=Path, default=out)
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--mean", type=float, nargs=3, default=MEAN)
    p.add_argument("--std", type=float, nargs=3, default=STD)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
