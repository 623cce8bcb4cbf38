"""Evaluation data: an image folder -> preprocessed float32 batches, labels from file names,
and fixed, seeded, disjoint calibration/evaluation subsets."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from coordinator.prepare import ModelInput
from coordinator.preprocess import LABEL_SOURCES, Preprocess  # noqa: F401  (re-exported)
from shared.errors import DataError, InvalidArgument, NotFound

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CLASSES_TSV = Path(__file__).resolve().parent.parent / "shared" / "imagenet_classes.tsv"
_SYNSET = re.compile(r"^(n\d{8})")


@dataclass(frozen=True)
class ImageSet:
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None

    def subset(self, indices: list[int]) -> "ImageSet":
        return ImageSet(tuple(self.files[i] for i in indices),
                        None if self.labels is None else tuple(self.labels[i] for i in indices))

    def __len__(self) -> int:
        return len(self.files)

    def digest(self) -> str:
        """Identity of the set: file names and contents' sizes (cheap, stable across machines)."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
        return h.hexdigest()


def load_synsets(tsv: Path = CLASSES_TSV) -> dict[str, int]:
    index = {}
    for line in tsv.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            index[parts[1]] = int(parts[0])
    return index


def list_images(folder: Path, labels: str = "synset") -> ImageSet:
    folder = Path(folder)
    if labels not in LABEL_SOURCES:
        raise InvalidArgument(f"--labels {labels!r} must be one of {', '.join(LABEL_SOURCES)}")
    if not folder.is_dir():
        raise NotFound(f"image folder {folder} does not exist", step="data")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"image folder {folder} has no JPEG or PNG images")
    if labels == "none":
        return ImageSet(tuple(files), None)
    synsets = load_synsets()
    label_ids = []
    for f in files:
        match = _SYNSET.match(f.name)
        if not match or match.group(1) not in synsets:
            raise DataError(f"cannot read an ImageNet synset from the file name {f.name!r} "
                            "(expected e.g. n01440764_tench.jpg); use --labels none for unlabelled images")
        label_ids.append(synsets[match.group(1)])
    return ImageSet(tuple(files), tuple(label_ids))


def split(images, n_calibration: int, n_eval: int, seed: int, calibration_images=None, noun: str = "images"):
    """Seeded subsets of an ImageSet or TensorSet (anything with len() and subset()); disjoint when
    both come from the same set."""
    if n_calibration < 1 or n_eval < 1:
        raise InvalidArgument(f"--calibration {n_calibration} and --eval {n_eval} must both be >= 1")
    rng = np.random.default_rng(seed)
    if calibration_images is not None:
        if len(calibration_images) < n_calibration:
            raise DataError(f"--calibration {n_calibration} asks for more {noun} than the calibration set "
                            f"has ({len(calibration_images)})")
        if len(images) < n_eval:
            raise DataError(f"--eval {n_eval} asks for more {noun} than the dataset has ({len(images)})")
        cal = sorted(rng.permutation(len(calibration_images))[:n_calibration].tolist())
        ev = sorted(rng.permutation(len(images))[:n_eval].tolist())
        return calibration_images.subset(cal), images.subset(ev)
    if len(images) < n_calibration + n_eval:
        raise DataError(f"--calibration {n_calibration} + --eval {n_eval} need {n_calibration + n_eval} {noun}; "
                        f"the dataset has {len(images)} (lower them or pass a separate calibration set)")
    order = rng.permutation(len(images)).tolist()
    return images.subset(sorted(order[:n_calibration])), images.subset(sorted(order[n_calibration:][:n_eval]))


def load_image(path: Path, pre: Preprocess) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            short = round(pre.input_size * pre.resize_ratio)
            scale = short / min(w, h)
            img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - pre.input_size) // 2, (h - pre.input_size) // 2
            img = img.crop((left, top, left + pre.input_size, top + pre.input_size))
            arr = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    if pre.pixel_scale == 1:
        arr = arr / 255.0
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.bgr:
        arr = arr[..., ::-1]
    if pre.layout == "NCHW":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_batch(images: ImageSet, pre: Preprocess) -> np.ndarray:
    return np.stack([load_image(f, pre) for f in images.files])


def labels_array(images: ImageSet) -> np.ndarray | None:
    return None if images.labels is None else np.asarray(images.labels, dtype=np.int64)


def check_fits_model(pre: Preprocess, inputs: tuple[ModelInput, ...], model_name: str) -> None:
    """An image folder feeds one float32 4-D input whose static dims match the preprocessed images."""
    if len(inputs) != 1:
        raise DataError(f"{model_name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an image "
                        "folder feeds one: give the samples as a tensor dataset with --data (.npz)")
    inp = inputs[0]
    if inp.dtype != "float32":
        raise DataError(f"input {inp.name!r} of {model_name} is {inp.dtype}; images are float32: give the samples "
                        "as a tensor dataset with --data (.npz)")
    if len(inp.dims) != 4:
        raise DataError(f"input {inp.name!r} of {model_name} has rank {len(inp.dims)}; images are a 4-D batch "
                        "(NCHW or NHWC): give the samples as a tensor dataset with --data (.npz)")
    want = pre.input_shape()
    for w, h in zip(want, inp.dims[1:]):
        if h is not None and w != h:
            shown = "x".join("?" if d is None else str(d) for d in inp.dims)
            raise DataError(f"model input {inp.name!r} expects {shown} but the images are preprocessed to "
                            f"{pre.layout} {'x'.join(map(str, want))} (check --input-size and --layout)")


def image_input_shapes(pre: Preprocess, model_name: str = "the model"):
    """For prepare_model: checks that the model has the one 4-D float input an image folder feeds
    (check_fits_model) and gives its shape, (None, 3, S, S) or (None, S, S, 3): the batch left free."""
    def shapes(inputs: tuple[ModelInput, ...]) -> dict[str, tuple[int | None, ...]]:
        check_fits_model(pre, tuple(inputs), model_name)
        return {inputs[0].name: (None, *pre.input_shape())}
    return shapes
