"""What a device reports for one job, typed: a frozen `DeviceResult` (status, `CrashCause`,
accuracy and fidelity against FP32, size, latency interleaved with FP32, the runtime that
measured it) and exactly one conversion each way for each of its forms:

* the wire (qfarm.v1.DeviceResult): `to_proto` / `from_proto`, derived from the field names, so
  a new metric is one dataclass field here plus one proto field of the same name;
* the job worker's result.json: `to_json` / `from_dict`;
* report.json (`candidates[].results[<device>]`, and the `fp32` section): `to_report` /
  `to_fp32_report` / `from_dict`. Reports only ever gain keys: a field that is None is left out.

A crash cause travels and is reported as text ("signal:SIGSEGV", "oom", "lost:5 leases ...");
`CrashCause.parse` reads it back, so old reports and agents keep working."""
from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from shared.metrics import OutputFidelity
from shared.runners.base import RunnerInfo


class ResultStatus(str, Enum):
    OK = "ok"
    CRASH = "crash"
    UNSUPPORTED = "unsupported"     # the runtime cannot load the model at all (an op it lacks)


class CrashKind(str, Enum):
    ERROR = "error"                 # the runtime raised; detail: its message
    OOM = "oom"                     # the job ran out of memory (its --job-memory-mb limit, or the host's)
    SIGNAL = "signal"               # the job's worker died of a signal; detail: its name (SIGSEGV)
    TIMEOUT = "timeout"             # the job ran past the agent's --job-timeout
    CANCELLED = "cancelled"         # the coordinator took the job back (never reported as a result)
    LOST = "lost"                   # leases kept ending without a result (the infrastructure, not the model)
    BUILD = "build"                 # the coordinator could not build the candidate
    NOT_MEASURED = "not measured"   # the tuner's budget ran out before it was measured
    METRIC = "metric"               # the user's --metric failed or returned something that is not numbers


#: kinds that say nothing about how a device runs quantized nodes: never blamed on a node
_NOT_THE_DEVICE = frozenset({CrashKind.LOST, CrashKind.BUILD, CrashKind.NOT_MEASURED, CrashKind.METRIC})
_SEPARATOR = {CrashKind.NOT_MEASURED: ": "}     # "not measured: budget ...", every other kind "kind:detail"
# how running out of memory reads in Python, numpy, onnxruntime (BFC arena), C++ and libc
OOM_PATTERN = re.compile(r"MemoryError|bad_alloc|Failed to allocate memory|Cannot allocate memory|out of memory",
                         re.IGNORECASE)


def is_oom(text: str) -> bool:
    return bool(OOM_PATTERN.search(text or ""))


@dataclass(frozen=True)
class CrashCause:
    kind: CrashKind
    detail: str = ""

    def __str__(self) -> str:
        if not self.detail:
            return self.kind.value
        return f"{self.kind.value}{_SEPARATOR.get(self.kind, ':')}{self.detail}"

    @classmethod
    def parse(cls, text: str) -> "CrashCause":
        """The inverse of str(); text of no known kind is an error with that text as detail."""
        for kind in CrashKind:
            if text == kind.value:
                return cls(kind)
            separator = _SEPARATOR.get(kind, ":")
            if text.startswith(kind.value + separator):
                return cls(kind, text[len(kind.value) + len(separator):])
        return cls(CrashKind.ERROR, text)

    @classmethod
    def from_exception(cls, exc: BaseException, message: str | None = None) -> "CrashCause":
        """`oom` when the exception (or its message) says memory ran out, else an error."""
        text = str(exc) if message is None else message
        return cls(CrashKind.OOM) if isinstance(exc, MemoryError) or is_oom(text) else cls(CrashKind.ERROR, text)

    @property
    def blameable(self) -> bool:
        """Whether the device's handling of quantized nodes may explain it (not a lost lease, a
        failed build or a probe the budget never measured)."""
        return self.kind not in _NOT_THE_DEVICE


