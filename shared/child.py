"""The child side of a sandboxed worker process (shared.sandbox.ChildWorker): the agent's job
workers (`python -m agent.child --serve`) and the coordinator's build workers
(`python -m coordinator.build_child --serve`) both run `serve_main` with their own `answer`.

The worker dies with its parent, caps its own address space (RLIMIT_AS) before taking work when
asked to (`--memory-mb N`), reads request paths one per line on stdin and answers each finished
one with one line on the original stdout; everything else it prints goes to stderr, so a stray
print of a runtime cannot corrupt the protocol."""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Callable

PR_SET_PDEATHSIG = 1

#: `answer(request_path)` returns False when the worker must exit after this answer (e.g. it ran
#: out of memory and its heap is not to be trusted); anything else keeps it serving
Answer = Callable[[Path], "bool | None"]


def die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a SIGKILLed parent (Linux; elsewhere the parent's timeout still applies)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        return
    if os.getppid() != parent_pid:
        os._exit(3)


def limit_memory(megabytes: int) -> None:
    """Cap this process's address space; allocations beyond it fail instead of swapping the host."""
    limit = megabytes << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def serve(parent_pid: int, answer: Answer, memory_mb: int = 0) -> int:
    """Answer request paths from stdin until it closes (or an answer asks to exit)."""
    die_with_parent(parent_pid)
    if memory_mb:
        limit_memory(memory_mb)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                       # stray prints of runtimes cannot corrupt the protocol
    sys.stdout = sys.stderr
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        keep = answer(Path(path))
        sys.stderr.flush()
        protocol.write(f"done {path}\n")
        if keep is False:
            break
    return 0


def serve_main(args: list[str], answer: Answer) -> int | None:
    """`--serve PARENT_PID [--memory-mb N]`: serve and return the exit code; None for other args."""
    if args[:1] != ["--serve"]:
        return None
    memory_mb = int(args[3]) if args[2:3] == ["--memory-mb"] else 0
    return serve(int(args[1]), answer, memory_mb)
