"""The farm's `coordinator` subcommands: serve, submit, status, cancel, report, health, and
`tune --coordinator`.
coordinator/cli.py registers them; each is a thin layer over server.py / client.py."""
from __future__ import annotations

import argparse
import gc
import logging
import math
import signal
import threading
import time
from pathlib import Path

from coordinator.arguments import (add_build_arguments, add_coordinator_argument, add_limit_arguments,
                                   build_limits_from_args, limits_from_args, preprocess_from_args,
                                   report_policy_from_args, settings_from_args, tune_option_values)
from coordinator.farm.describe import runtime_text, slots_text
from shared.errors import InvalidArgument, NotFound

log = logging.getLogger("coordinator")

# ------------------------------------------------------------------------------------ serve
def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the farm coordinator (gRPC) until SIGINT/SIGTERM")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (see --port-file)")
    p.add_argument("--data-dir", type=Path, default=Path("qfarm-data"), help="SQLite state and artifacts")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--heartbeat-interval", type=float, default=2.0, help="seconds between agent heartbeats")
    p.add_argument("--missing-after", type=float, default=6.0, help="no heartbeat this long: agent missing")
    p.add_argument("--evict-after", type=float, default=20.0, help="no heartbeat this long: evicted, jobs re-queued")
    p.add_argument("--lease-ttl", type=float, default=30.0, help="a lease not renewed this long is re-queued")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="on SIGTERM/SIGINT: seconds in-flight calls may take to finish (campaigns pause first)")
    p.add_argument("--max-workers", type=int, default=2,
                   help="threads for store transactions (1-256); waiting agents hold none, so this does not grow "
                        "with the fleet (concurrent calls are capped by the --max-calls... limits)")
    from coordinator.dashboard.command import add_dashboard_arguments

    add_dashboard_arguments(p)
    from shared.auth import add_server_arguments

    add_server_arguments(p)
    add_limit_arguments(p)
    add_build_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from coordinator.dashboard.command import start_dashboard
    from shared.atomic import atomic_write_text
    from coordinator.farm.scheduler import LeasePolicy
    from coordinator.farm.server import ServerConfig, build_server
    from shared.auth import server_security_from_args

    # our own loggers, not the root: onnxruntime's quantizer lowers the root logger's level at run time
    logging.getLogger("coordinator").setLevel(logging.INFO)
    for flag, value in (("--heartbeat-interval", args.heartbeat_interval), ("--missing-after", args.missing_after),
                        ("--evict-after", args.evict_after), ("--lease-ttl", args.lease_ttl)):
        if not math.isfinite(value) or value <= 0:
            raise InvalidArgument(f"{flag} {value} must be a finite number of seconds > 0", step="serve")
    if not 0 <= args.shutdown_grace < math.inf:
        raise InvalidArgument(f"--shutdown-grace {args.shutdown_grace} must be a finite number of seconds >= 0",
                              step="serve")
    policy = LeasePolicy(heartbeat_interval_s=args.heartbeat_interval, missing_after_s=args.missing_after,
                         evict_after_s=args.evict_after, lease_ttl_s=args.lease_ttl)
    security = server_security_from_args(args)
    server, port = build_server(ServerConfig(data_dir=args.data_dir, host=args.host, port=args.port, policy=policy,
                                             max_workers=args.max_workers, limits=limits_from_args(args),
                                             security=security, build=build_limits_from_args(args),
                                             report=report_policy_from_args(args)))
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dashboard = start_dashboard(args, server.coordinator, security)   # a bad --http-port fails before serving
    server.start()
    # What the imports and start-up made lives as long as the process: out of the collector's sight,
    # a full collection (which stops every call the event loop has) scans only what serving made.
    gc.freeze()
    if args.port_file:
        atomic_write_text(args.port_file, f"{port}\n")
    tokens = "no token" if security.role_tokens is None else \
        "separate agent and client tokens" if security.separate_roles else "one farm token"
    log.info("coordinator listening on %s:%d (%s, %s), data in %s; %s", args.host, port,
             "TLS" if security.tls else "plaintext", tokens, args.data_dir, build_limits_from_args(args).describe())
    stop.wait()
    if dashboard is not None:
        dashboard.stop()
    server.stop(grace=args.shutdown_grace)
    log.info("coordinator stopped")
    return 0


