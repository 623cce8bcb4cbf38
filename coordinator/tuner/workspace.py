"""Everything a tune derives from its config before any candidate is built: the prepared model
(with FP32-exact recipe rewrites), the calibration and evaluation data, the fixed float nodes,
and the identity a resumed report must match."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path

from coordinator import data as data_mod
from coordinator.evaluators import EvalInputs
from coordinator.prepare import PreparedModel, prepare_model
from coordinator.tuner.config import TuneConfig
from shared.atomic import atomic_output
from shared.feeds import Feeds
from shared.settings import QuantSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workspace:
    prepared: PreparedModel
    calibration: Feeds | None              # {input name: (N, ...)} for static quantization
    eval_inputs: EvalInputs
    calibration_digest: str
    identity: dict
    excludes: tuple[str, ...] = ()          # --exclude and the recipe's keep_float presets: always float


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
        from coordinator import tensor_data

        def data_shapes(inputs):
            return tensor_data.data_shapes(config.data, inputs)
    else:
        data_shapes = data_mod.image_input_shapes(config.preprocess, Path(config.model).name)
    prepared = prepare_model(config.model, config.out / "prepared", input_shapes=config.input_shape,
                             data_shapes=data_shapes)
    prepared = apply_model_recipes(prepared, config.settings, config.out / "prepared")
    n_cal = config.settings.calibration_images if config.settings.is_static else config.n_calibration
    if config.data is not None:
        from coordinator import tensor_data

        dataset = tensor_data.list_tensors(config.data, prepared.inputs)
        cal_set = None if config.calibration_data is None else \
            tensor_data.list_tensors(config.calibration_data, prepared.inputs)
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
    eval_inputs = EvalInputs(feeds, labels, config.latency_runs, config.task, config.metric)
    identity = {
        "model_sha256": prepared.sha256,
        "settings": config.settings.canonical(),
        "preprocess": preprocess,
        "eval_digest": eval_inputs.digest(),
        "calibration_digest": calib.digest(),
        "measures": {"task": config.task, "metric": config.metric},
    }
    return Workspace(prepared, calibration, eval_inputs, calib.digest(), identity, fixed_excludes(prepared, config))