def _when(status: str, *, keep_none: bool = False, digits: int | None = None, keyed: str | None = None) -> dict:
    """Field metadata for the report: reported for `ok` results, `failed` ones or `always`;
    None is left out unless `keep_none`; floats rounded to `digits`; a tuple of dataclasses
    `keyed` by one of their fields is a JSON object by that field (None members left out)."""
    return {"when": status, "keep_none": keep_none, "digits": digits, "keyed": keyed}


@dataclass(frozen=True)
class DeviceResult:
    """One job's outcome on one device class. Metrics are None when not measured."""

    status: ResultStatus
    crash_cause: CrashCause | None = field(default=None, metadata=_when("failed"))
    stderr_tail: str | None = field(default=None, metadata=_when("failed"))
    top1_agreement: float | None = field(default=None, metadata=_when("ok"))   # top-1 == FP32 top-1
    top5_agreement: float | None = field(default=None, metadata=_when("ok"))   # FP32 top-1 in the top-5
    top1_accuracy: float | None = field(default=None, metadata=_when("ok", keep_none=True))  # vs labels
    size_bytes: int = field(default=0, metadata=_when("always"))
    latency_ms_p50: float | None = field(default=None, metadata=_when("ok"))     # batch 1, interleaved with FP32
    latency_ms_p90: float | None = field(default=None, metadata=_when("ok"))
    fp32_latency_ms_p50: float | None = field(default=None, metadata=_when("ok"))  # FP32, same job and options
    latency_ratio_vs_fp32: float | None = field(default=None, metadata=_when("ok"))  # median of per-pair ratios
    latency_ratio_p10: float | None = field(default=None, metadata=_when("ok"))    # spread of those ratios
    latency_ratio_p90: float | None = field(default=None, metadata=_when("ok"))
    task: str | None = field(default=None, metadata=_when("ok"))        # classification | dense | generic
    output_sqnr_db: float | None = field(default=None, metadata=_when("ok"))       # all outputs, capped +-200
    cosine: float | None = field(default=None, metadata=_when("ok"))               # mean per-sample cosine
    kl_divergence: float | None = field(default=None, metadata=_when("ok"))        # classification outputs
    iou: float | None = field(default=None, metadata=_when("ok"))                  # dense outputs
    outputs: tuple[OutputFidelity, ...] | None = field(default=None, metadata=_when("ok", keyed="name"))
    user_metrics: Mapping[str, float] | None = field(default=None, metadata=_when("ok"))  # --metric
    num_images: int | None = field(default=None, metadata=_when("always"))
    wall_seconds: float | None = field(default=None, metadata=_when("always", digits=3))
    runtime: RunnerInfo | None = field(default=None, metadata=_when("always"))
    attempt: int | None = field(default=None, metadata=_when("always"))       # the lease that measured it (farm)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", ResultStatus(self.status))
        if isinstance(self.crash_cause, str):
            object.__setattr__(self, "crash_cause", CrashCause.parse(self.crash_cause) if self.crash_cause else None)

    @property
    def ok(self) -> bool:
        return self.status == ResultStatus.OK

    @property
    def latency_ratio_spread(self) -> tuple[float, float] | None:
        """[p10, p90] of the per-pair candidate/FP32 ratios (the report has them as two keys)."""
        if self.latency_ratio_p10 is None or self.latency_ratio_p90 is None:
            return None
        return self.latency_ratio_p10, self.latency_ratio_p90

    @property
    def blameable(self) -> bool:
        """A failure the device's handling of quantized nodes may explain (see CrashCause.blameable)."""
        return not self.ok and (self.crash_cause is None or self.crash_cause.blameable)

    def replace(self, **changes: Any) -> "DeviceResult":
        return dataclasses.replace(self, **changes)

    @classmethod
    def failure(cls, cause: CrashCause, size_bytes: int = 0, *, unsupported: bool = False,
                stderr_tail: str | None = None) -> "DeviceResult":
        status = ResultStatus.UNSUPPORTED if unsupported else ResultStatus.CRASH
        return cls(status, crash_cause=cause, size_bytes=size_bytes, stderr_tail=stderr_tail)

    # -- report.json ---------------------------------------------------------------------------
    def to_report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status.value}
        for f in _FIELDS[1:]:
            when, value = f.metadata["when"], getattr(self, f.name)
            if (when == "ok" and not self.ok) or (when == "failed" and self.ok):
                continue
            if value is None and not f.metadata["keep_none"]:
                continue
            value = _plain_field(f, value)
            if f.metadata["digits"] is not None and value is not None:
                value = round(value, f.metadata["digits"])
            out[f.name] = value
        return out

    def to_fp32_report(self) -> dict[str, Any]:
        """The report's `fp32[<device>]` entry: the reference model's own numbers."""
        return {k: v for k, v in self.to_report().items() if k in FP32_REPORT_KEYS}

    # -- result.json ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {f.name: _plain_field(f, getattr(self, f.name)) for f in _FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeviceResult":
        """From `to_json` or `to_report` output (an old report's too); unknown keys are ignored."""
        values: dict[str, Any] = {}
        for f in _FIELDS:
            if f.name not in data:
                continue
            value, kind = data[f.name], _TYPES[f.name]
            if value is not None:
                if kind is CrashCause:
                    value = CrashCause.parse(value) if value else None
                elif f.metadata.get("keyed"):
                    value = _unkeyed(f, value)
                elif dataclasses.is_dataclass(kind):
                    value = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            values[f.name] = value
        return cls(**values)

    # -- the wire ------------------------------------------------------------------------------
    def to_proto(self, **identity: Any):
        """qfarm.v1.DeviceResult; `identity` sets the job's fields (job_id, attempt, candidate_id, device)."""
        from shared.pb.qfarm.v1 import job_pb2

        message = job_pb2.DeviceResult(**identity)
        for f in _FIELDS:
            value = getattr(self, f.name)
            if value is not None:
                _to_message(message, f.name, value)
        return message

    @classmethod
    def from_proto(cls, message) -> "DeviceResult":
        values = {}
        for f in _FIELDS:
            descriptor = message.DESCRIPTOR.fields_by_name[f.name]
            if descriptor.has_presence and descriptor.message_type is None and not message.HasField(f.name):
                continue            # an `optional` scalar that was not set (unlabelled top-1)
            value = _from_message(getattr(message, f.name), _TYPES[f.name], descriptor)
            if f.default is None and isinstance(value, (tuple, dict)) and not value:
                value = None        # an empty repeated field or map: not measured
            values[f.name] = value
        return cls(**values)


