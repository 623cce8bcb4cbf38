"""Bounds over the wire on a real coordinator with small, configured limits: oversize messages,
artifacts and campaigns are refused naming the limit and leave nothing behind; a hostile or
oversize model is refused at submit; a campaign whose strategy has no cap fails, naming the limit,
once it creates too many candidates."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper

from coordinator.farm.client import CampaignClient
from coordinator.farm.server import ServerConfig, build_server
from coordinator.farm.spec import spec_from_local
from coordinator.farm.store import Store
from shared.errors import InvalidArgument, ResourceExhausted
from shared.hashing import sha256_bytes
from shared.limits import Limits
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from tests.farm_support import CURRENT, FAST, IMAGES, AgentThread, tiny_spec
from tests.models import make_classifier

MIB = 1 << 20


@contextmanager
def limited(data_dir: Path, limits: Limits) -> Iterator[str]:
    server, port = build_server(ServerConfig(data_dir=data_dir, port=0, policy=FAST, tick_interval_s=0.1,
                                             limits=limits))
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def _counts(data_dir: Path) -> dict[str, int]:
    store = Store(data_dir)
    try:
        with store.transaction() as c:
            return {t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("campaigns", "artifacts")}
    finally:
        store.close()


def _upload(stub, data: bytes, declared: int, chunk: int = MIB):
    meta = job_pb2.Artifact(sha256=sha256_bytes(data), size_bytes=declared, name="blob.bin")
    chunks = [farm_pb2.ArtifactChunk(artifact=meta if i == 0 else None, data=data[i:i + chunk], offset=i)
              for i in range(0, len(data), chunk)]
    return stub.UploadArtifact(iter(chunks), timeout=30)


def test_oversize_message_and_artifact_are_refused_naming_the_limit(tmp_path):
    data_dir = tmp_path / "coord"
    limits = Limits(max_message_bytes=2 * MIB, max_artifact_bytes=3 * MIB)
    with limited(data_dir, limits) as address, CampaignClient(address) as client:
        stub = farm_pb2_grpc.CampaignServiceStub(grpc.insecure_channel(address))
        with pytest.raises(grpc.RpcError) as big:
            stub.SubmitCampaign(farm_pb2.SubmitCampaignRequest(spec_json="x" * (3 * MIB)), timeout=30)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(ResourceExhausted, match="max_message_bytes"):     # the client names the limit
            client._call(client._stub.SubmitCampaign, farm_pb2.SubmitCampaignRequest(spec_json="x" * (3 * MIB)))
        blob = np.random.default_rng(0).integers(0, 256, 4 * MIB, dtype=np.uint8).tobytes()
        for declared in (len(blob), 0):                # honest, and silent about the size
            with pytest.raises(grpc.RpcError) as exc:
                _upload(stub, blob, declared)
            assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, declared
            assert "max_artifact_bytes=3145728" in exc.value.details()
        with pytest.raises(grpc.RpcError) as lie:      # lying: stopped as soon as it sends more than it said
            _upload(stub, blob, 100)
        assert lie.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "declared 100 bytes" in lie.value.details()
        assert _counts(data_dir)["artifacts"] == 0
        assert not [p for p in (data_dir / "artifacts").rglob("*") if p.is_file()]   # no partial file left
        small = blob[: 2 * MIB]
        assert _upload(stub, small, len(small)).artifact.size_bytes == len(small)   # under the limits: fine
    with pytest.raises(InvalidArgument, match="max_message_bytes=1000 is below"):
        ServerConfig(data_dir=tmp_path / "x", limits=Limits(max_message_bytes=1000))


def _two_model_spec(tmp_path: Path, max_candidates: int | None):
    a = make_classifier(tmp_path / "a.onnx")
    b = make_classifier(tmp_path / "b.onnx", seed=1)
    strategy = {} if max_candidates is None else {"max_candidates": max_candidates}
    raw = {"name": "two", "devices": ["cpu-a"], "models": [{"path": str(a)}, {"path": str(b)}],
           "data": {"images": str(IMAGES), "calibration": 8, "eval": 8, "latency_runs": 1},
           "preprocess": {"input_size": 32}, "strategy": strategy}
    return spec_from_local(raw, "test", tmp_path)


def _external_data_model(path: Path, location: str) -> Path:
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3, 1, 3, 3])
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"], group=3, pads=[1, 1, 1, 1])],
                              "ext", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32, 32])],
                              initializer=[w])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_campaign_size_and_hostile_models_are_refused_at_submit(tmp_path):
    data_dir = tmp_path / "coord"
    limits = Limits(max_campaign_models=1, max_campaign_candidates=5, max_nodes=6)
    with limited(data_dir, limits) as address, CampaignClient(address) as client:
        with pytest.raises(ResourceExhausted, match="max_campaign_models=1"):
            client.submit(_two_model_spec(tmp_path, 2))
        deep = tiny_spec(tmp_path, make_classifier(tmp_path / "deep.onnx"), ["cpu-a"], max_candidates=6)
        with pytest.raises(ResourceExhausted, match=r"planned candidates .* is 6, above the limit "
                                                    r"max_campaign_candidates=5"):
            client.submit(deep)
        # 3 convs + 3 relus + pool + flatten + gemm = 9 nodes
        with pytest.raises(ResourceExhausted, match="node count of tiny.onnx is 9, above the limit max_nodes=6"):
            client.submit(tiny_spec(tmp_path, make_classifier(tmp_path / "tiny.onnx"), ["cpu-a"], max_candidates=2))
        for i, location in enumerate(("../../../etc/passwd", "/etc/passwd", "w.bin")):
            model = _external_data_model(_mkdir(tmp_path / "ext" / str(i)) / "model.onnx", location)
            expected = "does not exist" if location == "w.bin" else "outside its folder"
            with pytest.raises(InvalidArgument, match=expected):
                client.submit(tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=1))
        assert _counts(data_dir)["campaigns"] == 0           # nothing was accepted
        assert not any((data_dir / "tmp").iterdir())          # the staged copies are gone
        stub = farm_pb2_grpc.AgentServiceStub(grpc.insecure_channel(address))
        for device, name in (("bad key!", "n"), ("", "n"), ("x" * 65, "n"), ("cpu-a", "n" * 300)):
            with pytest.raises(grpc.RpcError) as exc:
                stub.Register(farm_pb2.RegisterRequest(device=device, name=name, capabilities=CURRENT),
                              timeout=10)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (device, exc.value.details())


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_uncapped_campaign_fails_naming_the_limit_once_it_has_too_many_candidates(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=1)
    raw_wire = spec.to_wire()
    raw_wire["strategy"]["max_candidates"] = None              # a sweep over all quantizable nodes
    data_dir = tmp_path / "coord"
    with limited(data_dir, Limits(max_campaign_candidates=2)) as address, \
            AgentThread("cpu-a", address, tmp_path / "a1"), CampaignClient(address) as client:
        client.upload_missing(spec.files())
        resp = client._call(client._stub.SubmitCampaign,
                            farm_pb2.SubmitCampaignRequest(spec_json=json.dumps(raw_wire)))
        final = client.wait(resp.campaign_id, poll_s=0.2, timeout_s=120)
    assert final.state == "failed"
    assert "is 3, above the limit max_campaign_candidates=2" in final.message, final.message
    store = Store(data_dir)
    try:
        with store.transaction() as c:
            kinds = c.execute("SELECT kind, COUNT(*) FROM jobs GROUP BY kind").fetchall()
    finally:
        store.close()
    assert dict(kinds) == {"reference": 1, "candidate": 2}


def test_serve_flags_set_every_limit():
    from coordinator.cli import build_parser
    from coordinator.farm.commands import limits_from_args

    args = build_parser().parse_args(["serve", "--max-nodes", "7", "--max-message-bytes", str(4 * MIB),
                                      "--max-campaign-candidates", "9"])
    limits = limits_from_args(args)
    assert (limits.max_nodes, limits.max_message_bytes, limits.max_campaign_candidates) == (7, 4 * MIB, 9)
    assert limits.max_campaign_models == Limits().max_campaign_models
    with pytest.raises(InvalidArgument, match="max_nodes=0"):
        limits_from_args(build_parser().parse_args(["serve", "--max-nodes", "0"]))
