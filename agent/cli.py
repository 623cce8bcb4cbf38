"""`agent register --device KEY --coordinator HOST:PORT ...`: join the farm and serve jobs until
SIGTERM/SIGINT, which drains the agent: no new jobs, the running ones get `--drain-timeout` seconds
to finish, then what still runs is handed back and the agent deregisters (a second signal stops it
at once). `agent drain --work-dir DIR` drains a running agent without stopping it (agent/drain.py).

With `--runtime tvm` the agent also starts a TVM RPC tracker (or attaches to one with `--tracker`)
that phones register with under `--rpc-key`; it runs one job per free device of that key. A bad
target or a missing NDK is refused here, before the tracker starts, not at the first job."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from shared.auth import Role, add_client_arguments, credentials_from_args
from shared.errors import InvalidArgument, QfarmError
from shared.latency import add_lock_arguments
from shared.runners.ort_flags import add_ort_optimizer_argument

log = logging.getLogger("agent")

TVM_TRACKER_PORT = 9190
TVM_MAX_JOBS = 8
_TVM_FLAGS = {"tracker_port": "--tracker-port", "tracker": "--tracker", "target": "--target",
              "host_target": "--host-target", "rpc_key": "--rpc-key", "chunk": "--chunk"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent", description="qfarm device agent")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register with a coordinator and serve jobs of one device class")
    reg.add_argument("--device", required=True, help="device class key, e.g. cpu-x86, mali-g68")
    reg.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    reg.add_argument("--runtime", default="ort", help="ort (default), tvm, or a runner factory as module:function")
    reg.add_argument("--slots", type=int, default=None,
                     help=f"jobs measured in parallel (default 1); with --runtime tvm the most jobs at once "
                          f"(default {TVM_MAX_JOBS}), one per free device of the key")
    reg.add_argument("--threads", type=int, default=1, help="runtime threads per job (0 = runtime default)")
    reg.add_argument("--optimization", default="all", help="ORT graph optimization: disable|basic|extended|all")
    add_ort_optimizer_argument(reg)
    reg.add_argument("--work-dir", type=Path, default=None, help="artifact cache and job files "
                     "(default ~/.cache/qfarm/agent-<device>)")
    reg.add_argument("--job-timeout", type=float, default=1800.0, help="seconds before a job counts as hung")
    reg.add_argument("--drain-timeout", type=float, default=30.0,
                     help="on SIGTERM/SIGINT: seconds the running jobs may take to finish before they are handed "
                          "back to the coordinator (keep it below your supervisor's stop timeout)")
    reg.add_argument("--job-memory-mb", type=int, default=os.environ.get("QFARM_JOB_MEMORY_MB") or 0,
                     help="address-space limit (RLIMIT_AS) of each job's worker, MiB; a job above it is reported "
                          "as crash with cause oom (0 = no limit; default $QFARM_JOB_MEMORY_MB)")
    reg.add_argument("--name", default="", help="agent name shown in status (default host/device/work-dir)")
    add_lock_arguments(reg)                                          # --latency-lock, --no-latency-lock
    reg.add_argument("--allow-metric", action="append", default=[], metavar="MODULE:FUNCTION",
                     help="a user metric (--metric of a tune) jobs may run on this agent; the module must be "
                          "importable here (repeatable)")
    reg.add_argument("--runtime-option", action="append", default=[], metavar="KEY=VALUE",
                     help="runtime-specific setting passed to the runtime's factory (repeatable)")
    add_client_arguments(reg, Role.AGENT)                            # --token, --token-file, --tls-ca
    reg.add_argument("-v", "--verbose", action="store_true")
    tvm = reg.add_argument_group("TVM (--runtime tvm), see deploy/android.md")
    tvm.add_argument("--tracker-port", type=int, default=None, metavar="PORT",
                     help=f"start a TVM RPC tracker on this port (default {TVM_TRACKER_PORT}; 0 = a free port, "
                          f"logged)")
    tvm.add_argument("--tracker-bind", default="127.0.0.1", metavar="HOST",
                     help="address the started tracker listens on (0.0.0.0 for phones on Wi-Fi)")
    tvm.add_argument("--tracker", metavar="HOST:PORT", help="attach to a running tracker instead of starting one")
    tvm.add_argument("--target", metavar="JSON", help='TVM target dict, e.g. \'{"kind":"opencl","device":"mali"}\'')
    tvm.add_argument("--host-target", metavar="JSON",
                     help='TVM host target dict, e.g. \'{"kind":"llvm","mtriple":"aarch64-linux-android"}\'')
    tvm.add_argument("--rpc-key", metavar="KEY", help="key the devices register under (default: --device)")
    tvm.add_argument("--chunk", type=int, metavar="N", help="images per remote call (default 8)")
    from agent.drain import add_drain

    add_drain(sub)
    return parser


def parse_options(items: list[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"--runtime-option {item!r} is not KEY=VALUE", step="agent")
        options[key.strip()] = value
    return options


def tvm_extra(args: argparse.Namespace, extra: dict[str, str], work_dir: Path) -> dict[str, str]:
    """The TVM runner's options from the flags (a flag and the same --runtime-option is an error);
    compiled libraries go to the agent's work dir unless cache_dir is set."""
    from agent.runners.tvm import canonical_target

    if "tracker" in extra:
        raise InvalidArgument("give the tracker as --tracker HOST:PORT, not --runtime-option tracker=", step="agent")
    flags = {"rpc_key": args.rpc_key, "target": canonical_target(args.target, "--target"),
             "host": canonical_target(args.host_target, "--host-target"),
             "chunk": None if args.chunk is None else str(args.chunk)}
    out = dict(extra)
    for key, value in flags.items():
        if value is None:
            continue
        if key in extra:
            raise InvalidArgument(f"{key} is given twice: as a flag and as --runtime-option {key}=", step="agent")
        out[key] = value
    out.setdefault("rpc_key", args.device)
    out.setdefault("cache_dir", str(work_dir / "tvm"))
    return out


