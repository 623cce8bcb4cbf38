"""Campaign specs: a TOML file a user writes, and the canonical JSON that travels to the coordinator.

The TOML names local files (models, image folders); `load_spec_file` reads them into `FileRef`s
(name + sha256 + local path) that the client uploads as artifacts. The wire form names files by
sha256 only, so the coordinator never reads the user's disk and an identical campaign always has
identical wire bytes. Both forms go through one validator, which names every bad field at once."""
from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from shared.artifacts import sha256_file
from shared.errors import InvalidArgument, NotFound
from shared.settings import QuantSettings

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

TOP_KEYS = {"name", "devices", "device_timeout_s", "objectives", "models", "data", "preprocess", "quantization",
            "strategy"}
DATA_KEYS = {"images", "calibration_images", "labels", "calibration", "eval", "latency_runs", "seed"}
PREPROCESS_KEYS = {"input_size", "resize_ratio", "mean", "std", "pixel_scale", "bgr", "layout"}
STRATEGY_KEYS = {"name", "max_candidates", "ranking", "ranking_images", "max_agreement_drop", "max_top1_drop",
                 "budget_evals", "budget_seconds", "probe_recipes", "blame_crashes"}
MODEL_KEYS_FILE = {"path", "name", "excludes"}
MODEL_KEYS_WIRE = {"file", "name", "excludes"}


@dataclass(frozen=True)
class FileRef:
    """A file by content; `local` is where the client read it (never sent)."""

    name: str
    sha256: str
    size_bytes: int
    local: Path | None = field(default=None, compare=False)

    def to_wire(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "size_bytes": self.size_bytes}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    file: FileRef
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    devices: tuple[str, ...]
    models: tuple[ModelEntry, ...]
    images: tuple[FileRef, ...]
    calibration_images: tuple[FileRef, ...] | None = None
    labels: str = "synset"
    n_calibration: int = 64
    n_eval: int = 300
    latency_runs: int = 20
    seed: int = 0
    preprocess: Mapping[str, Any] = field(default_factory=dict)   # coordinator.data.Preprocess fields
    quantization: Mapping[str, Any] = field(default_factory=dict)  # shared.settings.QuantSettings fields
    strategy: str = "sweep"
    max_candidates: int | None = None
    ranking_method: str = "seqto"
    ranking_images: int = 16
    objectives: tuple[str, ...] = ("accuracy_loss", "size_bytes")
    device_timeout_s: float = 600.0
    max_agreement_drop: float | None = None     # targets and budgets, as `coordinator tune` takes them
    max_top1_drop: float | None = None
    budget_evals: int | None = None
    budget_seconds: float | None = None
    probe_recipes: tuple[str, ...] = ()         # recipes measured as full INT8 before the search
    blame_crashes: bool = True                  # bisect crashes to the nodes a device cannot run

    def settings(self) -> QuantSettings:
        return QuantSettings.from_dict(dict(self.quantization))

    def files(self) -> list[FileRef]:
        return [m.file for m in self.models] + list(self.images) + list(self.calibration_images or ())

    def to_wire(self) -> dict:
        return {
            "name": self.name, "devices": list(self.devices), "device_timeout_s": self.device_timeout_s,
            "objectives": list(self.objectives),
            "models": [{"name": m.name, "file": m.file.to_wire(), "excludes": list(m.excludes)} for m in self.models],
            "data": {"images": [f.to_wire() for f in self.images],
                     "calibration_images": None if self.calibration_images is None
                     else [f.to_wire() for f in self.calibration_images],
                     "labels": self.labels, "calibration": self.n_calibration, "eval": self.n_eval,
                     "latency_runs": self.latency_runs, "seed": self.seed},
            "preprocess": dict(self.preprocess),
            "quantization": dict(self.quantization),
            "strategy": {"name": self.strategy, "max_candidates": self.max_candidates,
                         "ranking": self.ranking_method, "ranking_images": self.ranking_images,
                         "max_agreement_drop": self.max_agreement_drop, "max_top1_drop": self.max_top1_drop,
                         "budget_evals": self.budget_evals, "budget_seconds": self.budget_seconds,
                         "probe_recipes": list(self.probe_recipes), "blame_crashes": self.blame_crashes},
        }

    def wire_json(self) -> str:
        """Canonical bytes: the same campaign always serialises identically."""
        return json.dumps(self.to_wire(), sort_keys=True, separators=(",", ":"))

    def work_key(self, model: ModelEntry) -> str:
        """Identity of one model's tune: same key = same candidates, results and report."""
        wire = self.to_wire()
        wire.pop("name")
        wire.pop("device_timeout_s")
        wire["models"] = [{"file": model.file.sha256, "excludes": sorted(model.excludes)}]
        text = json.dumps(wire, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]


