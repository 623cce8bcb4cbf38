"""Campaign specs: a TOML file a user writes, and the canonical JSON that travels to the coordinator.

The TOML names local files (models, image folders); `load_spec_file` reads them into `FileRef`s
(name + sha256 + local path) that the client uploads as artifacts. The wire form names files by
sha256 only, so the coordinator never reads the user's disk and an identical campaign always has
identical wire bytes. Both forms go through one validator, which names every bad field at once."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from coordinator.options import (OPTIONS, TUNE_OPTIONS, option_fields, parse_spec_values, spec_keys, spec_sections,
                                 values_of)
from coordinator.hub import is_hub_ref
from coordinator.hub import resolve as resolve_hub
from coordinator.preprocess import Preprocess
from coordinator.tuner.catalog import AUTO_PROBES
from shared.artifacts import sha256_file
from shared.errors import InvalidArgument, NotFound, QfarmError
from shared.settings import QuantSettings

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TENSOR_SUFFIXES = (".npz", ".npy")
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# keys of the spec that are not tuner options (those come from coordinator/options.py)
TOP_KEYS = {"name", "devices", "models", "data", "preprocess", "quantization", "strategy"} | spec_keys("")
DATA_KEYS = {"images", "calibration_images", "tensors", "calibration_tensors"} | spec_keys("data")
PREPROCESS_KEYS = {f.name for f in dataclasses.fields(Preprocess)}
STRATEGY_KEYS = spec_keys("strategy")
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
class TensorRefs:
    """A tensor dataset's files: a folder of .npz files (one sample each), or one .npz/.npy file."""

    folder: bool
    files: tuple[FileRef, ...]

    def to_wire(self) -> dict:
        return {"folder": self.folder, "files": [f.to_wire() for f in self.files]}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    file: FileRef
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
@option_fields(OPTIONS)
class CampaignSpec:
    """A campaign; besides these fields, one per tuner option (coordinator/options.py)."""

    name: str
    devices: tuple[str, ...]
    models: tuple[ModelEntry, ...]
    images: tuple[FileRef, ...]                                   # an image folder, or () with tensors
    calibration_images: tuple[FileRef, ...] | None = None
    preprocess: Mapping[str, Any] = field(default_factory=dict)   # coordinator.preprocess.Preprocess fields
    quantization: Mapping[str, Any] = field(default_factory=dict)  # shared.settings.QuantSettings fields
    tensors: TensorRefs | None = None                             # a tensor dataset instead of images
    calibration_tensors: TensorRefs | None = None

    def settings(self) -> QuantSettings:
        return QuantSettings.from_dict(dict(self.quantization))

    def files(self) -> list[FileRef]:
        tensors = [f for t in (self.tensors, self.calibration_tensors) if t is not None for f in t.files]
        return [m.file for m in self.models] + list(self.images) + list(self.calibration_images or ()) + tensors

    def tune_options(self) -> dict[str, Any]:
        """The options a model's tune runs with (TuneConfig's option fields)."""
        return values_of(self, TUNE_OPTIONS)

    def to_wire(self) -> dict:
        options = spec_sections(values_of(self))
        return {
            "name": self.name, "devices": list(self.devices), **options.get("", {}),
            "models": [{"name": m.name, "file": m.file.to_wire(), "excludes": list(m.excludes)} for m in self.models],
            "data": {**self._data_wire(), **options.get("data", {})},
            "preprocess": dict(self.preprocess),
            "quantization": dict(self.quantization),
            "strategy": options.get("strategy", {}),
        }

    def _data_wire(self) -> dict:
        """Images as before (a spec without tensors keeps its wire bytes); tensors only when given."""
        if self.tensors is not None:
            return {"tensors": self.tensors.to_wire(), "calibration_tensors": None if self.calibration_tensors is None
                    else self.calibration_tensors.to_wire()}
        return {"images": [f.to_wire() for f in self.images],
                "calibration_images": None if self.calibration_images is None
                else [f.to_wire() for f in self.calibration_images]}

    def wire_json(self) -> str:
        """Canonical bytes: the same campaign always serialises identically."""
        return json.dumps(self.to_wire(), sort_keys=True, separators=(",", ":"))

    def work_key(self, model: ModelEntry) -> str:
        """Identity of one model's tune: same key = same candidates, results and report."""
        wire = self.to_wire()
        wire.pop("name")
        for option in OPTIONS:            # the campaign's own options (a timeout) do not change results
            if not option.tune and option.spec:
                (wire[option.section] if option.section else wire).pop(option.key)
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


def _strings(value: Any, where: str, errors: _Errors) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        errors.add(where, f"{value!r} must be a list of non-empty strings")
        return ()
    return tuple(value)


FileResolver = Callable[[Any, str, _Errors], "FileRef | None"]
FolderResolver = Callable[[Any, str, _Errors], "tuple[FileRef, ...] | None"]
TensorResolver = Callable[[Any, str, _Errors], "TensorRefs | None"]


