"""What the coordinator checks when an agent registers: the protocol it speaks, its device class
key, its name and its capabilities (bounded and printable: fields.py)."""
from __future__ import annotations

from coordinator.farm.fields import check_capabilities, check_text
from coordinator.farm.spec import _DEVICE   # the one rule for device class keys
from shared.errors import FailedPrecondition, InvalidArgument
from shared.pb.qfarm.v1 import farm_pb2
from shared.version import protocol_mismatch

MAX_AGENT_NAME_CHARS = 256
MAX_RUNNING_JOBS = 1024       # jobs one agent may list as running (register, heartbeat)


def check_registration(request: farm_pb2.RegisterRequest) -> None:
    """Refuse an agent of another protocol (FAILED_PRECONDITION: retrying cannot help), a bad key,
    an overlong or unprintable name, or oversize or unprintable capabilities (INVALID_ARGUMENT)."""
    caps = request.capabilities
    mismatch = protocol_mismatch(caps.protocol_version, caps.package_version[:64])
    if mismatch:
        raise FailedPrecondition(mismatch, step="register")
    if not _DEVICE.match(request.device or ""):
        raise InvalidArgument(f"device class key {request.device[:80]!r} is not letters, digits, '.', '_' or '-' "
                              "(1 to 64 characters)", step="register")
    check_text(request.name, "agent name", MAX_AGENT_NAME_CHARS)
    check_running(request.running)
    check_capabilities(caps)


def check_running(running) -> None:
    if len(running) > MAX_RUNNING_JOBS:
        raise InvalidArgument(f"{len(running)} running jobs listed, more than {MAX_RUNNING_JOBS}", step="agent")
