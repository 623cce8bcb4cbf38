"""Everything a tune derives from its config before any candidate is built: the prepared model
(with FP32-exact recipe rewrites), the calibration and evaluation data, the fixed float nodes,
and the identity a resumed report must match.

`open_workspace` does that work in a build worker (coordinator/buildpool.py: a hostile model or
preprocessing that blows up is that process's problem, within its memory limit): the worker
writes the calibration and evaluation feeds to content-named, uncompressed .npz files under
`<out>/cache/` (the very bytes the farm ships as the inputs artifact), and this process maps
them (`map_npz`) instead of holding copies."""
from __future__ import annotations

import dataclasses
import logging
import struct
import types
import typing
import zipfile
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coordinator import data as data_mod
from coordinator import tensor_data
from coordinator.evaluators import EvalInputs
from coordinator.prepare import PreparedModel, prepare_model
from coordinator.tuner.config import TuneConfig
from shared.atomic import atomic_output
from shared.feeds import BATCHED, Feeds, load_npz, npz_bytes
from shared.feeds import digest as feeds_digest
from shared.settings import QuantSettings

if TYPE_CHECKING:
    from coordinator.buildpool import BuildPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workspace:
    prepared: PreparedModel
    calibration: Feeds | None              # {input name: (N, ...)} for static quantization
    eval_inputs: EvalInputs
    calibration_digest: str
    identity: dict
    excludes: tuple[str, ...] = ()          # --exclude and the recipe's keep_float presets: always float
    calibration_file: Path | None = None    # the calibration feeds as .npz (what build workers read)
    eval_file: Path | None = None           # the evaluation feeds as .npz (the farm's inputs artifact)
    layout: str = BATCHED                   # what one sample of the calibration and evaluation feeds is


def apply_model_recipes(prepared: PreparedModel, settings: QuantSettings, work_dir: Path) -> PreparedModel:
    """FP32-equivalent rewrites chosen in the recipe (CLE), as a new prepared model."""
    mode = settings.recipe.get("cle")
    if not mode:
        return prepared
    import onnx

    from coordinator.prepare import PREPARE_VERSION, sha256_file
    from coordinator.recipes import equalize

    target = work_dir / f"cle-{mode}-{prepared.sha256[:16]}-v{PREPARE_VERSION}.onnx"
    if not target.exists():
        model, pairs = equalize(onnx.load(str(prepared.path)), through_relu6=(mode == "relu6"))
        log.info("CLE equalised %d conv pairs", len(pairs))
        with atomic_output(target) as tmp:
            onnx.save(model, str(tmp))
    return dataclass_replace(prepared, path=target, sha256=sha256_file(target), size_bytes=target.stat().st_size)


def preset_excludes(prepared: PreparedModel, settings: QuantSettings) -> tuple[str, ...]:
    presets = settings.recipe.get("keep_float")
    if not presets:
        return ()
    import onnx

    from coordinator.recipes import preset_nodes

    return tuple(preset_nodes(onnx.load(str(prepared.path)), presets.split(",")))


def fixed_excludes(prepared: PreparedModel, config: TuneConfig) -> tuple[str, ...]:
    """--exclude (every name checked against the graph) plus the recipe's keep_float presets."""
    from coordinator.quantize import validate_node_names

    return tuple(sorted(set(validate_node_names(prepared, config.excludes))
                        | set(preset_excludes(prepared, config.settings))))


def load_workspace(config: TuneConfig) -> Workspace:
    """The prepared model (its dynamic input dimensions fixed from the data or --input-shape), then the
    data checked against its inputs: all of it before the report (or anything else of this tune besides
    content-addressed caches) is written."""
    if config.data is not None:
        def data_shapes(inputs):
            return tensor_data.data_shapes(config.data, inputs, config.data_layout)
    else:
        data_shapes = data_mod.image_input_shapes(config.preprocess, Path(config.model).name)
    prepared = prepare_model(config.model, config.out / "prepared", input_shapes=config.input_shape,
                             data_shapes=data_shapes)
    prepared = apply_model_recipes(prepared, config.settings, config.out / "prepared")
    n_cal = config.settings.calibration_images if config.settings.is_static else config.n_calibration
    layout = BATCHED
    if config.data is not None:
        dataset = tensor_data.list_tensors(config.data, prepared.inputs, config.data_layout)
        layout = dataset.layout             # calibration data is read the same way as the evaluation data
        cal_set = None if config.calibration_data is None else \
            tensor_data.list_tensors(config.calibration_data, prepared.inputs, layout)
        calib, evals = data_mod.split(dataset, n_cal, config.n_eval, config.seed, cal_set, noun="samples")
        calibration = tensor_data.load_feeds(calib) if config.settings.is_static else None
        feeds, labels, preprocess = tensor_data.load_feeds(evals), None, None
    else:
        images = data_mod.list_images(config.images, config.labels)
        cal_set = None if config.calibration_images is None else data_mod.list_images(config.calibration_images, "none")
        calib, evals = data_mod.split(images, n_cal, config.n_eval, config.seed, cal_set)
        name = prepared.input_name
        calibration = {name: data_mod.load_batch(calib, config.preprocess)} if config.settings.is_static else None
        feeds, labels = {name: data_mod.load_batch(evals, config.preprocess)}, data_mod.labels_array(evals)
        preprocess = config.preprocess.to_dict()
    eval_inputs = EvalInputs(feeds, labels, config.latency_runs, config.task, config.metric, layout=layout)
    identity = {
        "model_sha256": prepared.sha256,
        "settings": config.settings.canonical(),
        "preprocess": preprocess,
        "eval_digest": eval_inputs.digest(),
        "calibration_digest": calib.digest(),
        "measures": {"task": config.task, "metric": config.metric},
    }
    return Workspace(prepared, calibration, eval_inputs, calib.digest(), identity, fixed_excludes(prepared, config),
                     layout=layout)