_FIELDS = dataclasses.fields(DeviceResult)


def status_of(message) -> ResultStatus:
    """A qfarm.v1.DeviceResult's status, read as `DeviceResult.from_proto` reads it (KeyError when
    it is no ResultStatus), without converting the rest (the coordinator's per-result path)."""
    return _from_message(message.status, ResultStatus, message.DESCRIPTOR.fields_by_name["status"])


@functools.cache
def _field_types(kind: type) -> dict[str, type]:
    """A dataclass's field types, Optional unwrapped; once per class (typing.get_type_hints is
    slow, and results are converted on the coordinator's hot path, once per reported result)."""
    return {name: next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
            for name, hint in typing.get_type_hints(kind).items()}


_TYPES = _field_types(DeviceResult)
FP32_REPORT_KEYS = ("status", "top1_accuracy", "size_bytes", "latency_ms_p50", "latency_ms_p90", "num_images",
                    "runtime", "fp32_latency_ms_p50", "latency_ratio_vs_fp32", "latency_ratio_p10", "latency_ratio_p90",
                    "task")


def _element_type(f: dataclasses.Field) -> type:
    """The dataclass of a `tuple[X, ...]` field."""
    return typing.get_args(_TYPES[f.name])[0]


def _plain_field(f: dataclasses.Field, value: Any) -> Any:
    key = f.metadata.get("keyed")
    if not key or value is None:
        return _plain(value)
    return {getattr(item, key): {k: v for k, v in _plain(item).items() if k != key and v is not None}
            for item in value}


