"""`hub:NAME[@OPSET]`: a model named in the ONNX Model Hub, resolved to a file in the hub's cache.

The cache is onnx.hub's own: the manifest (`ONNX_HUB_MANIFEST.json`, the list of
{model, model_path, opset_version, metadata: {model_sha, model_bytes, ...}} the hub publishes)
and each model at `<hub dir>/<model_path's folders>/<sha256>_<file name>`, its sha256 checked.
qfarm reads the cache itself, so resolving works offline: a name, an opset or a file that is not
in the cache is an error saying which and where it looked. Only a missing manifest or model is
fetched, and only through `onnx.hub` (list_models / load, with set_dir pointed at the cache);
onnx releases from 1.21 on no longer ship onnx.hub, and then the cache must be filled by hand
(or by onnx.hub from an older onnx, e.g. on another machine)."""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.atomic import atomic_write_text
from shared.errors import DataError, InvalidArgument, NotFound
from shared.hashing import sha256_file

PREFIX = "hub:"
MANIFEST = "ONNX_HUB_MANIFEST.json"
MAX_MANIFEST_BYTES = 64 << 20
_REF = re.compile(r"^hub:([^@\s/\\]+)(?:@(\d+))?$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HubRef:
    name: str
    opset: int | None = None

    def __str__(self) -> str:
        return f"{PREFIX}{self.name}" + (f"@{self.opset}" if self.opset is not None else "")


@dataclass(frozen=True)
class HubEntry:
    """One manifest row."""

    name: str
    opset: int
    model_path: str                 # relative to the model repository's root, '/'-separated
    sha256: str | None
    size_bytes: int | None

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.model_path).name

    def local_path(self, hub_dir: Path) -> Path:
        """Where onnx.hub.load keeps it: the model_path's folders, the file name prefixed by its sha."""
        parts = PurePosixPath(self.model_path).parts
        name = f"{self.sha256}_{parts[-1]}" if self.sha256 else parts[-1]
        return hub_dir.joinpath(*parts[:-1], name)


def is_hub_ref(value: object) -> bool:
    return isinstance(value, (str, os.PathLike)) and str(value).startswith(PREFIX)


def parse_ref(text: str) -> HubRef:
    match = _REF.match(str(text).strip())
    if not match:
        raise InvalidArgument(f"{str(text)!r} is not a hub model reference hub:NAME or hub:NAME@OPSET "
                              "(e.g. hub:ResNet50@12)", step="hub")
    opset = int(match.group(2)) if match.group(2) else None
    if opset is not None and not 1 <= opset <= 1000:
        raise InvalidArgument(f"{text!r}: opset {opset} must be between 1 and 1000", step="hub")
    return HubRef(match.group(1), opset)


def default_dir() -> Path:
    """onnx.hub's cache folder: $ONNX_HOME/hub, else $XDG_CACHE_HOME/onnx/hub, else ~/.cache/onnx/hub
    (asked of onnx.hub itself when it is there, so a set_dir of the caller's is honoured)."""
    hub = _onnx_hub()
    if hub is not None:
        return Path(hub.get_dir())
    if "ONNX_HOME" in os.environ:
        return Path(os.environ["ONNX_HOME"]) / "hub"
    if "XDG_CACHE_HOME" in os.environ:
        return Path(os.environ["XDG_CACHE_HOME"]) / "onnx" / "hub"
    return Path.home() / ".cache" / "onnx" / "hub"


def resolve(ref: str | HubRef, hub_dir: Path | str | None = None) -> tuple[Path, HubEntry]:
    """The cached file of a hub model (fetched through onnx.hub when missing and possible), its
    sha256 checked against the manifest."""
    ref = ref if isinstance(ref, HubRef) else parse_ref(str(ref))
    folder = Path(hub_dir).expanduser() if hub_dir else default_dir()
    entries = _manifest(folder, ref)
    entry = _select(entries, ref, folder)
    path = entry.local_path(folder)
    if not path.is_file():
        _fetch_model(entry, ref, folder, path)
    if entry.sha256:
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise DataError(f"{ref}: the cached file {path} has sha256 {actual[:16]}..., the manifest says "
                            f"{entry.sha256[:16]}...; delete it and fetch it again", step="hub")
    return path, entry


# ------------------------------------------------------------------------------------ manifest
def _manifest(folder: Path, ref: HubRef) -> list[HubEntry]:
    path = folder / MANIFEST
    if not path.is_file():
        _fetch_manifest(folder, ref, path)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"hub manifest {path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB", step="hub")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"hub manifest {path} is not JSON ({exc})", step="hub") from exc
    if not isinstance(raw, list):
        raise DataError(f"hub manifest {path} must be a JSON list of models", step="hub")
    return [_entry(item, i, path) for i, item in enumerate(raw)]


