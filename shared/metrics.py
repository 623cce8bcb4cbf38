"""How faithful a candidate's outputs are to the FP32 model's, computed the same way by every
runner (the agent for farm jobs, the tuner locally), for any model outputs:

* every output: `sqnr_db` = 10 log10(sum ref^2 / sum (ref - cand)^2) over the whole evaluation
  set, and `cosine` = the mean over samples of the cosine similarity of the flattened outputs.
  The model-level `output_sqnr_db` and `cosine` treat all outputs concatenated. SQNR is capped
  at +-SQNR_CAP_DB: identical outputs (no noise at all) report +200 dB, a candidate whose
  outputs are not finite (NaN, inf) or whose reference is all zeros reports -200 dB, so the
  value is always a finite, JSON-safe number that still sorts correctly.
* classification (the first output holds per-class scores; other outputs get SQNR and cosine
  only): top-1/top-5 agreement with FP32's top-1, labelled top-1, and `kl` = mean KL(p_FP32 ||
  p_cand) in nats, where p is the softmax of the scores, or the scores themselves when FP32's
  already are probabilities (each row within [0, 1] and summing to 1).
* dense (outputs with spatial dims, channels on axis 1: (N, C, H, W) or (N, H, W)): `iou` of
  thresholded masks, intersection over union summed over the whole evaluation set per channel,
  then averaged over channels. Probability maps (every FP32 value within [0, 1]) are thresholded
  at 0.5, other score maps at 0 (the logit of 0.5). Maps with C >= 2 channels that are logits or
  per-pixel distributions over C (softmax segmentation) are compared as argmax class maps: the
  mean IoU over the classes present in either. A mask empty in both counts as IoU 1.
* a user metric (`--metric module:function`): called with the FP32 and candidate outputs as
  {output name: array (N, ...)} and returning {name: number}.

The task (which of these apply) is given, or detected from FP32's outputs (`detect_task`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from shared.errors import EvaluationError, InvalidArgument
from shared.plugins import PluginNotFound, import_function, is_function_path

SQNR_CAP_DB = 200.0
TASKS = ("auto", "classification", "dense", "generic")
PROBABILITY_TOLERANCE = 1e-3      # a row sums to 1 within this to count as a probability distribution
_HUGE = 1e30                      # what NaN/inf in an output count as: always an error, never a match


class MetricError(EvaluationError):
    """A user metric could not be loaded, raised, or returned something that is not {name: number}."""

    step = "metric"


@dataclass(frozen=True)
class AccuracyMetrics:
    top1_agreement: float          # candidate top-1 == FP32 top-1
    top5_agreement: float          # FP32 top-1 within candidate top-5
    top1_accuracy: float | None    # candidate top-1 == label, when labels exist
    num_images: int


@dataclass(frozen=True)
class OutputFidelity:
    """One output's fidelity (report: `outputs[<name>]`; kl/iou only where they apply)."""

    name: str
    sqnr_db: float
    cosine: float
    kl: float | None = None
    iou: float | None = None


@dataclass(frozen=True)
class Fidelity:
    task: str                                  # classification | dense | generic (resolved)
    output_sqnr_db: float
    cosine: float
    kl_divergence: float | None
    iou: float | None
    outputs: tuple[OutputFidelity, ...]
    accuracy: AccuracyMetrics | None           # classification only


# -- classification accuracy (as before) -------------------------------------------------------
def top1(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits).reshape(len(logits), -1).argmax(axis=1)