def _unkeyed(f: dataclasses.Field, value: Mapping[str, Any]) -> tuple:
    kind, key = _element_type(f), f.metadata["keyed"]
    return tuple(kind(**{key: name, **fields}) for name, fields in value.items())


def _plain(value: Any) -> Any:
    """JSON-ready: enums by value, causes as text, nested dataclasses as dicts, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, CrashCause):
        return str(value)
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _enum_prefix(enum_type) -> str:
    """qfarm.v1.ResultStatus values are RESULT_STATUS_<NAME>."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type.name).upper() + "_"


def _to_message(message, name: str, value: Any) -> None:
    descriptor = message.DESCRIPTOR.fields_by_name[name]
    if descriptor.enum_type is not None:
        setattr(message, name, descriptor.enum_type.values_by_name[_enum_prefix(descriptor.enum_type)
                                                                   + value.name].number)
    elif isinstance(value, CrashCause):
        setattr(message, name, str(value))
    elif dataclasses.is_dataclass(value):
        nested = getattr(message, name)
        for f in dataclasses.fields(value):
            _to_message(nested, f.name, getattr(value, f.name))
    elif isinstance(value, Mapping):
        getattr(message, name).update(value)
    elif isinstance(value, (tuple, list)) and value and dataclasses.is_dataclass(value[0]):
        repeated = getattr(message, name)
        for item in value:
            nested = repeated.add()
            for f in dataclasses.fields(item):
                if getattr(item, f.name) is not None:
                    _to_message(nested, f.name, getattr(item, f.name))
    elif isinstance(value, (tuple, list)):
        getattr(message, name).extend(value)
    else:
        setattr(message, name, value)


def _from_message(value: Any, kind: type, descriptor) -> Any:
    if descriptor.enum_type is not None:
        return kind[descriptor.enum_type.values_by_number[value].name.removeprefix(_enum_prefix(descriptor.enum_type))]
    if kind is CrashCause:
        return CrashCause.parse(value) if value else None
    if dataclasses.is_dataclass(kind):
        return _dataclass_from_message(value, kind)
    if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
        return dict(value)
    if descriptor.is_repeated and descriptor.message_type is not None:
        element = typing.get_args(kind)[0]
        return tuple(_dataclass_from_message(item, element) for item in value)
    if descriptor.is_repeated:
        return tuple(value)
    return value


def _dataclass_from_message(message, kind: type) -> Any:
    """A nested dataclass; an `optional` field that was not set stays None."""
    types = _field_types(kind)
    values = {}
    for f in dataclasses.fields(kind):
        descriptor = message.DESCRIPTOR.fields_by_name[f.name]
        if descriptor.has_presence and descriptor.message_type is None and not message.HasField(f.name):
            continue
        values[f.name] = _from_message(getattr(message, f.name), types[f.name], descriptor)
    return kind(**values)


def runtime_message(info: RunnerInfo):
    """qfarm.v1.RuntimeInfo of a runner (an agent's capabilities at registration)."""
    from shared.pb.qfarm.v1 import job_pb2

    message = job_pb2.RuntimeInfo()
    for f in dataclasses.fields(info):
        _to_message(message, f.name, getattr(info, f.name))
    return message


def runtime_summary(runtime: Any) -> str | None:
    """How a device ran a model, in one line ("onnxruntime 1.32.0 graph_optimization=all threads=1
    disabled_optimizers=WeightBiasQuantization"), from a report's `runtime` dict; None without one."""
    if not isinstance(runtime, Mapping) or not runtime.get("runtime"):
        return None
    return " ".join(str(runtime[k]) for k in ("runtime", "version", "options") if runtime.get(k))
