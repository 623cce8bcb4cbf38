"""What the coordinator checks when an agent registers: its device class key and name."""
from __future__ import annotations

from coordinator.farm.spec import _DEVICE   # the one rule for device class keys
from shared.errors import InvalidArgument

MAX_AGENT_NAME_CHARS = 256


def check_registration(device: str, name: str) -> None:
    if not _DEVICE.match(device or ""):
        raise InvalidArgument(f"device class key {device[:80]!r} is not letters, digits, '.', '_' or '-' "
                              "(1 to 64 characters)", step="register")
    if len(name) > MAX_AGENT_NAME_CHARS:
        raise InvalidArgument(f"agent name of {len(name)} characters is longer than {MAX_AGENT_NAME_CHARS}",
                              step="register")
