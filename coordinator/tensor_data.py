"""Tensor datasets (`--data PATH`): samples for models that are not fed from an image folder, or
that take several inputs or non-float ones (token ids, masks, audio frames). Either

* a folder of `.npz` files, one sample per file, holding one array per model input, named like
  the input; or
* one `.npz` holding one array per model input with a leading sample axis; or
* one `.npy` array with a leading sample axis, for a single-input model.

What a sample is, is the dataset's layout (`--data-layout`, shared/feeds.py):

* `batched`: a sample is one row of each input's batch, shaped like the input's dims without
  the batch dim (a leading batch dim of 1 is accepted too: a folder file shaped [1, ...], a
  single file [N, 1, ...]); runners stack samples into batches along each input's first
  dimension, so every input needs one (a scalar input is refused with its name; one batched
  along another axis fails its shape check);
* `whole-feed`: a sample is one complete feed, each input exactly as the model takes it: any
  rank, 0-d scalars included (a single file holds them as [N]), the batch wherever the model
  has it (a recurrent state [2, 1, 128]); runners run one inference per sample. The model's
  symbolic dims are fixed to the data's, batch included.
* `auto` (the default): batched when the files read as batched samples, else whole-feed when
  they read as whole feeds; neither is one error naming both readings.

Every file is checked against the model's inputs when the dataset is listed, from the array
headers only (names, dtypes, shapes against the model's static dims, the same shape in every
file, the same number of samples in every array); each problem is one error naming the file, the
array and the value. Only the samples a split selects are then read."""
from __future__ import annotations

import hashlib
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from coordinator.prepare import ModelInput
from shared.errors import DataError, NotFound
from shared.feeds import BATCHED, LAYOUTS, WHOLE_FEED, load_npz
from shared.limits import DEFAULT_LIMITS

log = logging.getLogger(__name__)

TENSOR_SUFFIXES = (".npz", ".npy")
AUTO = "auto"
DATA_LAYOUTS = (AUTO, *LAYOUTS)         # --data-layout


@dataclass(frozen=True)
class Header:
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class TensorSet:
    """Samples of a tensor dataset: (file, index in it) pairs; the index is None for a file that
    holds one sample (a folder's .npz)."""

    source: Path
    samples: tuple[tuple[Path, int | None], ...]
    inputs: tuple[ModelInput, ...]
    batched: frozenset[str] = frozenset()   # single-file arrays stored [N, 1, ...] (batch dim included)
    layout: str = BATCHED                   # batched rows or whole feeds (resolved, never auto)
    labels = None                      # tensor datasets carry no class labels

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: list[int]) -> "TensorSet":
        return TensorSet(self.source, tuple(self.samples[i] for i in indices), self.inputs, self.batched, self.layout)

    def digest(self) -> str:
        """Identity: file names, sizes and sample indices (cheap, stable across machines), and the
        layout when whole-feed (the same files are other inferences then)."""
        h = hashlib.sha256()
        if self.layout != BATCHED:
            h.update(f"layout|{self.layout}|".encode())
        for path, index in self.samples:
            h.update(f"{path.name}|{path.stat().st_size}|{index}|".encode())
        return h.hexdigest()


def list_tensors(source: Path, inputs: Sequence[ModelInput], layout: str = AUTO) -> TensorSet:
    """The dataset at `source`, every file's headers checked against the model's `inputs` in the
    given layout (auto: batched if the files read so, else whole feeds; see the module doc)."""
    source = Path(source)
    inputs = tuple(inputs)
    if layout not in DATA_LAYOUTS:
        raise DataError(f"--data-layout {layout!r} is not one of {', '.join(DATA_LAYOUTS)}")
    if layout != AUTO:
        return _list(source, inputs, layout)
    try:
        return _list(source, inputs, BATCHED)
    except DataError as batched_error:
        try:
            found = _list(source, inputs, WHOLE_FEED)
        except DataError as whole_error:
            if str(whole_error) == str(batched_error):
                raise
            raise DataError(f"{batched_error.args[0]} (read as whole feeds, --data-layout whole-feed: "
                            f"{whole_error.args[0]})") from batched_error
        log.info("%s: each sample is a whole feed (%s)", source.name, batched_error.args[0])
        return found


