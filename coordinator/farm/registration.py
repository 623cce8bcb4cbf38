"""What the coordinator checks when an agent registers: the protocol it speaks, its device class
key and its name."""
from __future__ import annotations

from coordinator.farm.spec import _DEVICE   # the one rule for device class keys
from shared.errors import FailedPrecondition, InvalidArgument
from shared.version import protocol_mismatch

MAX_AGENT_NAME_CHARS = 256


def check_registration(device: str, name: str, protocol_version: int = 0, package_version: str = "") -> None:
    """Refuse an agent of another protocol (FAILED_PRECONDITION: retrying cannot help), a bad key
    or an overlong name (INVALID_ARGUMENT)."""
    mismatch = protocol_mismatch(protocol_version, package_version)
    if mismatch:
        raise FailedPrecondition(mismatch, step="register")
    if not _DEVICE.match(device or ""):
        raise InvalidArgument(f"device class key {device[:80]!r} is not letters, digits, '.', '_' or '-' "
                              "(1 to 64 characters)", step="register")
    if len(name) > MAX_AGENT_NAME_CHARS:
        raise InvalidArgument(f"agent name of {len(name)} characters is longer than {MAX_AGENT_NAME_CHARS}",
                              step="register")
