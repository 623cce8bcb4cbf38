"""`agent register --device KEY --coordinator HOST:PORT ...`: join the farm and serve jobs until
SIGINT/SIGTERM, then stop running jobs and deregister."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from shared.errors import QfarmError

log = logging.getLogger("agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent", description="qfarm device agent")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register with a coordinator and serve jobs of one device class")
    reg.add_argument("--device", required=True, help="device class key, e.g. cpu-x86, mali-g68")
    reg.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    reg.add_argument("--runtime", default="ort", help="ort (default) or tvm")
    reg.add_argument("--slots", type=int, default=1, help="jobs measured in parallel (default 1)")
    reg.add_argument("--threads", type=int, default=1, help="runtime threads per job (0 = runtime default)")
    reg.add_argument("--optimization", default="all", help="ORT graph optimization: disable|basic|extended|all")
    reg.add_argument("--work-dir", type=Path, default=None, help="artifact cache and job files "
                     "(default ~/.cache/qfarm/agent-<device>)")
    reg.add_argument("--job-timeout", type=float, default=1800.0, help="seconds before a job counts as hung")
    reg.add_argument("--name", default="", help="agent name shown in status (default host/device/work-dir)")
    reg.add_argument("--runtime-option", action="append", default=[], metavar="KEY=VALUE",
                     help="runtime-specific setting passed to the runtime's factory (repeatable)")
    reg.add_argument("-v", "--verbose", action="store_true")
    return parser


def parse_options(items: list[str]) -> dict[str, str]:
    from shared.errors import InvalidArgument

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"--runtime-option {item!r} is not KEY=VALUE", step="agent")
        options[key.strip()] = value
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s agent %(levelname)s %(message)s", stream=sys.stderr)
    from agent.runtimes import RuntimeOptions
    from agent.worker import Agent, AgentConfig

    try:
        extra = parse_options(args.runtime_option)
        work_dir = args.work_dir or Path.home() / ".cache" / "qfarm" / f"agent-{args.device}"
        config = AgentConfig(device=args.device, coordinator=args.coordinator, work_dir=work_dir,
                             runtime=RuntimeOptions(runtime=args.runtime, threads=args.threads,
                                                    optimization=args.optimization, extra=extra),
                             slots=args.slots, job_timeout_s=args.job_timeout, name=args.name)
        agent = Agent(config)
    except QfarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum, frame):
        if not stopping.is_set():
            log.info("%s: stopping", signal.Signals(signum).name)
            stopping.set()
            agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("agent %s for %s serving %s", config.agent_name(), config.device, config.coordinator)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