def open_tracker(args: argparse.Namespace):
    """The agent's tracker: attached to --tracker, or started on --tracker-bind:--tracker-port."""
    from agent.tvm_tracker import TrackerAddress, TvmTracker

    if args.tracker:
        if args.tracker_port is not None:
            raise InvalidArgument("give either --tracker HOST:PORT (attach) or --tracker-port PORT (start one)",
                                  step="agent")
        return TvmTracker.attach(TrackerAddress.parse(args.tracker))
    port = TVM_TRACKER_PORT if args.tracker_port is None else args.tracker_port
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"--tracker-port {port} is not a TCP port (0 to 65535; 0 picks a free one)", step="agent")
    return TvmTracker.start(args.tracker_bind, port)


def local_address(tracker) -> str:
    """How this host reaches the tracker (a wildcard bind is reached on loopback)."""
    host = tracker.address.host
    return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{tracker.address.port}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "drain":
        return args.func(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s agent %(levelname)s %(message)s", stream=sys.stderr)
    from agent.runtimes import RuntimeOptions, make_runner
    from agent.worker import Agent, AgentConfig

    tracker = None
    try:
        try:
            extra = parse_options(args.runtime_option)
            work_dir = args.work_dir or Path.home() / ".cache" / "qfarm" / f"agent-{args.device}"
            devices = None
            slots = args.slots
            if args.runtime == "tvm":
                from agent.tvm_tracker import DeviceSlots

                extra = tvm_extra(args, extra, work_dir)
                make_runner(RuntimeOptions(runtime="tvm", extra=extra))   # bad target / no NDK: refused now
                tracker = open_tracker(args)
                extra["tracker"] = local_address(tracker)
                devices = DeviceSlots(tracker, extra["rpc_key"])
                slots = TVM_MAX_JOBS if slots is None else slots
                log.info("TVM tracker %s %s: devices register with --tracker=%s --key=%s",
                         "started on" if tracker.owned else "attached at", tracker.address, tracker.address,
                         extra["rpc_key"])
            else:
                given = [flag for name, flag in _TVM_FLAGS.items() if getattr(args, name) is not None]
                if given:
                    raise InvalidArgument(f"{', '.join(given)} only apply to --runtime tvm", step="agent")
            config = AgentConfig(device=args.device, coordinator=args.coordinator, work_dir=work_dir,
                                 runtime=RuntimeOptions(runtime=args.runtime, threads=args.threads,
                                                        optimization=args.optimization, extra=extra,
                                                        disabled_optimizers=tuple(args.ort_disable_optimizers)),
                                 slots=1 if slots is None else slots, job_timeout_s=args.job_timeout,
                                 name=args.name, credentials=credentials_from_args(args, role=Role.AGENT),
                                 job_memory_mb=args.job_memory_mb, drain_timeout_s=args.drain_timeout,
                                 latency_lock=args.latency_lock, allowed_metrics=tuple(args.allow_metric))
            agent = Agent(config, devices)
        except QfarmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        stopping = threading.Event()

        def on_signal(signum, frame):   # the first drains (on a thread: never block the handler), a second stops
            name = signal.Signals(signum).name
            if not stopping.is_set():
                log.info("%s: draining for up to %g s, then stopping", name, config.drain_timeout_s)
                stopping.set()
                threading.Thread(target=agent.stop_gracefully, name="drain", daemon=True).start()
            else:
                log.info("%s again: stopping now", name)
                agent.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("agent %s for %s serving %s", config.agent_name(), config.device, config.coordinator)
        agent.run()
        if agent.fatal:
            print(f"error: {agent.fatal}", file=sys.stderr)
            return 2
        return 0
    finally:
        if tracker is not None:
            tracker.close()


if __name__ == "__main__":
    sys.exit(main())