class _Errors:
    """Collects every bad field so the user fixes the spec in one go."""

    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(f"campaign spec {self.source} has {len(self.items)} bad field(s): "
                                  + "; ".join(self.items), step="spec")


def _table(raw: Mapping, key: str, allowed: set[str], errors: _Errors) -> Mapping:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        errors.add(key, f"must be a table, got {type(value).__name__}")
        return {}
    for unknown in sorted(set(value) - allowed):
        errors.add(f"{key}.{unknown}", f"unknown field (known: {', '.join(sorted(allowed))})")
    return value


def _int(value: Any, where: str, errors: _Errors, minimum: int, default: int | None) -> int | None:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        errors.add(where, f"{value!r} must be an integer >= {minimum}")
        return default
    return value


def _number(value: Any, where: str, errors: _Errors, default: float) -> float:
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        errors.add(where, f"{value!r} must be a number > 0")
        return default
    return float(value)


def _fraction(value: Any, where: str, errors: _Errors) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        errors.add(where, f"{value!r} must be a fraction between 0 and 1")
        return None
    return float(value)


def _choice(value: Any, where: str, errors: _Errors, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        errors.add(where, f"{value!r} is not one of {', '.join(allowed)}")
        return default
    return value


def _strings(value: Any, where: str, errors: _Errors) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        errors.add(where, f"{value!r} must be a list of non-empty strings")
        return ()
    return tuple(value)


FileResolver = Callable[[Any, str, _Errors], "FileRef | None"]
FolderResolver = Callable[[Any, str, _Errors], "tuple[FileRef, ...] | None"]


def parse_spec(raw: Mapping[str, Any], source: str, model_file: FileResolver, image_folder: FolderResolver,
               model_keys: set[str], model_file_key: str) -> CampaignSpec:
    """Validate a spec dict; how files are named (local path or sha256) is the resolvers' job."""
    from coordinator.pareto import OBJECTIVES
    from coordinator.strategies import STRATEGIES
    from coordinator.tune import RANKING_METHODS, RECIPE_PROBES

    errors = _Errors(source)
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"campaign spec {source} must be a table/object", step="spec")
    for unknown in sorted(set(raw) - TOP_KEYS):
        errors.add(unknown, f"unknown field (known: {', '.join(sorted(TOP_KEYS))})")

    name = raw.get("name", "campaign")
    if not isinstance(name, str) or not name.strip():
        errors.add("name", f"{name!r} must be a non-empty string")
        name = "campaign"
    devices = _strings(raw.get("devices"), "devices", errors)
    if raw.get("devices") in (None, []):
        errors.add("devices", "name at least one device class, e.g. devices = [\"cpu-x86\"]")
    for d in devices:
        if not _DEVICE.match(d):
            errors.add("devices", f"{d!r} is not a device class key (letters, digits, '.', '_', '-')")
    if len(set(devices)) != len(devices):
        errors.add("devices", f"{list(devices)} names a device class twice")
    timeout = _number(raw.get("device_timeout_s"), "device_timeout_s", errors, 600.0)
    objectives = _strings(raw.get("objectives"), "objectives", errors) or ("accuracy_loss", "size_bytes")
    for o in objectives:
        if o not in OBJECTIVES:
            errors.add("objectives", f"{o!r} is not one of {', '.join(OBJECTIVES)}")

    models_raw = raw.get("models")
    models: list[ModelEntry] = []
    if not isinstance(models_raw, list) or not models_raw:
        errors.add("models", "name at least one model: [[models]] path = \"model.onnx\"")
        models_raw = []
    for i, entry in enumerate(models_raw):
        where = f"models[{i}]"
        if not isinstance(entry, Mapping):
            errors.add(where, "must be a table")
            continue
        for unknown in sorted(set(entry) - model_keys):
            errors.add(f"{where}.{unknown}", f"unknown field (known: {', '.join(sorted(model_keys))})")
        ref = model_file(entry.get(model_file_key), f"{where}.{model_file_key}", errors)
        label = entry.get("name")
        if label is None and ref is not None:
            label = Path(ref.name).stem
        if label is not None and (not isinstance(label, str) or not _NAME.match(label)):
            errors.add(f"{where}.name", f"{label!r} must be letters, digits, '.', '_' or '-'")
            label = None
        excludes = _strings(entry.get("excludes"), f"{where}.excludes", errors)
        if ref is not None and label is not None:
            models.append(ModelEntry(label, ref, excludes))
    labels_seen = [m.name for m in models]
    if len(set(labels_seen)) != len(labels_seen):
        errors.add("models", f"model names {labels_seen} must be unique (set models[].name)")

    data = _table(raw, "data", DATA_KEYS, errors)
    images = image_folder(data.get("images"), "data.images", errors)
    cal_images = None
    if data.get("calibration_images") is not None:
        cal_images = image_folder(data.get("calibration_images"), "data.calibration_images", errors)
    labels = _choice(data.get("labels"), "data.labels", errors, ("synset", "none"), "synset")
    n_cal = _int(data.get("calibration"), "data.calibration", errors, 1, 64)
    n_eval = _int(data.get("eval"), "data.eval", errors, 1, 300)
    latency_runs = _int(data.get("latency_runs"), "data.latency_runs", errors, 0, 20)
    seed = _int(data.get("seed"), "data.seed", errors, 0, 0)

    preprocess = dict(_table(raw, "preprocess", PREPROCESS_KEYS, errors))
    try:
        from coordinator.data import Preprocess

        pre_args = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()}
        Preprocess(**pre_args)
    except (InvalidArgument, TypeError) as exc:
        errors.add("preprocess", str(exc.args[0]) if exc.args else type(exc).__name__)

    quant = dict(_table(raw, "quantization", set(QuantSettings.__dataclass_fields__), errors))
    try:
        QuantSettings.from_dict(quant)
    except InvalidArgument as exc:
        errors.add("quantization", exc.args[0])
    except TypeError as exc:
        errors.add("quantization", str(exc))

    strat = _table(raw, "strategy", STRATEGY_KEYS, errors)
    strategy = _choice(strat.get("name"), "strategy.name", errors, tuple(sorted(STRATEGIES)), "sweep")
    max_candidates = _int(strat.get("max_candidates"), "strategy.max_candidates", errors, 1, None)
    ranking = _choice(strat.get("ranking"), "strategy.ranking", errors, tuple(RANKING_METHODS), "seqto")
    ranking_images = _int(strat.get("ranking_images"), "strategy.ranking_images", errors, 1, 16)
    max_agreement_drop = _fraction(strat.get("max_agreement_drop"), "strategy.max_agreement_drop", errors)
    max_top1_drop = _fraction(strat.get("max_top1_drop"), "strategy.max_top1_drop", errors)
    budget_evals = _int(strat.get("budget_evals"), "strategy.budget_evals", errors, 1, None)
    budget_seconds = None
    if strat.get("budget_seconds") is not None:
        budget_seconds = _number(strat.get("budget_seconds"), "strategy.budget_seconds", errors, 0.0) or None
    probe_recipes = _strings(strat.get("probe_recipes"), "strategy.probe_recipes", errors)
    for recipe in probe_recipes:
        if recipe not in RECIPE_PROBES:
            errors.add("strategy.probe_recipes", f"{recipe!r} is not one of {', '.join(RECIPE_PROBES)}")
    blame = strat.get("blame_crashes", True)
    if not isinstance(blame, bool):
        errors.add("strategy.blame_crashes", f"{blame!r} must be true or false")

    errors.raise_if_any()
    return CampaignSpec(
        name=name, devices=devices, models=tuple(models), images=images or (), calibration_images=cal_images,
        labels=labels, n_calibration=n_cal, n_eval=n_eval, latency_runs=latency_runs, seed=seed,
        preprocess=preprocess, quantization=quant, strategy=strategy, max_candidates=max_candidates,
        ranking_method=ranking, ranking_images=ranking_images, objectives=tuple(objectives),
        device_timeout_s=timeout, max_agreement_drop=max_agreement_drop, max_top1_drop=max_top1_drop,
        budget_evals=budget_evals, budget_seconds=budget_seconds, probe_recipes=probe_recipes,
        blame_crashes=blame)