# ------------------------------------------------------------------------------------ submit
def _client(args: argparse.Namespace):
    """A CampaignClient with the client credentials of --token/--token-file/--tls-ca (or
    $QFARM_CLIENT_TOKEN, else $QFARM_TOKEN)."""
    from coordinator.farm.client import CampaignClient
    from shared.auth import Role, credentials_from_args

    return CampaignClient(args.coordinator, credentials=credentials_from_args(args, role=Role.CLIENT))


def add_submit(sub) -> None:
    p = sub.add_parser("submit", help="send a campaign spec (TOML) to the coordinator")
    p.add_argument("spec", type=Path, help="campaign spec, see deploy/campaign.example.toml")
    add_coordinator_argument(p)
    p.add_argument("--wait", action="store_true", help="wait until the campaign ends")
    p.add_argument("-o", "--out", type=Path, help="with --wait: write the report here")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    from coordinator.farm.spec import load_spec_file

    spec = load_spec_file(args.spec)
    with _client(args) as client:
        campaign_id = client.submit(spec)
        print(campaign_id, flush=True)
        if not args.wait:
            return 0
        return _wait_and_report(client, campaign_id, args.out)


def _wait_and_report(client, campaign_id: str, out: Path | None) -> int:
    from coordinator.console import console

    last = [""]

    def show(status) -> None:
        line = f"{status.state}: {status.message}"
        if line != last[0] and not batch_in_progress(status.message):
            console.print(line)
            last[0] = line

    final = client.wait(campaign_id, on_update=show)
    if final.state != "done":
        console.print(f"[red]campaign {campaign_id} {final.state}: {final.message}")
    if out is not None:
        try:
            _write_report(client, campaign_id, out)
        except NotFound:
            if final.state == "done":
                raise
    return 0 if final.state == "done" else 1


def batch_in_progress(message: str) -> bool:
    """'model: 3/12 results': a batch still filling in, not worth a line of its own."""
    import re

    counts = re.search(r"(\d+)/(\d+) results$", message)
    return bool(counts) and counts.group(1) != counts.group(2)


def _write_report(client, campaign_id: str, out: Path) -> None:
    import json

    from coordinator.console import out as stdout
    from coordinator.console import print_summary
    from coordinator.html import write_html

    state, paths = client.report(campaign_id, out)
    reports = {}
    for path in paths:
        if path.name == "report.json":
            report = json.loads(path.read_text())
            page = write_html(report, path.parent)
            print_summary(report, path, page=page)
            reports[path.parent] = report
    if any(folder != Path(out) for folder in reports):          # several models: one folder each
        _write_index(client, campaign_id, out, reports)
    if state != "done":
        stdout.print(f"campaign {campaign_id} is {state}: the report is partial")


def _write_index(client, campaign_id: str, out: Path, reports: dict[Path, dict]) -> None:
    """out/index.html: the fleet summary of a multi-model campaign, linking each model's page; the
    same table on the console."""
    from urllib.parse import quote

    from coordinator.console import fleet_table
    from coordinator.console import out as stdout
    from coordinator.html.fleet import fleet
    from coordinator.html.render import REPORT_FILE, write_index

    models = [(folder.relative_to(out).as_posix(), report, f"{quote(folder.relative_to(out).as_posix())}/{REPORT_FILE}")
              for folder, report in reports.items()]
    summary = fleet(models)
    [status] = client.status(campaign_id).campaigns
    page = write_index(summary, out, f"qfarm fleet summary: {status.name}",
                       f"campaign {campaign_id}: {len(models)} models on {len(summary.devices)} device classes "
                       f"({', '.join(summary.devices)}); state: {status.state}")
    stdout.print(fleet_table(summary))
    stdout.print(f"fleet summary: {page}")