def _entry(item: Any, index: int, path: Path) -> HubEntry:
    where = f"hub manifest {path} entry {index}"
    if not isinstance(item, dict) or not isinstance(item.get("metadata", {}), dict):
        raise DataError(f"{where} is not an object with model, model_path, opset_version, metadata", step="hub")
    name, model_path, opset = item.get("model"), item.get("model_path"), item.get("opset_version")
    meta = item.get("metadata", {})
    sha, size = meta.get("model_sha"), meta.get("model_bytes")
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: model {name!r} must be a non-empty string", step="hub")
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise DataError(f"{where} ({name}): opset_version {opset!r} must be an integer", step="hub")
    if not isinstance(model_path, str) or not model_path or model_path.startswith("/") or "\\" in model_path \
            or any(p in ("", ".", "..") for p in model_path.split("/")):
        raise DataError(f"{where} ({name}): model_path {model_path!r} must be a relative path inside the cache",
                        step="hub")
    if sha is not None and (not isinstance(sha, str) or not _SHA.match(sha)):
        raise DataError(f"{where} ({name}): model_sha {sha!r} is not 64 lowercase hex digits", step="hub")
    return HubEntry(name, opset, model_path, sha, size if isinstance(size, int) else None)


def _select(entries: list[HubEntry], ref: HubRef, folder: Path) -> HubEntry:
    """As onnx.hub.get_model_info: the name matched case-insensitively, the highest opset unless one
    is asked for."""
    matching = [e for e in entries if e.name.lower() == ref.name.lower()]
    if not matching:
        names = sorted({e.name for e in entries})
        lowered = {n.lower(): n for n in names}
        close = [lowered[c] for c in difflib.get_close_matches(ref.name.lower(), list(lowered), n=4, cutoff=0.5)]
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise NotFound(f"{ref}: no model named {ref.name!r} in the hub manifest {folder / MANIFEST} "
                       f"({len(names)} models){hint}", step="hub")
    if ref.opset is None:
        return max(matching, key=lambda e: e.opset)
    for entry in matching:
        if entry.opset == ref.opset:
            return entry
    raise NotFound(f"{ref}: {matching[0].name} has no version with opset {ref.opset} in the hub manifest "
                   f"(opsets: {', '.join(str(o) for o in sorted({e.opset for e in matching}))})", step="hub")


# ------------------------------------------------------------------------------------ fetching
def _onnx_hub():
    try:
        import onnx.hub as hub
    except ImportError:
        return None
    return hub


def _no_hub_reason() -> str:
    import onnx

    return f"onnx {onnx.__version__} has no onnx.hub to download it (onnx removed it in 1.21)"


def _fetch_manifest(folder: Path, ref: HubRef, path: Path) -> None:
    hub = _onnx_hub()
    if hub is None:
        raise NotFound(f"{ref}: the hub cache {folder} has no {MANIFEST} and {_no_hub_reason()}; copy the "
                       "manifest of the model repository there, or pass --hub-dir", step="hub")
    try:
        infos = hub.list_models()
    except Exception as exc:  # URLError offline, HTTPError, AssertionError("Could not find manifest")
        raise NotFound(f"{ref}: the hub cache {folder} has no {MANIFEST} and the hub cannot be reached "
                       f"({type(exc).__name__}: {exc}); copy the manifest there, or pass --hub-dir", step="hub") from exc
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps([info.raw_model_info for info in infos], indent=1))


def _fetch_model(entry: HubEntry, ref: HubRef, folder: Path, path: Path) -> None:
    what = f"{ref} ({entry.name}, opset {entry.opset}, {entry.model_path}) is not in the hub cache: {path} is missing"
    hub = _onnx_hub()
    if hub is None:
        raise NotFound(f"{what} and {_no_hub_reason()}; save the file there"
                       + (f" (sha256 {entry.sha256})" if entry.sha256 else ""), step="hub")
    previous = hub.get_dir()
    hub.set_dir(str(folder))
    try:
        hub.load(entry.name, opset=entry.opset, silent=True)
    except Exception as exc:  # URLError offline, HTTPError, AssertionError on a sha mismatch
        raise NotFound(f"{what} and the download through onnx.hub failed ({type(exc).__name__}: {exc})",
                       step="hub") from exc
    finally:
        hub.set_dir(previous)
    if not path.is_file():
        raise NotFound(f"{what} even after onnx.hub.load", step="hub")
