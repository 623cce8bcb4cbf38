"""Building candidates: one prepared FP32 model + settings + nodes kept in float -> one file.

Calibration is computed once per (model, calibration set, method) and cached: excluding nodes
does not change the FP32 activations, so every candidate of a campaign reuses the same ranges
(the seed tool recalibrated for every candidate). Nodes kept in float between quantized ones are
pinned float (coordinator/recipes/float_islands.py) unless the recipe says float_islands=plain."""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from coordinator.prepare import PreparedModel, sha256_file
from shared.atomic import link_or_copy, publish
from shared.errors import InvalidArgument, ModelError
from shared.feeds import BATCHED, Feeds, feed_at, load_npz, num_samples, take
from shared.feeds import digest as feeds_digest
from shared.settings import CALIBRATION_FREE_RECIPES, REFINE_RECIPES, QuantSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateSpec:
    """What makes a candidate: identity is derived, never assigned."""

    model_sha256: str
    settings: QuantSettings
    excluded_nodes: tuple[str, ...]       # sorted, unique
    int16_nodes: tuple[str, ...] = ()     # precision ladder: activations at 16 bit
    calibration_digest: str = ""          # the calibration images decide the ranges, so they are a setting

    @property
    def id(self) -> str:
        return candidate_id(self.model_sha256, self.excluded_nodes, self.settings, self.int16_nodes,
                            self.calibration_digest)


@dataclass(frozen=True)
class BuiltCandidate:
    spec: CandidateSpec
    path: Path
    sha256: str
    size_bytes: int

    @property
    def id(self) -> str:
        return self.spec.id


def candidate_id(model_sha256: str, excluded: Iterable[str], settings: QuantSettings,
                 int16_nodes: Iterable[str] = (), calibration_digest: str = "") -> str:
    """Stable hash of what decides the candidate's bytes: the same candidate is never built twice."""
    payload = {"model": model_sha256, "exclude": sorted(set(excluded)), "settings": json.loads(settings.canonical())}
    if settings.mode == "static":
        payload["calibration"] = calibration_digest
    if pins_float_islands(settings, excluded):   # only then, so ids of candidates without islands stay stable
        from coordinator.recipes.float_islands import PIN_MARK

        payload["float_islands"] = PIN_MARK
    int16 = sorted(set(int16_nodes))
    if int16:  # only present when used, so ids of plain candidates stay stable
        payload["int16"] = int16
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def validate_node_names(prepared: PreparedModel, names: Iterable[str], what: str = "--exclude") -> tuple[str, ...]:
    """Every name must be a node of the prepared graph: an unknown name is an error, never ignored."""
    known = set(prepared.node_names)
    result = sorted(set(names))
    for name in result:
        if name not in known:
            close = difflib.get_close_matches(name, prepared.node_names, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise InvalidArgument(f"{what} {name!r} is not a node of {prepared.source.name} "
                                  f"(it has {prepared.num_nodes} nodes; tensor names are not node names){hint}",
                                  step="quantize")
    return tuple(result)


def pins_float_islands(settings: QuantSettings, excluded: Iterable[str]) -> bool:
    """Whether a candidate's float nodes get pinned float (static QDQ or QOperator, some node kept
    in float by the candidate or its keep_float presets, float_islands not "plain")."""
    return (settings.is_static and settings.recipe.get("float_islands", "pinned") == "pinned"
            and (bool(tuple(excluded)) or bool(settings.recipe.get("keep_float"))))


class FeedsReader:
    """onnxruntime CalibrationDataReader over in-memory feeds ({input name: (N, ...)}), one sample
    (a feed dict of every input: a batch of one, or one whole feed) per call."""

    def __init__(self, feeds: Feeds, layout: str = BATCHED):
        self.feeds = dict(feeds)
        self.layout = layout
        self._count = num_samples(self.feeds, "calibration data")
        self._pos = 0

    def get_next(self):
        if self._pos >= self._count:
            return None
        item = feed_at(self.feeds, self._pos, self.layout)
        self._pos += 1
        return item

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return self._count

    def set_range(self, start_index: int, end_index: int) -> None:
        self.feeds = take(self.feeds, start_index, end_index)
        self._count = num_samples(self.feeds, "calibration data")
        self._pos = 0


def _ort_enums(settings: QuantSettings):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8,
             "uint16": QuantType.QUInt16, "int16": QuantType.QInt16}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    fmt = QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator
    return fmt, types[settings.activation_type], types[settings.weight_type], methods[settings.calibrate]


