"""Helpers for the security tests: a coordinator with a token (and TLS) on 127.0.0.1 port 0,
agents on threads that send the token (both from coordinator/testing.py), and a throwaway CA made
with the openssl CLI."""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from agent.worker import Agent
from coordinator.farm.server import FarmServer
from coordinator.testing import AgentThread, coordinator
from shared.auth import Credentials, ServerSecurity
from shared.limits import DEFAULT_LIMITS, Limits


@contextmanager
def secured(data_dir: Path, security: ServerSecurity,
            limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[FarmServer, str]]:
    with coordinator(data_dir, security=security, limits=limits) as served:
        yield served


@contextmanager
def running_agent(device: str, address: str, work_dir: Path, credentials: Credentials) -> Iterator[Agent]:
    """A real Agent (jobs in child processes) with credentials, on a thread of the test process."""
    with AgentThread(device, address, work_dir, credentials=credentials) as agent:
        yield agent


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca_and_server_cert(folder: Path, name: str = "ca") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signs for localhost and 127.0.0.1 (EC keys: fast).
    Returns (ca.pem, server.pem, server.key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1",
             "-subj", f"/CN=qfarm test {name}", cwd=folder)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=folder)
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{name}.pem", "-CAkey", f"{name}.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "1", "-extfile", "san.cnf", cwd=folder)
    return folder / f"{name}.pem", folder / "server.pem", folder / "server.key"
