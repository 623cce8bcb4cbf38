"""Feeds: what a model is run on. A feeds batch maps each model input's name to one array whose
leading axis is the sample axis (any dtype: float images, int64 token ids, bool masks, audio
frames); every input has the same number of samples. Outputs come back the same way, one array
per output name. This module holds the few operations every side needs on them: count, slice,
hash, and a deterministic .npz form (the same arrays always give the same bytes, so an input set
is one content-addressed artifact on the farm)."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from shared.errors import DataError

Feeds = Mapping[str, np.ndarray]

_EPOCH = (1980, 1, 1, 0, 0, 0)          # zip entries carry a time: a fixed one keeps the bytes stable


def num_samples(feeds: Feeds, what: str = "feeds") -> int:
    """The shared length of the sample axis; a ragged batch is an error naming each length."""
    if not feeds:
        raise DataError(f"{what} name no input")
    lengths = {}
    for name, array in feeds.items():
        array = np.asarray(array)
        if array.ndim == 0:
            raise DataError(f"{what}: input {name!r} is a scalar; every input needs a leading sample axis")
        lengths[name] = int(array.shape[0])
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{n}: {k}" for n, k in lengths.items())
        raise DataError(f"{what} have a ragged sample axis ({shown}); every input needs the same number of samples")
    return next(iter(lengths.values()))


def take(feeds: Feeds, start: int, stop: int) -> dict[str, np.ndarray]:
    return {name: array[start:stop] for name, array in feeds.items()}


def select(feeds: Feeds, indices) -> dict[str, np.ndarray]:
    return {name: np.asarray(array)[list(indices)] for name, array in feeds.items()}


def digest(feeds: Feeds) -> str:
    """Content hash: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        h.update(f"{name}|{array.dtype.str}|{list(array.shape)}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Deterministic, uncompressed .npz bytes (np.load reads them); names in sorted order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH), member.getvalue())
    return buf.getvalue()


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    Path(path).write_bytes(npz_bytes(arrays))


def load_npz(path: Path, what: str = "") -> dict[str, np.ndarray]:
    """Every array of an .npz (never pickles); an unreadable file is a DataError naming it."""
    label = what or str(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{label} is not an .npz archive (a single .npy array?)")
        with loaded as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:       # object arrays (ragged lists) need pickling: refused
        raise DataError(f"{label}: {exc} (save each input as one numeric array)") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {label}: {exc}") from exc
