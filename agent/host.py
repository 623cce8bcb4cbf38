"""What an agent tells the coordinator about the machine it measures on."""
from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

from shared.pb.qfarm.v1 import farm_pb2


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: fall back to what platform knows
        text = ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


MAX_FIELD_CHARS = 200     # the coordinator refuses capabilities text over 256 characters


def _clean(text: str) -> str:
    """Printable and short, as the coordinator requires (odd bytes in /proc/cpuinfo never stop an agent)."""
    return "".join(ch for ch in text if ch.isprintable())[:MAX_FIELD_CHARS]


def host_info() -> farm_pb2.HostInfo:
    return farm_pb2.HostInfo(hostname=_clean(socket.gethostname()), cpu_model=_clean(cpu_model()),
                             cores=os.cpu_count() or 0, memory_bytes=memory_bytes(), os=_clean(platform.platform()),
                             arch=_clean(platform.machine()))