# -- in a build worker, and back ----------------------------------------------------------------
def save_feeds(feeds: Feeds, cache_dir: Path, kind: str) -> Path:
    """Feeds as `<cache>/<kind>-<digest>.npz`, written as `npz_bytes` (deterministic, uncompressed):
    the same data is one file, byte for byte the farm's inputs artifact."""
    target = cache_dir / f"{kind}-{feeds_digest(feeds)[:24]}.npz"
    if not target.is_file():
        with atomic_output(target) as tmp:
            tmp.write_bytes(npz_bytes(feeds))
    return target


def map_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed .npz, memory-mapped (read on demand, never copied); any other
    .npz is loaded whole."""
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as fh:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                return load_npz(path)
            fh.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<HH", fh.read(30)[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            if dtype.hasobject:
                return load_npz(path)          # refuses pickled arrays by name
            name = info.filename[:-len(".npy")]
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape,
                                     order="F" if fortran else "C") if all(shape) else np.empty(shape, dtype)
    return arrays


def workspace_files(config: TuneConfig) -> dict[str, Any]:
    """`load_workspace`, its feeds written to .npz files: what a build worker answers (JSON)."""
    ws = load_workspace(config)
    cache = config.out / "cache"
    labels = None
    if ws.eval_inputs.labels is not None:
        labels = save_feeds({"labels": np.asarray(ws.eval_inputs.labels, np.int64)}, cache, "eval-labels")
    return {
        "prepared": _plain(ws.prepared),
        "calibration": None if ws.calibration is None else str(save_feeds(ws.calibration, cache, "calibration")),
        "eval_inputs": str(save_feeds(ws.eval_inputs.feeds, cache, "eval-inputs")),
        "eval_labels": None if labels is None else str(labels),
        "latency_runs": ws.eval_inputs.latency_runs, "task": ws.eval_inputs.task, "metric": ws.eval_inputs.metric,
        "calibration_digest": ws.calibration_digest, "identity": ws.identity, "excludes": list(ws.excludes),
        "layout": ws.layout,
    }


def workspace_from_files(answer: dict[str, Any]) -> Workspace:
    """The Workspace of `workspace_files`' answer, its feeds memory-mapped from their files."""
    calibration = None if answer["calibration"] is None else Path(answer["calibration"])
    eval_file = Path(answer["eval_inputs"])
    labels = None if answer["eval_labels"] is None else np.array(load_npz(Path(answer["eval_labels"]))["labels"])
    eval_inputs = EvalInputs(map_npz(eval_file), labels, answer["latency_runs"], answer["task"], answer["metric"],
                             source=eval_file, layout=answer["layout"])
    return Workspace(_typed(PreparedModel, answer["prepared"]),
                     None if calibration is None else map_npz(calibration), eval_inputs,
                     answer["calibration_digest"], answer["identity"], tuple(answer["excludes"]),
                     calibration_file=calibration, eval_file=eval_file, layout=answer["layout"])


def open_workspace(config: TuneConfig, pool: "BuildPool") -> Workspace:
    """The tune's workspace, prepared and loaded by a build worker."""
    answer = pool.call("coordinator.tuner.workspace:workspace_files", config,
                       what=f"preparing model {config.model.name} and its data")
    return workspace_from_files(answer)


def _plain(value: Any) -> Any:
    """A frozen dataclass (of paths, numbers, strings, tuples and such dataclasses) as JSON values."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _typed(hint: Any, value: Any) -> Any:
    """The inverse of `_plain`, by the declared field types."""
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{name: _typed(hints.get(name), v) for name, v in value.items()})
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Path or (origin in (typing.Union, types.UnionType) and Path in args):
        return Path(value)
    if origin is tuple:
        item = args[0] if args and (len(args) == 2 and args[1] is Ellipsis or len(set(args)) == 1) else None
        return tuple(_typed(item, v) for v in value)
    return value
