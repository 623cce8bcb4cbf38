"""The agent's job workers: `python -m agent.child --serve`, one long-lived process per slot
(shared/sandbox.py runs it; a crash, timeout or out-of-memory costs one job, never the agent)."""
from __future__ import annotations

from pathlib import Path

from shared.sandbox import ChildOutcome
from shared.sandbox import ChildWorker as SandboxWorker

__all__ = ["ChildOutcome", "ChildWorker"]


class ChildWorker(SandboxWorker):
    def __init__(self, python: str, env: dict[str, str], log_path: Path, memory_limit_mb: int = 0):
        super().__init__(python, env, log_path, memory_limit_mb, module="agent.child")
