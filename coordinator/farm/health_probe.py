"""`coordinator health`: ask a coordinator's standard gRPC health service whether it serves.

Container HEALTHCHECKs and exec probes run it (Kubernetes' native `grpc:` probe cannot speak TLS),
so it imports only grpc and the health stubs, sends no token (the health service is open on
purpose, see shared/auth.py) and answers with an exit code: 0 SERVING, 1 anything else (not
serving, unknown service, unreachable, timed out). Also runnable on its own:

    python -m coordinator.farm.health_probe --coordinator 127.0.0.1:50051
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TLS_SERVER_NAME_ENV = "QFARM_TLS_SERVER_NAME"
DEFAULT_ADDRESS = "127.0.0.1:50051"


def add_health(sub) -> None:
    p = sub.add_parser("health", help="exit 0 if the coordinator's gRPC health service says SERVING")
    add_health_arguments(p)
    p.set_defaults(func=cmd_health)


def add_health_arguments(p: argparse.ArgumentParser) -> None:
    from shared.auth import TLS_CA_ENV

    p.add_argument("--coordinator", metavar="HOST:PORT", default=DEFAULT_ADDRESS,
                   help=f"coordinator address (default {DEFAULT_ADDRESS})")
    p.add_argument("--service", default="",
                   help="health service name: '' (the whole server, default), qfarm.v1.AgentService, "
                        "qfarm.v1.CampaignService")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds before the check counts as failed")
    p.add_argument("--tls-ca", type=Path, default=None,
                   help=f"CA certificate (PEM) that signed the coordinator's; enables TLS (or ${TLS_CA_ENV})")
    p.add_argument("--tls-server-name", default=None,
                   help=f"name the certificate must be valid for when it differs from HOST, e.g. when probing "
                        f"127.0.0.1 inside the coordinator's container (or ${TLS_SERVER_NAME_ENV})")


def check(address: str, service: str = "", timeout: float = 3.0, tls_ca: Path | None = None,
          tls_server_name: str | None = None) -> str:
    """The health status name the coordinator reports for `service`, or why there is none."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shared.auth import Credentials

    options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_ca and tls_server_name else []
    with Credentials(tls_ca=tls_ca).channel(address, options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name + (f": {exc.details()}" if exc.details() else "")
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def cmd_health(args: argparse.Namespace) -> int:
    from shared.auth import TLS_CA_ENV

    tls_ca = args.tls_ca or (Path(os.environ[TLS_CA_ENV]) if os.environ.get(TLS_CA_ENV) else None)
    name = args.tls_server_name or os.environ.get(TLS_SERVER_NAME_ENV) or None
    status = check(args.coordinator, args.service, args.timeout, tls_ca, name)
    print(f"{args.coordinator} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


def main(argv: list[str] | None = None) -> int:
    from shared.errors import QfarmError

    parser = argparse.ArgumentParser(prog="coordinator health", description=__doc__.split("\n\n")[0])
    add_health_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_health(args)
    except QfarmError as exc:     # an unreadable CA file
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