def build_candidate(prepared: PreparedModel, spec: CandidateSpec, out_dir: Path, calibration: Feeds | None,
                    cache_dir: Path, extra_options: dict | None = None, layout: str = BATCHED) -> BuiltCandidate:
    """Quantize `prepared` per `spec` into out_dir/<id>.onnx (reused when already built);
    `layout` says what one calibration sample is (shared/feeds.py)."""
    if spec.model_sha256 != prepared.sha256:
        raise ModelError(f"candidate {spec.id} was made for model {spec.model_sha256[:12]}, "
                         f"not {prepared.sha256[:12]}", step="quantize")
    validate_node_names(prepared, spec.excluded_nodes)
    validate_node_names(prepared, spec.int16_nodes, what="int16 node")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{spec.id}.onnx"
    if not target.exists():
        with tempfile.TemporaryDirectory(prefix="qfarm-q-", dir=out_dir) as tmp:
            staged = Path(tmp) / "candidate.onnx"
            _quantize(prepared, spec, staged, calibration, cache_dir, extra_options or {}, layout=layout)
            publish(staged, target)
    return BuiltCandidate(spec=spec, path=target, sha256=sha256_file(target), size_bytes=target.stat().st_size)


def calibration_cache_path(prepared: PreparedModel, settings: QuantSettings, calibration: Feeds,
                           cache_dir: Path, layout: str = BATCHED) -> Path:
    h = hashlib.sha256()
    h.update(prepared.sha256.encode())
    h.update(settings.calibrate.encode())
    model_recipes = {k: v for k, v in settings.recipe.items() if k not in CALIBRATION_FREE_RECIPES}
    h.update(json.dumps(model_recipes, sort_keys=True).encode())
    h.update(feeds_digest(calibration, layout).encode())
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir / f"calibration-{h.hexdigest()[:20]}.json"


def _quantize(prepared: PreparedModel, spec: CandidateSpec, out: Path, calibration: Feeds | None,
              cache_dir: Path, extra_options: dict, refine: bool = True, layout: str = BATCHED) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    settings = spec.settings
    excluded = _with_float_prefix(prepared, settings, spec.excluded_nodes)
    # onnxruntime writes <model>-inferred.onnx beside the model it quantizes, then deletes it: builds
    # of one model running at once (build workers) would race on that file, so each reads a private link
    source = out.parent / f"source-{prepared.path.name}"
    link_or_copy(prepared.path, source)
    try:
        if settings.mode == "dynamic":
            quantize_dynamic(str(source), str(out), per_channel=settings.per_channel,
                             reduce_range=settings.reduce_range,
                             weight_type=QuantType.QInt8 if settings.weight_type == "int8" else QuantType.QUInt8,
                             nodes_to_exclude=excluded, extra_options=dict(extra_options))
            if refine:
                _refine(prepared, settings, out, None)
            return
        if calibration is None or num_samples(calibration, "calibration data") == 0:
            raise ModelError("static quantization needs calibration samples", step="quantize")
        fmt, act, wt, method = _ort_enums(settings)
        options = {"ActivationSymmetric": False, **extra_options}
        if spec.int16_nodes:  # precision ladder: these nodes' activations at 16 bit, weights at 8
            import onnx

            from coordinator.recipes import int16_overrides

            if settings.format != "qdq":
                raise ModelError("int16 activations (precision ladder) need --format qdq", step="quantize")
            ladder = int16_overrides(onnx.load(str(prepared.path)), spec.int16_nodes,
                                     activation_type=settings.activation_type)
            options.update(ladder)
            options["UseQDQContribOps"] = True
        quantize_static(
            str(source), str(out), FeedsReader(calibration, layout), quant_format=fmt,
            per_channel=settings.per_channel, reduce_range=settings.reduce_range, activation_type=act,
            weight_type=wt, nodes_to_exclude=excluded, calibrate_method=method,
            extra_options=options,
            calibration_cache_path=calibration_cache_path(prepared, settings, calibration, cache_dir, layout))
        if refine:
            _refine(prepared, settings, out, calibration, layout)
        if refine and pins_float_islands(settings, spec.excluded_nodes):   # as the candidate id says
            _pin_islands(excluded, out)
    except ModelError:
        raise
    except Exception as exc:  # the quantizer raises plain exceptions; name the candidate and the cause
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"onnxruntime quantization of candidate {spec.id} failed: {first}",
                         step="quantize") from exc


def _with_float_prefix(prepared: PreparedModel, settings: QuantSettings, excluded: Sequence[str]) -> list[str]:
    """The nodes to keep in float: the candidate's own plus the recipe's float prefix (a property
    of the settings, so it is part of every candidate id through them)."""
    count = settings.recipe.get("float_prefix")
    if not count:
        return list(excluded)
    import onnx

    from coordinator.recipes.float_prefix import input_prefix

    prefix = input_prefix(onnx.load(str(prepared.path)), int(count))
    return sorted(set(excluded) | set(prefix))


