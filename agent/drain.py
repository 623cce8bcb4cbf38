"""Draining an agent: it stops leasing new jobs and lets the ones it runs finish.

Two ways in, one behaviour (agent.worker.Agent.drain):
* SIGTERM (systemd stop, `docker stop`, Kubernetes): drain, wait up to `--drain-timeout` for the
  running jobs, then hand back whatever still runs (deregistering re-queues it at once, so no job
  waits for its lease to expire) and exit. A second SIGTERM/SIGINT stops at once.
* `agent drain --work-dir DIR` (a Kubernetes preStop hook, or by hand before maintenance): asks the
  agent serving DIR to drain through a request file, and waits until it runs nothing. The agent
  stays registered and idle until it is stopped; `agent drain --cancel` lets it lease again.

The agent publishes what it runs in `DIR/agent-state.json` (pid, draining, running job ids),
which is how the command knows when the drain is over."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from shared.atomic import atomic_output

DRAIN_FILE = "drain"                 # its presence asks the agent serving the work dir to drain
STATE_FILE = "agent-state.json"      # written by the agent whenever what it runs changes


def write_state(work_dir: Path, state: dict) -> None:
    """Atomically (a reader never sees half a file); not synced: it describes a live process only."""
    with atomic_output(Path(work_dir) / STATE_FILE, fsync=False) as tmp:
        tmp.write_text(json.dumps(state))


def read_state(work_dir: Path) -> dict | None:
    try:
        return json.loads((Path(work_dir) / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's process: it exists
        return True
    return True


def drained(state: dict | None) -> str | None:
    """Why the agent of this state is done draining (None: not yet)."""
    if state is None:
        return "no agent has served this work dir"
    if state.get("stopped") or not _alive(int(state["pid"])):
        return "the agent has stopped"
    if state.get("draining") and not state.get("running"):
        return "the agent is drained: it runs no job and leases none"
    return None


def wait_drained(work_dir: Path, timeout: float, poll: float = 0.2,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> \
        tuple[str | None, dict | None]:
    """(why it is drained or None on timeout, the last state read)."""
    deadline = clock() + timeout
    while True:
        state = read_state(work_dir)
        why = drained(state)
        if why or clock() >= deadline:
            return why, state
        sleep(poll)


def add_drain(sub) -> None:
    p = sub.add_parser("drain", help="make the agent serving a work dir stop leasing and finish its jobs")
    p.add_argument("--work-dir", type=Path, required=True, help="the --work-dir of the agent to drain")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for its running jobs (exit 1 if some still run then)")
    p.add_argument("--cancel", action="store_true", help="let a drained agent lease jobs again")
    p.set_defaults(func=cmd_drain)


def cmd_drain(args: argparse.Namespace) -> int:
    request = Path(args.work_dir) / DRAIN_FILE
    if args.cancel:
        request.unlink(missing_ok=True)
        print(f"drain of {args.work_dir} cancelled: the agent leases again")
        return 0
    if read_state(args.work_dir) is None:
        print(f"error: no agent has served {args.work_dir} (no {STATE_FILE})", file=sys.stderr)
        return 2
    request.touch()
    why, state = wait_drained(args.work_dir, args.timeout)
    if why:
        print(f"{args.work_dir}: {why}")
        return 0
    running = ", ".join((state or {}).get("running", [])) or "?"
    print(f"{args.work_dir}: still running {running} after {args.timeout:g} s; stopping the agent hands "
          f"{'it' if running.count(',') == 0 else 'them'} back", file=sys.stderr)
    return 1
