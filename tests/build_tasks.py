"""Tasks for the build pool's tests (`coordinator.buildpool.BuildPool.submit("tests.build_tasks:...")`):
they run in a build worker, which imports this module by name."""
from __future__ import annotations

import os
import signal
import time

from shared import errors


def allocate(megabytes: int) -> int:
    """Touch `megabytes` of memory (a numpy buffer filled with ones); returns its sum."""
    import numpy as np

    block = np.ones(megabytes << 18, dtype=np.float32)
    return int(block.sum())


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail(kind: str, message: str) -> None:
    raise getattr(errors, kind)(message, step="test")


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def pid() -> int:
    return os.getpid()
