"""How an image folder becomes the model's input: labels from file names or none, and the pixel
preprocessing. A light module (no numpy, no PIL), so the command line can take its defaults and
choices from here without importing the image pipeline (coordinator/data.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from shared.errors import InvalidArgument

LABEL_SOURCES = ("synset", "none")      # ImageNet synset prefix of the file name, or unlabelled
PIXEL_SCALES = (1, 255)
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Preprocess:
    """How pixels become the model's input tensor."""

    input_size: int = 224
    resize_ratio: float = 256 / 224         # shorter side resized to input_size * ratio, then center crop
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pixel_scale: int = 1                   # 1: pixels in [0,1] before mean/std; 255: in [0,255]
    bgr: bool = False
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool):
            raise InvalidArgument(f"--input-size {self.input_size!r} must be an integer")
        if not isinstance(self.bgr, bool):
            raise InvalidArgument(f"--bgr {self.bgr!r} must be true or false")
        if not is_number(self.resize_ratio) or not 1.0 <= self.resize_ratio <= 4.0:
            raise InvalidArgument(f"resize_ratio {self.resize_ratio!r} must be a number in [1, 4] "
                                  "(shorter side / crop size)")
        if not all(is_number(v) for v in (*self.mean, *self.std)):
            raise InvalidArgument(f"--mean {self.mean!r} and --std {self.std!r} must be numbers")
        if self.input_size < 8 or self.input_size > 4096:
            raise InvalidArgument(f"--input-size {self.input_size} must be between 8 and 4096")
        if self.pixel_scale not in PIXEL_SCALES:
            raise InvalidArgument(f"--pixel-scale {self.pixel_scale} must be 1 or 255")
        if self.layout not in LAYOUTS:
            raise InvalidArgument(f"--layout {self.layout!r} must be NCHW or NHWC")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InvalidArgument(f"--mean and --std take 3 values each, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise InvalidArgument(f"--std values must be > 0, got {self.std}")

    def to_dict(self) -> dict:
        return {"input_size": self.input_size, "resize_ratio": self.resize_ratio, "mean": list(self.mean),
                "std": list(self.std), "pixel_scale": self.pixel_scale, "bgr": self.bgr, "layout": self.layout}

    def input_shape(self) -> tuple[int, int, int]:
        s = self.input_size
        return (3, s, s) if self.layout == "NCHW" else (s, s, 3)


def is_number(value: object) -> bool:
    """A real, finite number (not a bool, not NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

