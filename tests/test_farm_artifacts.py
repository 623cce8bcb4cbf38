"""Artifacts bigger than gRPC's 4 MB default travel in 1 MiB chunks through a real server, are
verified by sha256 on arrival and on read, and a bad upload leaves nothing behind. An agent
downloads only the artifacts of a job it holds."""
from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest

from coordinator.farm.scheduler import PRIORITY_CANDIDATE
from coordinator.testing import ProtocolAgent
from shared.artifacts import CHUNK_BYTES, ArtifactStore, CorruptArtifact
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from tests.farm_support import coordinator

SIZE = 5 * 1024 * 1024 + 12345          # > 4 MB, not a multiple of the chunk size


def _payload() -> bytes:
    return np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8).tobytes()


def _upload_chunks(data: bytes, sha: str, declared_size: int):
    meta = job_pb2.Artifact(sha256=sha, size_bytes=declared_size, kind="model", name="big.onnx")
    for i, offset in enumerate(range(0, len(data), CHUNK_BYTES)):
        yield farm_pb2.ArtifactChunk(artifact=meta if i == 0 else None, data=data[offset:offset + CHUNK_BYTES],
                                     offset=offset)


def _job_naming(server, sha: str) -> None:
    job = job_pb2.Job(job_id="big@cpu-a", device="cpu-a")
    job.candidate.id = "big"
    job.candidate.model.sha256 = sha
    server.coordinator.scheduler.submit(job, "candidate", PRIORITY_CANDIDATE, "test")


def test_big_artifact_round_trip_in_chunks_with_sha256(tmp_path):
    data = _payload()
    sha = hashlib.sha256(data).hexdigest()
    with coordinator(tmp_path / "coord") as (server, address), grpc.insecure_channel(address) as channel:
        campaigns = farm_pb2_grpc.CampaignServiceStub(channel)
        agent = ProtocolAgent(channel, "cpu-a")
        agent.register()
        assert campaigns.MissingArtifacts(farm_pb2.MissingArtifactsRequest(sha256=[sha])).sha256 == [sha]
        resp = campaigns.UploadArtifact(_upload_chunks(data, sha, SIZE), timeout=60)
        assert (resp.artifact.sha256, resp.artifact.size_bytes, resp.already_present) == (sha, SIZE, False)
        assert campaigns.MissingArtifacts(farm_pb2.MissingArtifactsRequest(sha256=[sha])).sha256 == []
        fetch = agent.stub.FetchArtifact
        with pytest.raises(grpc.RpcError) as info:          # no job of this agent names it yet
            list(fetch(farm_pb2.FetchArtifactRequest(sha256=sha), metadata=agent.metadata(), timeout=60))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        _job_naming(server, sha)
        assert len(agent.lease()) == 1
        chunks = list(fetch(farm_pb2.FetchArtifactRequest(sha256=sha), metadata=agent.metadata(), timeout=60))
        assert len(chunks) == 6 and all(len(c.data) <= CHUNK_BYTES for c in chunks)
        assert [c.offset for c in chunks] == list(range(0, SIZE, CHUNK_BYTES))
        received = b"".join(c.data for c in chunks)
        assert hashlib.sha256(received).hexdigest() == sha
        assert agent.fetch(sha, offset=3 * CHUNK_BYTES) == data[3 * CHUNK_BYTES:]
        stats = campaigns.GetStatus(farm_pb2.GetStatusRequest()).stats
        assert stats.artifact_bytes_received == SIZE
        assert stats.artifact_bytes_sent == SIZE + (SIZE - 3 * CHUNK_BYTES)


def test_upload_with_wrong_sha_is_refused_and_nothing_is_stored(tmp_path):
    data = _payload()
    wrong = hashlib.sha256(b"something else").hexdigest()
    with coordinator(tmp_path / "coord") as (server, address), grpc.insecure_channel(address) as channel:
        campaigns = farm_pb2_grpc.CampaignServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            campaigns.UploadArtifact(_upload_chunks(data, wrong, SIZE), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert wrong in info.value.details()
        assert campaigns.MissingArtifacts(farm_pb2.MissingArtifactsRequest(sha256=[wrong])).sha256 == [wrong]
        agent = ProtocolAgent(channel, "cpu-a")
        agent.register()
        _job_naming(server, wrong)
        assert len(agent.lease()) == 1
        with pytest.raises(grpc.RpcError) as info:
            agent.fetch(wrong)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            agent.fetch("../x")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    leftovers = [p for p in (tmp_path / "coord" / "artifacts").rglob("*") if p.is_file()]
    assert leftovers == []


def test_corrupted_file_on_disk_is_detected_on_read(tmp_path):
    store = ArtifactStore(tmp_path)
    stored = store.put_bytes(b"model bytes" * 1000)
    assert store.get(stored.sha256).size_bytes == 11000
    with open(stored.path, "r+b") as fh:
        fh.write(b"X")
    with pytest.raises(CorruptArtifact, match=stored.sha256):
        store.get(stored.sha256)
    assert not store.has(stored.sha256)                           # removed, so it is fetched again
