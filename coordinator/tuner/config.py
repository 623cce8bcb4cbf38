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
    images: Path
    out: Path
    calibration_images: Path | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    settings: QuantSettings = field(default_factory=QuantSettings)
    excludes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate(self, TUNE_OPTIONS)
        if self.max_top1_drop is not None and self.labels == "none":
            raise InvalidArgument("--max-top1-drop needs labelled images (--labels synset)")

    @property
    def has_target(self) -> bool:
        """Targets: 1 - top1_agreement <= max_agreement_drop; FP32 top-1 - top-1 <= max_top1_drop."""
        return self.max_agreement_drop is not None or self.max_top1_drop is not None
