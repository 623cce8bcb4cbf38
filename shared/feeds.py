"""Feeds: what a model is run on. A feeds batch maps each model input's name to one array whose
leading axis is the sample axis (any dtype: float images, int64 token ids, bool masks, audio
frames); every input has the same number of samples. Outputs come back the same way, one array
per output name. This module holds the few operations every side needs on them: count, slice,
hash, the feed of one inference, and a deterministic .npz form (the same arrays always give the
same bytes, so an input set is one content-addressed artifact on the farm).

What one sample is depends on the feeds' layout:

* `batched` (the default): a sample is one row of each input's batch, the input's first
  dimension; runners stack samples into batches (`take(feeds, i, i + 1)` is one batch-1 feed);
* `whole-feed`: a sample is one complete feed, each input exactly as the model takes it (a 0-d
  scalar, a state with its batch on axis 1, ...); `feeds[name][i]` is input `name` of inference
  i, so runners run one inference per sample and stack the outputs along a new sample axis."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from shared.errors import DataError, InvalidArgument

Feeds = Mapping[str, np.ndarray]

_EPOCH = (1980, 1, 1, 0, 0, 0)          # zip entries carry a time: a fixed one keeps the bytes stable

BATCHED = "batched"
WHOLE_FEED = "whole-feed"
LAYOUTS = (BATCHED, WHOLE_FEED)


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise InvalidArgument(f"data layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    return layout


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


def feed_at(feeds: Feeds, index: int, layout: str = BATCHED) -> dict[str, np.ndarray]:
    """The feed of inference `index`: a batch of one sample ({name: (1, ...)}) when batched, the
    sample's arrays exactly as stored when whole-feed (a 0-d input stays a 0-d array)."""
    if check_layout(layout) == BATCHED:
        return take(feeds, index, index + 1)
    return {name: np.asarray(array[index]) for name, array in feeds.items()}


def sample_feeds(feeds: Feeds, layout: str = BATCHED, limit: int | None = None,
                 what: str = "feeds") -> list[dict[str, np.ndarray]]:
    """One feed per sample (at most `limit`), as calibration and the sensitivity pass consume them."""
    count = num_samples(feeds, what)
    return [feed_at(feeds, i, layout) for i in range(count if limit is None else min(limit, count))]


def contiguous(array) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray turns a 0-d array into 1-d)."""
    return np.require(np.asarray(array), requirements="C")


def digest(feeds: Feeds, layout: str = BATCHED) -> str:
    """Content hash: names, dtypes, shapes and bytes, in name order (and the layout, when not the
    default: the same arrays are other inferences whole-feed)."""
    h = hashlib.sha256()
    if check_layout(layout) != BATCHED:
        h.update(f"layout|{layout}|".encode())
    for name in sorted(feeds):
        array = contiguous(feeds[name])
        h.update(f"{name}|{array.dtype.str}|{list(array.shape)}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Deterministic, uncompressed .npz bytes (np.load reads them); names in sorted order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, contiguous(arrays[name]), allow_pickle=False)
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
