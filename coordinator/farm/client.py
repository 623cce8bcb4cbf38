"""Client side of CampaignService, used by `coordinator submit/status/report` and
`coordinator tune --coordinator`: upload what the coordinator lacks, submit, poll, fetch reports."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc

from coordinator.farm.spec import CampaignSpec, FileRef
from coordinator.farm.states import FINISHED
from shared.artifacts import CHUNK_BYTES, iter_file_chunks
from shared.atomic import atomic_write_bytes
from shared.auth import Credentials
from shared.errors import (FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, QfarmError,
                           ResourceExhausted, Unauthenticated)
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20
_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}
TERMINAL = tuple(state.value for state in FINISHED)


class CoordinatorUnavailable(QfarmError):
    """The coordinator cannot be reached (down, restarting, wrong address)."""

    step = "client"


class CampaignClient:
    """One channel to a coordinator; RPC failures come back as typed QfarmErrors with the server's text."""

    def __init__(self, address: str, timeout_s: float = 60.0, credentials: Credentials = Credentials()):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidArgument(f"--coordinator {address!r} is not HOST:PORT", step="client")
        self.address = address
        self.timeout_s = timeout_s
        self.credentials = credentials
        self._channel = credentials.channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self._stub = farm_pb2_grpc.CampaignServiceStub(self._channel)
        self.bytes_sent = 0                # request payload bytes (uploads included), for bench/farm.py

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "CampaignClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: Callable, request, **kwargs):
        if hasattr(request, "ByteSize"):
            self.bytes_sent += request.ByteSize()
        try:
            return method(request, timeout=kwargs.pop("timeout", self.timeout_s), **kwargs)
        except grpc.RpcError as exc:
            raise translate(exc, self.address, self.credentials.hint()) from None

    # -- calls ----------------------------------------------------------------------------------
    def upload_missing(self, files: list[FileRef]) -> int:
        """Upload the files the coordinator does not have yet; returns how many were sent."""
        unique = {f.sha256: f for f in files}
        missing = self._call(self._stub.MissingArtifacts,
                             farm_pb2.MissingArtifactsRequest(sha256=list(unique))).sha256
        for sha in missing:
            ref = unique[sha]
            if ref.local is None:
                raise InvalidArgument(f"file {ref.name} is not on this machine and not on the coordinator",
                                      step="upload")
            self._call(self._stub.UploadArtifact, self._chunks(ref), timeout=3600)
            log.info("uploaded %s (%d bytes)", ref.name, ref.size_bytes)
        return len(missing)

    def _chunks(self, ref: FileRef) -> Iterator[farm_pb2.ArtifactChunk]:
        meta = job_pb2.Artifact(sha256=ref.sha256, size_bytes=ref.size_bytes, kind="file", name=ref.name)
        first = True
        for offset, data in iter_file_chunks(ref.local, 0, CHUNK_BYTES):
            self.bytes_sent += len(data)
            yield farm_pb2.ArtifactChunk(artifact=meta if first else None, data=data, offset=offset)
            first = False
        if first:
            yield farm_pb2.ArtifactChunk(artifact=meta, data=b"", offset=0)

    def submit(self, spec: CampaignSpec) -> str:
        self.upload_missing(spec.files())
        resp = self._call(self._stub.SubmitCampaign, farm_pb2.SubmitCampaignRequest(spec_json=spec.wire_json()))
        return resp.campaign_id

    def status(self, campaign_id: str = "") -> farm_pb2.GetStatusResponse:
        return self._call(self._stub.GetStatus, farm_pb2.GetStatusRequest(campaign_id=campaign_id))

    def cancel(self, campaign_id: str) -> farm_pb2.CancelCampaignResponse:
        return self._call(self._stub.CancelCampaign, farm_pb2.CancelCampaignRequest(campaign_id=campaign_id))

    def wait(self, campaign_id: str, poll_s: float = 1.0, timeout_s: float | None = None,
             on_update: Callable[[farm_pb2.CampaignStatus], None] = lambda status: None) -> farm_pb2.CampaignStatus:
        """Poll until the campaign is done, failed or cancelled (coordinator restarts are waited out)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                [campaign] = self.status(campaign_id).campaigns
            except CoordinatorUnavailable:
                log.info("coordinator unreachable; waiting")
            else:
                on_update(campaign)
                if campaign.state in TERMINAL:
                    return campaign
            if deadline is not None and time.monotonic() > deadline:
                raise FailedPrecondition(f"campaign {campaign_id} did not finish within {timeout_s:g} s",
                                         step="wait")
            time.sleep(poll_s)

    def report(self, campaign_id: str, out_dir: Path) -> tuple[str, list[Path]]:
        """Write the campaign's report files under out_dir (atomically); returns (state, paths)."""
        resp = self._call(self._stub.GetReport, farm_pb2.GetReportRequest(campaign_id=campaign_id))
        written = []
        for item in resp.files:
            rel = Path(item.path)
            if rel.is_absolute() or ".." in rel.parts:
                raise InvalidArgument(f"coordinator sent a report path {item.path!r} outside the output folder",
                                      step="report")
            target = Path(out_dir) / rel
            atomic_write_bytes(target, item.data)
            written.append(target)
        return resp.state, written


def translate(exc: grpc.RpcError, address: str, hint: str = "") -> QfarmError:
    """A gRPC failure as the matching typed error, text preserved."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return CoordinatorUnavailable(f"coordinator {address} is unavailable ({details})"
                                      + (f"; {hint}" if hint else ""))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        details += " (the coordinator's limit max_message_bytes, `coordinator serve --max-message-bytes`)"
    return _ERRORS.get(code, QfarmError)(details or code.name, step="coordinator")
