"""Campaign admission: before a campaign is accepted, its size against the limits
(shared.limits.Limits) and each model file as hostile input. Exceeding a limit raises
ResourceExhausted naming it; a bad model raises ModelError, so the caller gets one clear line and
nothing is kept."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from coordinator.farm.spec import CampaignSpec
from shared.artifacts import ArtifactStore
from shared.atomic import link_or_copy
from shared.errors import QfarmError
from shared.limits import Limits


def planned_candidates(spec: CampaignSpec) -> int | None:
    """Candidates per model the spec caps itself to (max_candidates, budget_evals), or None."""
    caps = [c for c in (spec.max_candidates, spec.budget_evals) if c is not None]
    return min(caps) if caps else None


def planned_input_bytes(spec: CampaignSpec) -> tuple[int, str]:
    """The float32 tensors the coordinator builds from the campaign's images (evaluation and
    calibration sets, at the input size) and ships to agents, and how that number came about."""
    from coordinator.preprocess import Preprocess

    pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.preprocess.items()})
    per_image = 4 * math.prod(pre.input_shape())
    n_eval = min(spec.n_eval, len(spec.images))
    n_cal = min(spec.n_calibration, len(spec.calibration_images or spec.images))
    shape = "x".join(map(str, pre.input_shape()))
    return (n_eval + n_cal) * per_image, f"({n_eval} evaluation + {n_cal} calibration images of {shape} float32)"


def check_campaign(spec: CampaignSpec, limits: Limits, artifacts: ArtifactStore, scratch: Path) -> None:
    """Before a campaign is accepted: its size, and each model file as hostile input (size, parse,
    node count, dimensions, external data) in a folder holding only that file."""
    from coordinator.prepare import load_model

    limits.check("max_campaign_models", len(spec.models), f"the number of models of campaign {spec.name!r}")
    limits.check("max_campaign_devices", len(spec.devices), f"the number of device classes of campaign {spec.name!r}")
    input_bytes, how = planned_input_bytes(spec)
    limits.check("max_input_bytes", input_bytes, f"the input tensor bytes of campaign {spec.name!r} {how}")
    per_model = planned_candidates(spec)
    if per_model is not None:
        limits.check("max_campaign_candidates", per_model * len(spec.models),
                     f"the planned candidates of campaign {spec.name!r} ({len(spec.models)} model(s) x {per_model})")
    for model in spec.models:
        limits.check("max_model_bytes", model.file.size_bytes, f"the size of model {model.file.name}")
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch, prefix="admit-") as tmp:
            staged = Path(tmp) / model.file.name
            link_or_copy(artifacts.get(model.file.sha256).path, staged)
            try:
                load_model(staged, limits)
            except QfarmError as exc:     # name the user's file, not the coordinator's scratch path
                raise type(exc)(exc.args[0].replace(str(staged), model.file.name), step=exc.step) from None

