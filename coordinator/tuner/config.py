"""What one tune is asked to do: the model, data and quantization settings, plus every tuner
option of coordinator/options.py (each becomes a field here, with its default and validation)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coordinator.options import TUNE_OPTIONS, option_fields, validate
from coordinator.preprocess import Preprocess
from shared.errors import InvalidArgument
from shared.settings import QuantSettings


@dataclass(frozen=True)
@option_fields(TUNE_OPTIONS)
class TuneConfig:
    model: Path
    images: Path | None                      # an image folder, or
    out: Path
    calibration_images: Path | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    settings: QuantSettings = field(default_factory=QuantSettings)
    excludes: tuple[str, ...] = ()
    data: Path | None = None                 # a tensor dataset (coordinator/tensor_data.py)
    calibration_data: Path | None = None

    def __post_init__(self) -> None:
        validate(self, TUNE_OPTIONS)
        if (self.images is None) == (self.data is None):
            raise InvalidArgument("give the samples either as an image folder (--images) or as a tensor dataset "
                                  "(--data), exactly one of them")
        if self.data is None and self.calibration_data is not None:
            raise InvalidArgument("--calibration-data goes with --data (for --images use --calibration-images)")
        if self.images is None and self.calibration_images is not None:
            raise InvalidArgument("--calibration-images goes with --images (for --data use --calibration-data)")
        if self.data is None and self.data_layout != "auto":
            raise InvalidArgument(f"--data-layout {self.data_layout} applies to a tensor dataset (--data), not to images")
        if self.max_top1_drop is not None and (self.labels == "none" or self.data is not None):
            raise InvalidArgument("--max-top1-drop needs labelled images (--images with --labels synset)")

    @property
    def labelled(self) -> bool:
        return self.images is not None and self.labels != "none"

    @property
    def has_target(self) -> bool:
        """Any target (coordinator/tuner/targets.py): agreement, labelled top-1, SQNR, cosine, IoU."""
        from coordinator.tuner.targets import Targets

        return Targets.from_config(self).any
