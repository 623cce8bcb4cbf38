"""Bounds on what agents send, field by field: text short and printable (no ANSI escapes, no
newlines, no invisible format characters where a terminal shows it), numbers finite and in range,
lists short. Messages are walked through their descriptors, so a field added to the wire contract
later is bounded too (text by the default length, numbers finite)."""
from __future__ import annotations

import math
import unicodedata
from typing import Mapping

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from shared.artifacts import check_sha
from shared.auth import AgentIdentity
from shared.errors import InvalidArgument, PermissionDenied
from shared.pb.qfarm.v1 import farm_pb2, job_pb2

MAX_TEXT_CHARS = 256                 # names, host and runtime fields
MAX_CAPABILITIES_BYTES = 4096        # a whole AgentCapabilities message
MAX_LIST_ITEMS = 64                  # repeated fields of capabilities (e.g. runtime providers)
MAX_SLOTS = 1024
#: text of a result: a crash cause is a line, a stderr tail a bounded block (newlines and tabs kept)
RESULT_TEXT_CHARS = {"crash_cause": 4096, "stderr_tail": 65536}
#: the result numbers whose range is known; other floating-point fields must not be NaN, and only
#: the dB ones (an SQNR of identical outputs is +inf) may be infinite
RESULT_RANGES: Mapping[str, tuple[float, float]] = {
    "top1_agreement": (0.0, 1.0), "top5_agreement": (0.0, 1.0), "top1_accuracy": (0.0, 1.0),
    "latency_ms_p50": (0.0, math.inf), "latency_ms_p90": (0.0, math.inf), "wall_seconds": (0.0, math.inf),
    "fp32_latency_ms_p50": (0.0, math.inf), "latency_ratio_vs_fp32": (0.0, math.inf),
    "latency_ratio_p10": (0.0, math.inf), "latency_ratio_p90": (0.0, math.inf),
    "cosine": (-1.0, 1.0), "iou": (0.0, 1.0), "kl_divergence": (0.0, math.inf), "kl": (0.0, math.inf),
}
MAX_RESULT_ITEMS = 1024              # per-output entries and user metrics of one result
_TEXT_TYPES = (FieldDescriptor.TYPE_STRING,)
_FLOAT_TYPES = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


def _bad_char(text: str, multiline: bool) -> str | None:
    if text.isascii() and text.isprintable():     # the common case, exactly: ASCII 0x20-0x7e
        return None
    for ch in text:
        if multiline and ch in "\n\t":
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") or ch in "\u2028\u2029":
            return ch
    return None


def check_text(value: str, what: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """A short printable line: refused (naming the field and the character) otherwise."""
    if len(value) > max_chars:
        raise InvalidArgument(f"{what} has {len(value)} characters, more than {max_chars}", step="input")
    bad = _bad_char(value, multiline=False)
    if bad is not None:
        raise InvalidArgument(f"{what} contains the control or format character {bad!r} (escape sequences, "
                              "newlines and invisible characters are not allowed)", step="input")
    return value


def sanitized(value: str) -> str:
    """Free text (a stderr tail) made safe to print: control and format characters other than
    newline and tab become U+FFFD."""
    if _bad_char(value, multiline=True) is None:
        return value
    return "".join(ch if ch in "\n\t" or _bad_char(ch, multiline=True) is None else "\ufffd" for ch in value)


def _values(fd: FieldDescriptor, value) -> list:
    return list(value) if fd.is_repeated else [value]


def check_capabilities(caps: farm_pb2.AgentCapabilities) -> None:
    size = caps.ByteSize()
    if size > MAX_CAPABILITIES_BYTES:
        raise InvalidArgument(f"agent capabilities take {size} bytes, more than {MAX_CAPABILITIES_BYTES}",
                              step="register")
    if not 0 <= caps.slots <= MAX_SLOTS:
        raise InvalidArgument(f"capabilities.slots={caps.slots} must be between 0 and {MAX_SLOTS} (0: one)",
                              step="register")
    _walk(caps, "capabilities")


def _walk(message: Message, where: str) -> None:
    for fd, value in message.ListFields():
        name = f"{where}.{fd.name}"
        items = _values(fd, value)
        if fd.is_repeated and len(items) > MAX_LIST_ITEMS:
            raise InvalidArgument(f"{name} has {len(items)} entries, more than {MAX_LIST_ITEMS}", step="register")
        for item in items:
            if fd.type in _TEXT_TYPES:
                check_text(item, name)
            elif fd.type in _FLOAT_TYPES and not math.isfinite(item):
                raise InvalidArgument(f"{name}={item} is not a finite number", step="register")
            elif fd.message_type is not None:
                _walk(item, name)
            elif fd.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64) and item < 0:
                raise InvalidArgument(f"{name}={item} must be >= 0", step="register")