def _list(source: Path, inputs: tuple[ModelInput, ...], layout: str) -> TensorSet:
    whole = layout == WHOLE_FEED
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() == ".npz")
        if not files:
            raise DataError(f"tensor dataset folder {source} has no .npz files (one per sample)")
        shapes: dict[str, tuple[tuple[int, ...], Path]] = {}
        if not whole:
            for inp in inputs:
                _check_batchable(inp, source)
        for path in files:
            headers = _npz_headers(path)
            _check_names(headers, inputs, path)
            for inp in inputs:
                shape = _feed_shape(headers[inp.name], inp, path) if whole else \
                    _sample_shape(headers[inp.name], inp, path)
                first = shapes.setdefault(inp.name, (shape, path))
                if first[0] != shape:
                    raise DataError(f"array {inp.name!r} is {list(first[0])} in {first[1].name} but {list(shape)} in "
                                    f"{path.name}: every sample file needs the same shape (ragged samples)")
        return TensorSet(source, tuple((p, None) for p in files), inputs, layout=layout)
    if not source.is_file():
        raise NotFound(f"tensor dataset {source} does not exist", step="data")
    suffix = source.suffix.lower()
    if suffix == ".npy":
        if len(inputs) != 1:
            raise DataError(f"{source.name} is a single .npy array but the model has {len(inputs)} inputs "
                            f"({', '.join(i.name for i in inputs)}); use an .npz with one array per input")
        headers = {inputs[0].name: _npy_header(source)}
    elif suffix == ".npz":
        headers = _npz_headers(source)
        _check_names(headers, inputs, source)
    else:
        raise DataError(f"tensor dataset {source} is neither a folder of .npz files nor an .npz/.npy file")
    counts, batched = {}, set()
    for inp in inputs:
        header = headers[inp.name]
        if not whole:
            _check_batchable(inp, source)
        if not header.shape:
            raise DataError(f"array {inp.name!r} in {source.name} is a scalar; it needs a leading sample axis")
        if whole:
            _feed_shape(Header(header.shape[1:], header.dtype), inp, source, " after the sample axis")
        else:
            _check_dtype(header, inp, source)
            sample = header.shape[1:]
            if len(sample) == len(inp.dims) and sample[:1] == (1,):          # each sample with its batch dim
                sample = sample[1:]
                batched.add(inp.name)
            _check_dims(sample, inp, source)
        counts[inp.name] = header.shape[0]
    if len(set(counts.values())) != 1:
        shown = ", ".join(f"{name}: {n}" for name, n in counts.items())
        raise DataError(f"the arrays of {source.name} have different sample counts ({shown}): "
                        "a ragged sample axis; every input needs one entry per sample")
    count = next(iter(counts.values()))
    if count == 0:
        raise DataError(f"tensor dataset {source.name} holds no samples")
    return TensorSet(source, tuple((source, i) for i in range(count)), inputs, frozenset(batched), layout)


def data_shapes(source: Path, inputs: Sequence[ModelInput], layout: str = AUTO) -> dict[str, tuple[int | None, ...]]:
    """What the dataset says about the model's input dims before preparation, from the headers
    (checked by list_tensors): batched, each input's sample shape after a free batch dimension,
    (None, *sample); whole-feed, each input's whole shape (every dimension, batch included)."""
    tensors = list_tensors(source, inputs, layout)
    path, index = tensors.samples[0]
    headers = {inputs[0].name: _npy_header(path)} if path.suffix.lower() == ".npy" else _npz_headers(path)
    if tensors.layout == WHOLE_FEED:
        return {inp.name: headers[inp.name].shape[0 if index is None else 1:] for inp in tensors.inputs}
    out = {}
    for inp in tensors.inputs:
        if index is None:                        # a folder's file: one sample, maybe with its batch dim
            sample = _sample_shape(headers[inp.name], inp, path)
        else:
            sample = headers[inp.name].shape[1:]
            sample = sample[1:] if inp.name in tensors.batched else sample
        out[inp.name] = (None, *sample)
    return out


def load_feeds(tensors: TensorSet) -> dict[str, np.ndarray]:
    """The selected samples as feeds {input name: (N, ...)} of the model's dtypes: N batch rows, or
    N whole feeds stacked along a new sample axis (`tensors.layout`)."""
    if not tensors.samples:
        raise DataError(f"no samples selected from {tensors.source}")
    whole = tensors.layout == WHOLE_FEED
    if tensors.samples[0][1] is None:                # a folder: one sample per file
        rows: dict[str, list[np.ndarray]] = {inp.name: [] for inp in tensors.inputs}
        for path, _ in tensors.samples:
            arrays = load_npz(path)
            for inp in tensors.inputs:
                array = arrays[inp.name]
                rows[inp.name].append(array if whole or array.ndim != len(inp.dims) else array[0])
        return {name: np.ascontiguousarray(np.stack(values)) for name, values in rows.items()}
    path = tensors.samples[0][0]
    index = [i for _, i in tensors.samples]
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        arrays = {tensors.inputs[0].name: array}
    else:
        arrays = load_npz(path)
    return {inp.name: np.ascontiguousarray(arrays[inp.name][index][:, 0] if inp.name in tensors.batched
                                           else arrays[inp.name][index]) for inp in tensors.inputs}