def _pin_islands(excluded: Sequence[str], out: Path) -> None:
    """Keep the candidate's float nodes float where onnxruntime runs them (recipes/float_islands.py)."""
    import onnx

    from coordinator.recipes.float_islands import pin_float_islands

    model, report = pin_float_islands(onnx.load(str(out)), excluded)
    for node, why in report.unpinned:
        log.warning("float node %s is not pinned (%s): onnxruntime's CPU EP may quantize it again unless "
                    "WeightBiasQuantization is disabled", node, why)
    if report.pinned:
        onnx.save(model, str(out))


def _refine(prepared: PreparedModel, settings: QuantSettings, out: Path, calibration: Feeds | None,
            layout: str = BATCHED) -> None:
    """Recipes that edit the integers of the built model (learned rounding, bias correction)."""
    switches = {name: settings.recipe.get(name) == "on" for name in REFINE_RECIPES}
    if not any(switches.values()):
        return
    import onnx

    from coordinator.recipes.refine import calibration_feeds, refine_quantized

    if settings.mode != "static" or settings.format != "qdq" or calibration is None:
        raise ModelError(f"recipe {', '.join(k for k, v in switches.items() if v)} needs static QDQ quantization "
                         f"(got mode={settings.mode}, format={settings.format})", step="quantize")
    model, report = refine_quantized(onnx.load(str(prepared.path)), onnx.load(str(out)),
                                     calibration_feeds(calibration, layout), **switches)
    log.info("refined %d layers (%d learned, %d biases corrected) in %.1f CPU s", report.layers,
             len(report.learned), report.bias_corrected, report.cpu_seconds)
    onnx.save(model, str(out))


def quantizable_nodes(prepared: PreparedModel, settings: QuantSettings) -> tuple[str, ...]:
    """Nodes whose op onnxruntime quantizes in this mode/format (the ones worth excluding)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    if settings.mode == "dynamic":
        ops = set(IntegerOpsRegistry)
    elif settings.format == "qdq":
        ops = set(QDQRegistry) | set(QLinearOpsRegistry)
    else:
        ops = set(QLinearOpsRegistry)
    return tuple(n for n, op in zip(prepared.node_names, prepared.op_types) if op in ops)


def spec_for(prepared: PreparedModel, settings: QuantSettings, excluded: Sequence[str],
             int16_nodes: Sequence[str] = (), calibration_digest: str = "") -> CandidateSpec:
    return CandidateSpec(prepared.sha256, settings, validate_node_names(prepared, excluded),
                         validate_node_names(prepared, int16_nodes, what="int16 node"), calibration_digest)


# -- as build-worker tasks (coordinator/buildpool.py): files in, JSON out ---------------------------
def _batch(calibration_file: str | Path | None) -> Feeds | None:
    return None if calibration_file is None else load_npz(Path(calibration_file))


def built_fields(cand: BuiltCandidate) -> dict:
    return {"path": str(cand.path), "sha256": cand.sha256, "size_bytes": cand.size_bytes}


def build_task(prepared: PreparedModel, spec: CandidateSpec, out_dir: Path, calibration_file: Path | None,
               cache_dir: Path, layout: str = BATCHED) -> dict:
    """`build_candidate` with the calibration feeds read from their .npz file (`layout`: what one
    of their samples is)."""
    return built_fields(build_candidate(prepared, spec, out_dir, _batch(calibration_file), cache_dir, layout=layout))


def calibrate_task(prepared: PreparedModel, spec: CandidateSpec, calibration_file: Path, cache_dir: Path,
                   layout: str = BATCHED) -> dict:
    return {"cache": str(ensure_calibration(prepared, spec, _batch(calibration_file), cache_dir, layout))}


def ensure_calibration(prepared: PreparedModel, spec: CandidateSpec, calibration: Feeds,
                       cache_dir: Path, layout: str = BATCHED) -> Path:
    """Compute and cache the calibration ranges `spec` needs (once per model, batch and
    `calibration_key`), so every candidate is then built from the same cached ranges, whichever
    process builds it and whether or not it came first. The model quantized on the way is discarded."""
    cache = calibration_cache_path(prepared, spec.settings, calibration, cache_dir, layout)
    if not cache.is_file():
        plain = CandidateSpec(spec.model_sha256, spec.settings, (), (), spec.calibration_digest)
        with tempfile.TemporaryDirectory(prefix="qfarm-cal-", dir=cache_dir) as tmp:
            try:
                _quantize(prepared, plain, Path(tmp) / "calibrating.onnx", calibration, cache_dir, {}, refine=False,
                          layout=layout)
            except ModelError:
                if not cache.is_file():    # the ranges are saved before quantizing: a later failure is a build's
                    raise
    return cache
