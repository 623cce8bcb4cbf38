"""Helpers for the security tests: a coordinator with a token (and TLS) on 127.0.0.1 port 0,
agents on threads that send the token (both from coordinator/testing.py), every RPC called once,
and a throwaway CA made with the openssl CLI."""
from __future__ import annotations

import logging
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from agent.worker import Agent
from coordinator.farm.server import FarmServer
from coordinator.testing import AgentThread, coordinator
from shared.auth import Credentials, ServerSecurity
from shared.limits import DEFAULT_LIMITS, Limits
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from shared.version import PROTOCOL_VERSION


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


def call_every_method(channel: grpc.Channel, metadata) -> dict[str, tuple[grpc.StatusCode, str]]:
    """Each RPC of both services once, with `metadata`: the status code and details each ended with."""
    agent = farm_pb2_grpc.AgentServiceStub(channel)
    campaigns = farm_pb2_grpc.CampaignServiceStub(channel)
    data = b"model bytes"
    meta = job_pb2.Artifact(sha256="a" * 64, size_bytes=len(data), name="m.onnx")
    result = job_pb2.DeviceResult(job_id="j", attempt=1, status=job_pb2.RESULT_STATUS_OK)
    options = {"metadata": metadata, "timeout": 10}
    caps = farm_pb2.AgentCapabilities(protocol_version=PROTOCOL_VERSION)
    calls = {
        "Register": lambda: agent.Register(farm_pb2.RegisterRequest(device="cpu-a", name="intruder", capabilities=caps),
                                           **options),
        "Heartbeat": lambda: agent.Heartbeat(farm_pb2.HeartbeatRequest(agent_id="x"), **options),
        "Lease": lambda: agent.Lease(farm_pb2.LeaseRequest(agent_id="x", max_jobs=1), **options),
        "FetchArtifact": lambda: list(agent.FetchArtifact(farm_pb2.FetchArtifactRequest(sha256="a" * 64), **options)),
        "AgentUpload": lambda: agent.UploadArtifact(iter([farm_pb2.ArtifactChunk(artifact=meta, data=data)]),
                                                    **options),
        "ReportResult": lambda: agent.ReportResult(farm_pb2.ReportResultRequest(agent_id="x", result=result),
                                                   **options),
        "Deregister": lambda: agent.Deregister(farm_pb2.DeregisterRequest(agent_id="x"), **options),
        "MissingArtifacts": lambda: campaigns.MissingArtifacts(farm_pb2.MissingArtifactsRequest(sha256=["a" * 64]),
                                                               **options),
        "CampaignUpload": lambda: campaigns.UploadArtifact(iter([farm_pb2.ArtifactChunk(artifact=meta, data=data)]),
                                                           **options),
        "SubmitCampaign": lambda: campaigns.SubmitCampaign(farm_pb2.SubmitCampaignRequest(spec_json="{}"), **options),
        "GetStatus": lambda: campaigns.GetStatus(farm_pb2.GetStatusRequest(), **options),
        "GetReport": lambda: campaigns.GetReport(farm_pb2.GetReportRequest(campaign_id="c"), **options),
        "CancelCampaign": lambda: campaigns.CancelCampaign(farm_pb2.CancelCampaignRequest(campaign_id="c"),
                                                           **options),
    }
    answers = {}
    for name, call in calls.items():
        try:
            call()
            answers[name] = (grpc.StatusCode.OK, "")
        except grpc.RpcError as exc:
            answers[name] = (exc.code(), exc.details() or "")
    return answers


@pytest.fixture(autouse=True)
def coordinator_never_errs(caplog):
    """Import into a test module: no call or campaign thread of the coordinator may fail there (no
    ERROR record from its loggers), whatever the test throws at it."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")      # in teardown, .records is teardown's
    errors = [r.getMessage() for r in records if r.name.startswith("coordinator") and r.levelno >= logging.ERROR]
    assert errors == []