# -- checks ------------------------------------------------------------------------------------
def _check_names(headers: dict[str, Header], inputs: tuple[ModelInput, ...], path: Path) -> None:
    wanted = [i.name for i in inputs]
    missing = [n for n in wanted if n not in headers]
    if missing:
        raise DataError(f"{path.name} has no array {missing[0]!r} (the model's inputs: {', '.join(wanted)}; "
                        f"arrays in the file: {', '.join(headers) or 'none'})")
    extra = [n for n in headers if n not in wanted]
    if extra:
        raise DataError(f"array {extra[0]!r} in {path.name} is not an input of the model "
                        f"(its inputs: {', '.join(wanted)})")


def _check_batchable(inp: ModelInput, source: Path) -> None:
    """Samples are stacked along an input's first dimension, so it must have one that can be the batch."""
    if not inp.dims:
        raise DataError(f"the model's input {inp.name!r} is a scalar: {source.name} cannot feed it as batched "
                        "samples, which qfarm stacks along each input's first (batch) dimension; give each "
                        "sample as one whole feed (--data-layout whole-feed)")


def _check_dtype(header: Header, inp: ModelInput, path: Path) -> None:
    if header.dtype.name != inp.dtype:
        raise DataError(f"array {inp.name!r} in {path.name} is {header.dtype.name}; the model's input "
                        f"{inp.name!r} expects {inp.dtype}")


def _check_dims(sample_shape: tuple[int, ...], inp: ModelInput, path: Path) -> None:
    """One sample's shape against the input's dims after the batch dim (static ones must match)."""
    want = inp.dims[1:]
    if len(sample_shape) != len(want):
        raise DataError(f"array {inp.name!r} in {path.name} has samples of shape {list(sample_shape)}; the model's "
                        f"input {inp.name!r} is {inp.shown()}, so a sample has {len(want)} dims")
    for axis, (w, got) in enumerate(zip(want, sample_shape), start=1):
        if w is not None and w != got:
            raise DataError(f"array {inp.name!r} in {path.name} has samples of shape {list(sample_shape)}; the "
                            f"model's input {inp.name!r} is {inp.shown()} (dim {axis} must be {w})")


def _feed_shape(header: Header, inp: ModelInput, path: Path, where: str = "") -> tuple[int, ...]:
    """A whole feed's array: the input's dtype, rank and static dims exactly (a 0-d input: [])."""
    _check_dtype(header, inp, path)
    shape = header.shape
    if len(shape) != len(inp.dims):
        kind = "a scalar, so a whole feed holds it with shape []" if not inp.dims else \
            f"rank {len(inp.dims)}, so a whole feed holds it with {len(inp.dims)} dims"
        raise DataError(f"array {inp.name!r} in {path.name} has shape {list(shape)}{where}; the model's input "
                        f"{inp.name!r} is {inp.shown()}, {kind}")
    for axis, (want, got) in enumerate(zip(inp.dims, shape)):
        if want is not None and want != got:
            raise DataError(f"array {inp.name!r} in {path.name} has shape {list(shape)}{where}; the model's input "
                            f"{inp.name!r} is {inp.shown()} (dim {axis} must be {want})")
    return shape


def _sample_shape(header: Header, inp: ModelInput, path: Path) -> tuple[int, ...]:
    """A folder file's sample: the input's dims without the batch dim, or with a batch dim of 1."""
    _check_dtype(header, inp, path)
    shape = header.shape
    if len(shape) == len(inp.dims) and shape[:1] == (1,):
        shape = shape[1:]
    _check_dims(shape, inp, path)
    return shape


def _read_header(fh, label: str) -> Header:
    try:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    except ValueError as exc:
        raise DataError(f"cannot read {label}: {exc}") from exc
    if dtype.hasobject:
        raise DataError(f"{label} is an object array (ragged?); save each input as one numeric array")
    shape = tuple(int(d) for d in shape)
    # a compressed .npz can inflate far beyond its file: bound what reading it would allocate
    DEFAULT_LIMITS.check("max_artifact_bytes", math.prod(shape) * dtype.itemsize, f"{label} (bytes once read)")
    return Header(shape, dtype)


def _npy_header(path: Path) -> Header:
    try:
        with open(path, "rb") as fh:
            return _read_header(fh, path.name)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc


def _npz_headers(path: Path) -> dict[str, Header]:
    """{array name: header} of an .npz, without reading the arrays."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as member:
                    headers[name] = _read_header(member, f"array {name!r} in {path.name}")
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path}: {exc} (expected an .npz written by numpy.savez)") from exc
    return headers