def accuracy_metrics(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> AccuracyMetrics:
    """Compare (N, classes) logits; agreement is measured against the FP32 model's own predictions."""
    cand = np.asarray(candidate).reshape(len(candidate), -1)
    ref = np.asarray(reference).reshape(len(reference), -1)
    if cand.shape != ref.shape:
        raise EvaluationError(f"candidate output shape {cand.shape} differs from the FP32 reference {ref.shape}")
    if len(cand) == 0:
        raise EvaluationError("no images to evaluate")
    ref_top1 = ref.argmax(axis=1)
    cand_top1 = cand.argmax(axis=1)
    k = min(5, cand.shape[1])
    cand_top5 = np.argpartition(-cand, k - 1, axis=1)[:, :k]
    acc = None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(cand):
            raise EvaluationError(f"{len(labels)} labels for {len(cand)} images")
        acc = float((cand_top1 == labels).mean())
    return AccuracyMetrics(
        top1_agreement=float((cand_top1 == ref_top1).mean()),
        top5_agreement=float((cand_top5 == ref_top1[:, None]).any(axis=1).mean()),
        top1_accuracy=acc,
        num_images=len(cand),
    )


# -- continuous fidelity -----------------------------------------------------------------------
def _finite(array: np.ndarray) -> np.ndarray:
    """float64 with NaN/inf replaced by a huge value, so they count as errors but stay computable."""
    return np.nan_to_num(np.asarray(array, dtype=np.float64), nan=_HUGE, posinf=_HUGE, neginf=-_HUGE)


def _rows(array: np.ndarray) -> np.ndarray:
    return _finite(array).reshape(len(array), -1)


def sqnr_from_sums(signal: float, noise: float) -> float:
    """10 log10(signal / noise), capped to +-SQNR_CAP_DB (see the module docstring)."""
    if not math.isfinite(noise):
        return -SQNR_CAP_DB
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return float(np.clip(10.0 * math.log10(signal / noise), -SQNR_CAP_DB, SQNR_CAP_DB))


def _sums(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    r, c = _rows(ref), _rows(cand)
    with np.errstate(over="ignore"):
        return float(np.sum(r * r)), float(np.sum((r - c) ** 2))


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    return sqnr_from_sums(*_sums(ref, cand))


def sample_cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine similarity per sample of the flattened outputs; 1 when both are all zeros, 0 when one is."""
    r, c = _rows(ref), _rows(cand)
    with np.errstate(over="ignore", invalid="ignore"):
        nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
        dot = np.einsum("ij,ij->i", r, c)
        cos = np.where((nr > 0) & (nc > 0), dot / np.where(nr * nc > 0, nr * nc, 1.0), 0.0)
    cos = np.where((nr == 0) & (nc == 0), 1.0, cos)
    return np.clip(np.nan_to_num(cos, nan=0.0), -1.0, 1.0)


def cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    return float(sample_cosines(ref, cand).mean())


def is_probabilities(array: np.ndarray, axis: int = 1) -> bool:
    """Every value within [0, 1] and every slice along `axis` summing to 1."""
    a = np.asarray(array, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all() or a.min() < -1e-6 or a.max() > 1 + 1e-6:
        return False
    return bool(np.allclose(a.sum(axis=axis), 1.0, atol=PROBABILITY_TOLERANCE))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def kl_divergence(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean over samples of KL(p_ref || p_cand) in nats over the flattened class axis."""
    r, c = _rows(ref), _rows(cand)
    if is_probabilities(r):
        p = r
        q = np.clip(c, 0.0, None)
        total = q.sum(axis=1, keepdims=True)
        q = np.where(total > 0, q / np.where(total > 0, total, 1.0), 1.0 / q.shape[1])
    else:
        p, q = _softmax(r), _softmax(c)
    q = np.clip(q, 1e-12, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return float(max(0.0, terms.sum(axis=1).mean()))


def _channels_first(array: np.ndarray) -> np.ndarray:
    """(N, C, spatial...) with (N, H, W) as one channel."""
    a = _finite(array)
    return a[:, None] if a.ndim == 3 else a.reshape(a.shape[0], a.shape[1], -1)


def dense_iou(ref: np.ndarray, cand: np.ndarray) -> float:
    """IoU of the candidate's masks vs FP32's (rules in the module docstring)."""
    r, c = _channels_first(ref), _channels_first(cand)
    if r.shape[1] >= 2 and (is_probabilities(r, axis=1) or not _within_unit(r)):
        return _class_map_iou(r.argmax(axis=1), c.argmax(axis=1))
    threshold = 0.5 if _within_unit(r) else 0.0
    ious = [_binary_iou(r[:, k] > threshold, c[:, k] > threshold) for k in range(r.shape[1])]
    return float(np.mean(ious))


def _within_unit(array: np.ndarray) -> bool:
    return bool(array.size) and float(array.min()) >= 0.0 and float(array.max()) <= 1.0


def _binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _class_map_iou(a: np.ndarray, b: np.ndarray) -> float:
    classes = np.union1d(np.unique(a), np.unique(b))
    return float(np.mean([_binary_iou(a == k, b == k) for k in classes]))


# -- tasks -------------------------------------------------------------------------------------
def effective_shape(array: np.ndarray) -> tuple[int, ...]:
    """The shape without singleton dims after the sample axis ((N, 1000, 1, 1) -> (N, 1000); whole
    feeds stacked with the model's batch of one, (N, 1, 1000) -> (N, 1000))."""
    shape = tuple(np.shape(array))
    return shape[:1] + tuple(d for d in shape[1:] if d != 1)


def is_class_scores(array: np.ndarray) -> bool:
    shape = effective_shape(array)
    return len(shape) == 2 and shape[1] >= 2


def has_spatial_dims(array: np.ndarray) -> bool:
    return len(effective_shape(array)) >= 3


def detect_task(reference: Mapping[str, np.ndarray]) -> str:
    """classification when the first output is (N, C) scores with C >= 2; dense when an output has
    spatial dims ((N, H, W) or (N, C, H, W)); generic otherwise."""
    first = next(iter(reference.values()))
    if is_class_scores(first):
        return "classification"
    if any(has_spatial_dims(a) for a in reference.values()):
        return "dense"
    return "generic"


def resolve_task(task: str, reference: Mapping[str, np.ndarray]) -> str:
    if task not in TASKS:
        raise InvalidArgument(f"--task {task!r} is not one of {', '.join(TASKS)}")
    resolved = detect_task(reference) if task == "auto" else task
    shapes = ", ".join(f"{n} {list(np.shape(a))}" for n, a in reference.items())
    if resolved == "classification" and np.asarray(next(iter(reference.values()))[0]).size < 2:
        raise InvalidArgument(f"--task classification needs a first output with >= 2 scores per sample "
                              f"(outputs: {shapes})")
    if resolved == "dense" and not any(has_spatial_dims(a) for a in reference.values()):
        raise InvalidArgument(f"--task dense needs an output with spatial dims, (N, H, W) or (N, C, H, W) "
                              f"(outputs: {shapes})")
    return resolved


def fidelity(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], task: str,
             labels: np.ndarray | None = None) -> Fidelity:
    """Every fidelity metric of `candidate` against `reference` ({output name: (N, ...)})."""
    missing = [n for n in reference if n not in candidate]
    if missing:
        raise EvaluationError(f"the candidate has no output {', '.join(map(repr, missing))} "
                              f"(FP32 outputs: {', '.join(reference)})")
    for name, ref in reference.items():
        if np.shape(candidate[name]) != np.shape(ref):
            raise EvaluationError(f"candidate output {name!r} has shape {list(np.shape(candidate[name]))}; "
                                  f"FP32's is {list(np.shape(ref))}")
    task = resolve_task(task, reference)
    per_output, signal, noise, ious = [], 0.0, 0.0, []
    for index, (name, ref) in enumerate(reference.items()):
        cand = candidate[name]
        s, n = _sums(ref, cand)
        signal, noise = signal + s, noise + n
        kl = kl_divergence(ref, cand) if task == "classification" and index == 0 else None
        iou = dense_iou(ref, cand) if task == "dense" and has_spatial_dims(ref) else None
        ious += [iou] if iou is not None else []
        per_output.append(OutputFidelity(name, sqnr_from_sums(s, n), cosine(ref, cand), kl, iou))
    names = list(reference)
    whole_ref = np.concatenate([_rows(reference[n]) for n in names], axis=1)
    whole_cand = np.concatenate([_rows(candidate[n]) for n in names], axis=1)
    first = names[0]
    accuracy = accuracy_metrics(candidate[first], reference[first], labels) if task == "classification" else None
    return Fidelity(task=task, output_sqnr_db=sqnr_from_sums(signal, noise), cosine=cosine(whole_ref, whole_cand),
                    kl_divergence=per_output[0].kl, iou=float(np.mean(ious)) if ious else None,
                    outputs=tuple(per_output), accuracy=accuracy)


# -- user metrics ------------------------------------------------------------------------------
UserMetric = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], Mapping[str, Any]]


def check_metric_path(spec: str) -> str:
    if not is_function_path(spec):
        raise InvalidArgument(f"--metric {spec!r} must name a function as module:function")
    return spec


def load_metric(spec: str) -> UserMetric:
    """The function `module:function`, imported here; a failure is one line naming it."""
    try:
        return import_function(check_metric_path(spec))
    except PluginNotFound as exc:
        raise MetricError(f"--metric {spec}: {exc}") from exc


def user_metrics(spec: str, fn: UserMetric, reference: Mapping[str, np.ndarray],
                 candidate: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The metric's {name: finite number}; anything else is a MetricError naming the bad value."""
    try:
        values = fn(dict(reference), dict(candidate))
    except Exception as exc:  # the user's code: any failure is reported, not raised through
        raise MetricError(f"--metric {spec} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(values, Mapping):
        raise MetricError(f"--metric {spec} returned {_shown(values)}; expected a mapping of names to numbers")
    out = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise MetricError(f"--metric {spec} returned the name {key!r}; names must be non-empty strings")
        number = _number(value)
        if number is None:
            raise MetricError(f"--metric {spec} returned {key}={_shown(value)}, not a finite number")
        out[key] = number
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value)):
        return float(value)
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
