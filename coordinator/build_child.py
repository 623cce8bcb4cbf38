"""A build worker: `python -m coordinator.build_child --serve PARENT_PID [--memory-mb N]`, started
by coordinator/buildpool.py. Each request (a pickle written by the coordinator) names a function
and its arguments; the answer, `<out>/answer.json`, is its JSON return value, the typed error it
raised, or the crash (`oom`) that ended it, plus the log records (warnings and up) the task
emitted, which the coordinator logs again as its own (so `coordinator tune` still files
onnxruntime's warnings in third-party.log). After running out of memory the worker exits: its
heap is not trusted with the next task, and the pool starts a fresh one."""
from __future__ import annotations

import json
import logging
import pickle
import sys
import traceback
from pathlib import Path

from shared.atomic import atomic_write_text
from shared.child import serve_main
from shared.errors import QfarmError
from shared.results import CrashCause, CrashKind, is_oom


MAX_RECORDS = 200      # log records one answer carries back


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < MAX_RECORDS:
            self.records.append({"name": record.name, "level": record.levelno, "message": record.getMessage()[:2000]})


def answer(request_path: Path) -> bool:
    """Run one request; False (exit after answering) when it ran out of memory."""
    root = logging.getLogger()
    records = _Records()
    root.addHandler(records)
    try:
        reply, keep_serving = _run(request_path)
    finally:
        root.removeHandler(records)
    reply["log"] = records.records
    atomic_write_text(Path(reply.pop("out")) / "answer.json", json.dumps(reply))
    return keep_serving


def _run(request_path: Path) -> tuple[dict, bool]:
    from coordinator.buildpool import run_task

    request = pickle.loads(Path(request_path).read_bytes())
    out = Path(request["out"])
    keep_serving = True
    try:
        reply = {"value": run_task(request)}
    except QfarmError as exc:
        cause = exc.__cause__
        if isinstance(cause, MemoryError) or is_oom(str(exc)):
            reply, keep_serving = _oom(exc), False
        else:
            reply = {"error": {"type": type(exc).__name__, "message": exc.args[0], "step": exc.step}}
    except MemoryError as exc:
        reply, keep_serving = _oom(exc), False
    except Exception as exc:  # noqa: BLE001 - a bug or a library's plain exception: the task's error, with its trace
        traceback.print_exc()
        if is_oom(str(exc)):
            reply, keep_serving = _oom(exc), False
        else:
            reply = {"error": {"type": "QfarmError", "message": f"{type(exc).__name__}: {exc}", "step": "build"}}
    return {**reply, "out": str(out)}, keep_serving


def _oom(exc: BaseException) -> dict:
    print(f"out of memory: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"crash": str(CrashCause(CrashKind.OOM)), "stderr": f"{type(exc).__name__}: {str(exc)[:500]}"}


def prefer_to_be_killed() -> None:
    """If the host runs out of memory anyway (several workers near their limit), the kernel's
    OOM killer takes a build worker (its task fails with signal:SIGKILL), not the coordinator."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError as exc:   # not Linux, or not allowed: the address-space limit still applies
        print(f"cannot raise oom_score_adj: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    prefer_to_be_killed()
    served = serve_main(args, answer)
    if served is None:
        print("usage: python -m coordinator.build_child --serve PARENT_PID [--memory-mb N]", file=sys.stderr)
        return 2
    return served


if __name__ == "__main__":
    sys.exit(main())