def parse_spec(raw: Mapping[str, Any], source: str, model_file: FileResolver, image_folder: FolderResolver,
               model_keys: set[str], model_file_key: str, tensor_source: TensorResolver) -> CampaignSpec:
    """Validate a spec dict; how files are named (local path or sha256) is the resolvers' job."""
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
    models = _models(raw.get("models"), model_file, model_keys, model_file_key, errors)

    data = _table(raw, "data", DATA_KEYS, errors)
    images, cal_images, tensors, cal_tensors = _data_sources(data, image_folder, tensor_source, errors)

    preprocess = dict(_table(raw, "preprocess", PREPROCESS_KEYS, errors))
    try:
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

    strategy = _table(raw, "strategy", STRATEGY_KEYS, errors)
    options = parse_spec_values(raw, {"data": data, "strategy": strategy}, errors.add)
    if "probe_recipes" not in strategy and "reduce_range" not in quant:   # no recipe pinned: measure the pair
        options["probe_recipes"] = AUTO_PROBES
    if options["data_layout"] != "auto" and data.get("tensors") is None:
        errors.add("data.data_layout", "applies to a tensor dataset (data.tensors), not to images")
    errors.raise_if_any()
    return CampaignSpec(name=name, devices=devices, models=tuple(models), images=images or (),
                        calibration_images=cal_images, preprocess=preprocess, quantization=quant, tensors=tensors,
                        calibration_tensors=cal_tensors, **options)


def _data_sources(data: Mapping, image_folder: FolderResolver, tensor_source: TensorResolver, errors: _Errors):
    """(images, calibration images, tensors, calibration tensors): images or tensors, exactly one."""
    given = {key: data.get(key) is not None for key in ("images", "calibration_images", "tensors",
                                                         "calibration_tensors")}
    if given["images"] == given["tensors"]:
        errors.add("data", "give the samples as data.images (an image folder) or data.tensors (a tensor dataset), "
                           "exactly one of them")
    if given["calibration_images"] and not given["images"]:
        errors.add("data.calibration_images", "goes with data.images (for tensors: data.calibration_tensors)")
    if given["calibration_tensors"] and not given["tensors"]:
        errors.add("data.calibration_tensors", "goes with data.tensors (for images: data.calibration_images)")
    images = image_folder(data["images"], "data.images", errors) if given["images"] else None
    cal_images = image_folder(data["calibration_images"], "data.calibration_images", errors) \
        if given["calibration_images"] else None
    tensors = tensor_source(data["tensors"], "data.tensors", errors) if given["tensors"] else None
    cal_tensors = tensor_source(data["calibration_tensors"], "data.calibration_tensors", errors) \
        if given["calibration_tensors"] else None
    return images, cal_images, tensors, cal_tensors


def _models(models_raw: Any, model_file: FileResolver, model_keys: set[str], model_file_key: str,
            errors: _Errors) -> list[ModelEntry]:
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
    return models


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


def spec_from_local(raw: Mapping[str, Any], source: str, base_dir: Path, hub_dir: Path | str | None = None) -> CampaignSpec:
    """`hub:NAME[@OPSET]` models are resolved here, in the client's hub cache (`hub_dir`, default
    onnx.hub's), and uploaded like any file."""
    def model_file(value: Any, where: str, errors: _Errors) -> FileRef | None:
        if not isinstance(value, str) or not value:
            errors.add(where, f"{value!r} must be the path of an ONNX file or hub:NAME[@OPSET]")
            return None
        if is_hub_ref(value):
            try:
                path, entry = resolve_hub(value, hub_dir)
            except QfarmError as exc:
                errors.add(where, str(exc))
                return None
            return FileRef(entry.file_name, sha256_file(path), path.stat().st_size, path)
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

    def tensor_source(value: Any, where: str, errors: _Errors) -> TensorRefs | None:
        if not isinstance(value, str) or not value:
            errors.add(where, f"{value!r} must be the path of a folder of .npz files or of one .npz/.npy file")
            return None
        path = (base_dir / value).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".npz")
            if not files:
                errors.add(where, f"{path} has no .npz files (one per sample)")
                return None
            return TensorRefs(True, tuple(local_ref(f) for f in files))
        if not path.is_file() or path.suffix.lower() not in TENSOR_SUFFIXES:
            errors.add(where, f"{path} is neither a folder of .npz files nor an .npz/.npy file")
            return None
        return TensorRefs(False, (local_ref(path),))

    return parse_spec(raw, source, model_file, image_folder, MODEL_KEYS_FILE, "path", tensor_source)


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

    def tensor_refs(value: Any, where: str, errors: _Errors) -> TensorRefs | None:
        if not isinstance(value, Mapping) or set(value) != {"folder", "files"} or \
                not isinstance(value["folder"], bool):
            errors.add(where, "must be {folder: true|false, files: [...]}")
            return None
        files = refs(value["files"], f"{where}.files", errors)
        if files is None:
            return None
        suffixes = (".npz",) if value["folder"] else TENSOR_SUFFIXES
        for f in files:
            if not f.name.lower().endswith(suffixes):
                errors.add(f"{where}.files", f"{f.name!r} is not {' or '.join(suffixes)}")
        if not value["folder"] and len(files) != 1:
            errors.add(f"{where}.files", f"a single-file dataset has one file, not {len(files)}")
        return TensorRefs(value["folder"], files)

    return parse_spec(raw, "(submitted)", ref, refs, MODEL_KEYS_WIRE, "file", tensor_refs)