def check_claim(agent: AgentIdentity, claimed: str) -> None:
    """A request that names another agent than the one its call proves is refused."""
    if claimed and claimed != agent.agent_id:
        raise PermissionDenied(f"the request names agent {claimed[:64]!r} but proves agent {agent.agent_id!r}",
                               step="agent")


def check_report(request: farm_pb2.ReportResultRequest, agent: AgentIdentity) -> tuple[job_pb2.DeviceResult, str]:
    """A result report, by ReportResult or on the Work stream: the checked result to record and
    its FP32 outputs' sha256 ("" when none)."""
    check_claim(agent, request.agent_id)
    result = check_result(request.result)
    return result, check_sha(request.fp32_outputs.sha256) if request.fp32_outputs.sha256 else ""


def check_result(result: job_pb2.DeviceResult) -> job_pb2.DeviceResult:
    """A result's numbers in range and its text bounded, per-output entries and user metrics
    included; the text made safe to print. Returns the (possibly sanitised) copy to record."""
    clean = job_pb2.DeviceResult()
    clean.CopyFrom(result)
    _check_result_fields(clean, "result")
    return clean


def _check_number(name: str, where: str, item: float) -> None:
    low, high = RESULT_RANGES.get(name, (-math.inf, math.inf))
    infinite_ok = name not in RESULT_RANGES and name.endswith("_db")
    if math.isnan(item) or (math.isinf(item) and not infinite_ok) or not low <= item <= high:
        bounds = "a finite number" if name not in RESULT_RANGES else f"between {low:g} and {high:g}"
        raise InvalidArgument(f"{where}={item} must be {bounds}", step="result")


def _check_result_fields(message: Message, where: str) -> None:
    """Check (and sanitise, in place) one result message and the messages and maps inside it."""
    for fd, value in message.ListFields():
        name = f"{where}.{fd.name}"
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            if len(value) > MAX_RESULT_ITEMS:
                raise InvalidArgument(f"{name} has {len(value)} entries, more than {MAX_RESULT_ITEMS}", step="result")
            for key, item in value.items():
                check_text(key, f"{name} key", MAX_TEXT_CHARS)
                if isinstance(item, float):
                    _check_number("", f"{name}[{key!r}]", item)
        elif fd.message_type is not None:
            items = _values(fd, value)
            if len(items) > MAX_RESULT_ITEMS:
                raise InvalidArgument(f"{name} has {len(items)} entries, more than {MAX_RESULT_ITEMS}", step="result")
            for index, item in enumerate(items):
                if fd.message_type.full_name == job_pb2.RuntimeInfo.DESCRIPTOR.full_name:
                    _walk(item, name)
                else:
                    _check_result_fields(item, f"{name}[{index}]" if fd.is_repeated else name)
        elif fd.type in _FLOAT_TYPES:
            for item in _values(fd, value):
                _check_number(fd.name, name, item)
        elif fd.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64):
            if any(item < 0 for item in _values(fd, value)):
                raise InvalidArgument(f"{name}={value} must be >= 0", step="result")
        elif fd.type in _TEXT_TYPES and not fd.is_repeated:
            limit = RESULT_TEXT_CHARS.get(fd.name, MAX_TEXT_CHARS)
            if len(value) > limit:
                raise InvalidArgument(f"{name} has {len(value)} characters, more than {limit}", step="result")
            setattr(message, fd.name, sanitized(value))