# ------------------------------------------------------------------------------------ status
def add_status(sub) -> None:
    p = sub.add_parser("status", help="agents (state, device, job, heartbeat) and campaigns (progress)")
    p.add_argument("campaign", nargs="?", default="", help="only this campaign")
    add_coordinator_argument(p)
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from coordinator.console import out

    with _client(args) as client:
        resp = client.status(args.campaign)
    agents = Table(title=f"agents on {args.coordinator}")
    for col in ("agent", "name", "device", "state", "jobs", "slots", "heartbeat", "runtime", "qfarm", "host"):
        agents.add_column(col)
    for a in resp.agents:
        caps = a.capabilities
        agents.add_row(*map(shown, (a.agent_id, a.name, a.device, a.state, ", ".join(a.jobs) or "-", slots_text(a),
                                    f"{a.last_heartbeat_age_s:.1f} s ago", runtime_text(caps.runtime),
                                    f"{caps.package_version or '?'} (protocol {caps.protocol_version or '?'})",
                                    f"{caps.host.cpu_model} x{caps.host.cores} {caps.host.arch}")))
    out.print(agents)
    campaigns = Table(title="campaigns")
    for col in ("campaign", "name", "state", "progress", "message"):
        campaigns.add_column(col)
    for c in resp.campaigns:
        progress = "; ".join(f"{d.device} {d.done}/{d.total} ({d.leased} running, {d.agents} agents)"
                             for d in c.devices) or "-"
        campaigns.add_row(*map(shown, (c.campaign_id, c.name, c.state, progress, c.message)))
    out.print(campaigns)
    return 0


def shown(text: str):
    """What others sent (agent names, capabilities, messages) as literal text: rich markup is not
    interpreted, control characters (escape sequences, newlines) are made visible."""
    from rich.text import Text

    return Text("".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text))


# ------------------------------------------------------------------------------------ cancel
def add_cancel(sub) -> None:
    p = sub.add_parser("cancel", help="stop a queued or running campaign (its jobs are cancelled or taken back)")
    p.add_argument("campaign")
    add_coordinator_argument(p)
    p.set_defaults(func=cmd_cancel)


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        resp = client.cancel(args.campaign)
    print(f"campaign {args.campaign} {resp.state} ({resp.jobs_cancelled} job(s) cancelled; running ones are taken "
          "back at their agents' next heartbeat)")
    return 0


# ------------------------------------------------------------------------------------ report
def add_report(sub) -> None:
    p = sub.add_parser("report", help="write a campaign's report.json and PNGs")
    p.add_argument("campaign")
    p.add_argument("-o", "--out", type=Path, required=True)
    add_coordinator_argument(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _write_report(client, args.campaign, args.out)
    return 0


# ------------------------------------------------------------------------------------ tune on the farm
def cmd_tune_farm(args: argparse.Namespace) -> int:
    """`coordinator tune ... --coordinator HOST:PORT --devices A,B`: the same tune as a campaign."""
    spec = spec_from_tune_args(args)
    started = time.monotonic()
    with _client(args) as client:
        campaign_id = client.submit(spec)
        log.warning("campaign %s submitted to %s", campaign_id, args.coordinator)
        code = _wait_and_report(client, campaign_id, args.out)
    log.info("farm tune took %.1f s", time.monotonic() - started)
    return code


def spec_from_tune_args(args: argparse.Namespace):
    from coordinator import options
    from coordinator.farm.spec import spec_from_local

    if not args.devices:
        raise InvalidArgument("--coordinator needs --devices KEY[,KEY...]", step="tune")
    from coordinator.hub import is_hub_ref, parse_ref

    hub_model = is_hub_ref(args.model)        # resolved and uploaded by spec_from_local, like a file
    model = str(args.model) if hub_model else Path(args.model).resolve()
    sections = options.spec_sections(tune_option_values(args))
    raw = {
        "name": parse_ref(model).name if hub_model else model.stem,
        "devices": [d.strip() for d in args.devices.split(",") if d.strip()],
        **sections.get("", {}),
        "models": [{"path": str(model), "excludes": list(args.exclude)}],
        "data": {**{key: str(Path(getattr(args, flag)).resolve())
                    for key, flag in (("images", "images"), ("calibration_images", "calibration_images"),
                                      ("tensors", "data"), ("calibration_tensors", "calibration_data"))
                    if getattr(args, flag) is not None}, **sections.get("data", {})},
        "preprocess": preprocess_from_args(args).to_dict(),
        "quantization": settings_from_args(args).to_dict(),    # recipes included: the same settings as local
        "strategy": sections.get("strategy", {}),
    }
    return spec_from_local(raw, "coordinator tune arguments", Path.cwd(), hub_dir=args.hub_dir)


def add_health(sub) -> None:
    from coordinator.farm.health_probe import add_health as add  # `coordinator health`: the gRPC health check

    add(sub)


SUBCOMMANDS = [add_serve, add_submit, add_status, add_cancel, add_report, add_health]