# ------------------------------------------------------------------------------ local files (client)

def load_spec_file(path: Path) -> CampaignSpec:
    """Read a TOML spec; paths are relative to the spec file's folder."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"campaign spec {path} does not exist", step="spec")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"campaign spec {path} is not valid TOML: {exc}", step="spec") from exc
    return spec_from_local(raw, str(path), path.parent)


def spec_from_local(raw: Mapping[str, Any], source: str, base_dir: Path) -> CampaignSpec:
    def model_file(value: Any, where: str, errors: _Errors) -> FileRef | None:
        if not isinstance(value, str) or not value:
            errors.add(where, f"{value!r} must be the path of an ONNX file")
            return None
        file = (base_dir / value).expanduser()
        if not file.is_file():
            errors.add(where, f"{file} does not exist")
            return None
        return local_ref(file)

    def image_folder(value: Any, where: str, errors: _Errors) -> tuple[FileRef, ...] | None:
        if not isinstance(value, str) or not value:
            errors.add(where, f"{value!r} must be the path of an image folder")
            return None
        folder = (base_dir / value).expanduser()
        if not folder.is_dir():
            errors.add(where, f"{folder} is not a folder")
            return None
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            errors.add(where, f"{folder} has no JPEG or PNG images")
            return None
        return tuple(local_ref(f) for f in files)

    return parse_spec(raw, source, model_file, image_folder, MODEL_KEYS_FILE, "path")


def local_ref(path: Path) -> FileRef:
    return FileRef(path.name, sha256_file(path), path.stat().st_size, path)


# ------------------------------------------------------------------------------ wire (coordinator)

def spec_from_wire(text: str) -> CampaignSpec:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"campaign spec is not valid JSON: {exc}", step="spec") from exc

    def ref(value: Any, where: str, errors: _Errors) -> FileRef | None:
        if not isinstance(value, Mapping) or set(value) != {"name", "sha256", "size_bytes"}:
            errors.add(where, "must be {name, sha256, size_bytes}")
            return None
        name, sha, size = value["name"], value["sha256"], value["size_bytes"]
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            errors.add(where, f"file name {name!r} must be a plain file name")
            return None
        if not isinstance(sha, str) or not _SHA.match(sha):
            errors.add(where, f"sha256 {sha!r} is not 64 lowercase hex digits")
            return None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            errors.add(where, f"size_bytes {size!r} must be an integer >= 0")
            return None
        return FileRef(name, sha, size)

    def refs(value: Any, where: str, errors: _Errors) -> tuple[FileRef, ...] | None:
        if not isinstance(value, list) or not value:
            errors.add(where, "must be a non-empty list of files")
            return None
        out = [ref(v, f"{where}[{i}]", errors) for i, v in enumerate(value)]
        names = [r.name for r in out if r is not None]
        if len(set(names)) != len(names):
            errors.add(where, "file names must be unique")
        return tuple(r for r in out if r is not None)

    return parse_spec(raw, "(submitted)", ref, refs, MODEL_KEYS_WIRE, "file")
