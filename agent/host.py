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


def host_info() -> farm_pb2.HostInfo:
    return farm_pb2.HostInfo(hostname=socket.gethostname(), cpu_model=cpu_model(), cores=os.cpu_count() or 0,
                             memory_bytes=memory_bytes(), os=platform.platform(), arch=platform.machine())
