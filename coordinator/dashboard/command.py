"""`coordinator serve --http-port PORT`: the flags and the start of the dashboard beside gRPC."""
from __future__ import annotations

import argparse
import logging
import ssl

from shared.errors import FailedPrecondition

log = logging.getLogger("coordinator")


def add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("web dashboard (read-only; the client token of gRPC)")
    group.add_argument("--http-port", type=int, help="serve the dashboard and /metrics on this port (0: any free)")
    group.add_argument("--http-host", help="address for the dashboard (default: --host)")
    group.add_argument("--http-port-file", help="write the dashboard's bound port here once listening")
    group.add_argument("--http-refresh", type=float, default=2.0, help="seconds between page reloads while "
                                                                        "something runs (0: never)")


def start_dashboard(args: argparse.Namespace, coord, security):
    """Start the dashboard when --http-port is given; None otherwise. Without a token it may listen on
    loopback only, exactly like gRPC; with TLS configured it serves HTTPS with the same certificate."""
    if args.http_port is None:
        return None
    from pathlib import Path

    from coordinator.dashboard.app import DashboardServer
    from coordinator.dashboard.auth import HttpAuth
    from shared.atomic import atomic_write_text
    from shared.auth import Role

    host = args.http_host or args.host
    security.check_exposure(host)
    context = None
    if security.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(security.tls_cert), str(security.tls_key))
    token = security.token_of(Role.CLIENT)          # it shows what clients read: their token, not an agent's
    dashboard = DashboardServer(coord, host, args.http_port, HttpAuth(token), context, args.http_refresh)
    try:
        dashboard.start()
    except OSError as exc:
        raise FailedPrecondition(f"cannot serve the dashboard on {host}:{args.http_port}: {exc.strerror or exc}",
                                 step="serve") from exc
    if args.http_port_file:
        atomic_write_text(Path(args.http_port_file), f"{dashboard.port}\n")
    log.info("dashboard on %s (%s)", dashboard.url, "client token required" if token else "loopback, no token")
    return dashboard
