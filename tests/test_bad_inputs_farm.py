"""A corpus of malformed input (> 200 cases) fed to ONE running coordinator (token required, small
message limit) and its agent, over the wire: hostile model uploads, bad campaign specs (every
field), wrong image files, malformed and oversize gRPC messages, missing and wrong tokens, agent
calls and results for jobs never leased, and jobs with garbage artifacts run by a real agent.
Each must get a clear, typed answer (a status code with a one-line message, a failed campaign
with its reason, or a crash result with its cause) and crash nothing: afterwards the same
coordinator and agent run a normal campaign to the end."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import pytest

from coordinator.farm.client import CampaignClient
from coordinator.farm.evaluator import npy_bytes
from coordinator.farm.scheduler import PRIORITY_REFERENCE
from coordinator.farm.spec import spec_from_local
from shared.auth import AgentIdentity, Credentials, ServerSecurity
from shared.errors import QfarmError
from shared.feeds import npz_bytes
from shared.limits import Limits
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from coordinator.testing import ProtocolAgent
from tests.farm_support import CURRENT, IMAGES, read_json, results_per_pair, tiny_spec, wait_for
from tests.models import make_classifier
from tests.security_support import running_agent, secured
from tests.test_hostile_models import VALID_NON_IMAGE
from tests.test_hostile_models import _corpus as hostile_model_corpus   # the same ~170 files prepare_model faces

log = logging.getLogger(__name__)

TOKEN = "bad-inputs-corpus-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MIB = 1 << 20
LIMITS = Limits(max_message_bytes=2 * MIB, max_artifact_bytes=16 * MIB)
NOBODY = "nobody-serves-this"          # device class without agents: accepted campaigns fail fast on it
AGENT_METHODS = ("Register", "Heartbeat", "Lease", "FetchArtifact", "UploadArtifact", "ReportResult", "Deregister")
CAMPAIGN_METHODS = ("MissingArtifacts", "UploadArtifact", "SubmitCampaign", "GetStatus", "GetReport", "CancelCampaign")
STREAM_REQUEST = {"UploadArtifact"}
STREAM_RESPONSE = {"FetchArtifact"}
TYPED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
         grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def small_spec(name: str, model: Path, images: Path, source: Path):
    """A campaign on NOBODY over a few images: cheap to prepare, fails fast once valid."""
    return spec_from_local({"name": name, "devices": [NOBODY], "device_timeout_s": 1,
                            "models": [{"path": str(model), "name": "m"}],
                            "data": {"images": str(images), "calibration": 2, "eval": 2, "latency_runs": 0},
                            "preprocess": {"input_size": 32}, "quantization": {"calibration_images": 2},
                            "strategy": {"max_candidates": 1}}, name, source)


def one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message and "internal error" not in message


class Corpus:
    """Collects every case's outcome; a case may appear once."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def add(self, case: str, outcome: str) -> None:
        assert case not in self.outcomes, f"case {case} twice"
        assert one_line(outcome), (case, outcome)
        self.outcomes[case] = outcome


def _rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value


def _wait_failed(server, client: CampaignClient, campaign_id: str) -> str:
    server.coordinator.campaigns.wait(campaign_id, timeout=120)
    [status] = client.status(campaign_id).campaigns
    assert status.state == "failed", (campaign_id, status.state, status.message)
    return status.message


# ------------------------------------------------------------------------------------------ models
def model_uploads(corpus: Corpus, server, client: CampaignClient, tmp_path: Path, images: Path) -> None:
    """Every file of the hostile-model corpus, uploaded and submitted as a campaign's model."""
    (tmp_path / "hostile").mkdir()
    cases = hostile_model_corpus(tmp_path / "hostile")
    submitted: dict[str, str] = {}
    for name, path in cases:
        try:
            submitted[name] = client.submit(small_spec("hostile", path, images, tmp_path))
        except QfarmError as exc:            # refused at submit: parse, limits, external data
            corpus.add(f"model:{name}", f"refused: {exc}")
    for name, campaign_id in submitted.items():
        message = _wait_failed(server, client, campaign_id)
        if name.startswith("bitflip-") and "no agent of device class" in message:
            corpus.add(f"model:{name}", f"valid model (weights flipped): {message}")   # as in the hostile test
        else:   # a valid model with several or non-image inputs fails where images cannot feed it
            assert message.startswith("data: " if name in VALID_NON_IMAGE else "prepare"), (name, message)
            corpus.add(f"model:{name}", f"campaign failed: {message}")
    assert corpus.outcomes["model:external-../secret.bin"].startswith("refused") and \
        "outside its folder" in corpus.outcomes["model:external-../secret.bin"]
    assert "outside its folder" in corpus.outcomes["model:external-/etc/passwd"]
    assert "max_tensor_dim" in corpus.outcomes["model:huge-dim"]


# ------------------------------------------------------------------------------------------ specs
def _parent(spec: dict, path: str):
    """The container holding the last key of a dotted path ("models.0.file") and that key."""
    *parents, last = path.split(".")
    target = spec
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    return target, int(last) if isinstance(target, list) else last


def _set(path: str, value) -> Callable[[dict], None]:
    def mutate(spec: dict) -> None:
        target, key = _parent(spec, path)
        target[key] = value
    return mutate


def _drop(path: str) -> Callable[[dict], None]:
    def mutate(spec: dict) -> None:
        target, key = _parent(spec, path)
        del target[key]
    return mutate


SPEC_FIELD_CASES: list[tuple[str, Callable[[dict], None], str]] = [
    ("name-int", _set("name", 5), "name"),
    ("name-empty", _set("name", " "), "name"),
    ("devices-missing", _drop("devices"), "devices"),
    ("devices-empty", _set("devices", []), "devices"),
    ("devices-string", _set("devices", "cpu-a"), "devices"),
    ("devices-int", _set("devices", [1]), "devices"),
    ("devices-bad-key", _set("devices", ["bad key!"]), "devices"),
    ("devices-twice", _set("devices", ["cpu-a", "cpu-a"]), "devices"),
    ("devices-long", _set("devices", ["x" * 65]), "devices"),
    ("timeout-negative", _set("device_timeout_s", -1), "device_timeout_s"),
    ("timeout-string", _set("device_timeout_s", "soon"), "device_timeout_s"),
    ("timeout-bool", _set("device_timeout_s", True), "device_timeout_s"),
    ("objectives-unknown", _set("objectives", ["speed"]), "objectives"),
    ("objectives-string", _set("objectives", "accuracy_loss"), "objectives"),
    ("models-missing", _drop("models"), "models"),
    ("models-empty", _set("models", []), "models"),
    ("models-int", _set("models", [1]), "models[0]"),
    ("models-string", _set("models", "m.onnx"), "models"),
    ("model-no-file", _drop("models.0.file"), "models[0].file"),
    ("model-file-keys", _set("models.0.file", {"name": "m.onnx"}), "models[0].file"),
    ("model-sha-short", _set("models.0.file.sha256", "abc"), "sha256"),
    ("model-sha-upper", _set("models.0.file.sha256", "A" * 64), "sha256"),
    ("model-size-negative", _set("models.0.file.size_bytes", -1), "size_bytes"),
    ("model-size-string", _set("models.0.file.size_bytes", "1"), "size_bytes"),
    ("model-name-traversal", _set("models.0.file.name", "../m.onnx"), "plain file name"),
    ("model-name-dotdot", _set("models.0.file.name", ".."), "plain file name"),
    ("model-name-slash", _set("models.0.file.name", "a/b.onnx"), "plain file name"),
    ("model-label-bad", _set("models.0.name", "bad name!"), "models[0].name"),
    ("model-unknown-key", _set("models.0.path", "/etc/passwd"), "models[0].path"),
    ("model-excludes-string", _set("models.0.excludes", "conv0"), "models[0].excludes"),
    ("model-excludes-empty-name", _set("models.0.excludes", [""]), "models[0].excludes"),
    ("model-excludes-int", _set("models.0.excludes", [3]), "models[0].excludes"),
    ("model-never-uploaded", _set("models.0.file.sha256", "0" * 64), "not uploaded"),
    ("data-string", _set("data", "images/"), "data"),
    ("data-unknown", _set("data.extra", 1), "data.extra"),
    ("images-missing", _drop("data.images"), "data.images"),
    ("images-empty", _set("data.images", []), "data.images"),
    ("images-string", _set("data.images", "/etc"), "data.images"),
    ("images-bad-entry", _set("data.images.0", {"name": "x.jpg"}), "data.images[0]"),
    ("calibration-images-empty", _set("data.calibration_images", []), "data.calibration_images"),
    ("calibration-zero", _set("data.calibration", 0), "data.calibration"),
    ("calibration-string", _set("data.calibration", "8"), "data.calibration"),
    ("eval-zero", _set("data.eval", 0), "data.eval"),
    ("eval-float", _set("data.eval", 1.5), "data.eval"),
    ("labels-unknown", _set("data.labels", "imagenet"), "data.labels"),
    ("latency-negative", _set("data.latency_runs", -1), "data.latency_runs"),
    ("seed-negative", _set("data.seed", -1), "data.seed"),
    ("preprocess-string", _set("preprocess", "imagenet"), "preprocess"),
    ("preprocess-unknown", _set("preprocess.gamma", 2.2), "preprocess.gamma"),
    ("input-size-zero", _set("preprocess.input_size", 0), "preprocess"),
    ("input-size-huge", _set("preprocess.input_size", 100_000), "preprocess"),
    ("input-size-string", _set("preprocess.input_size", "x"), "preprocess"),
    ("mean-short", _set("preprocess.mean", [0.5]), "preprocess"),
    ("std-zero", _set("preprocess.std", [0, 0, 0]), "preprocess"),
    ("layout-unknown", _set("preprocess.layout", "CHWN"), "preprocess"),
    ("pixel-scale-odd", _set("preprocess.pixel_scale", 7), "preprocess"),
    ("quantization-string", _set("quantization", "int8"), "quantization"),
    ("quantization-unknown", _set("quantization.bits", 4), "quantization.bits"),
    ("mode-unknown", _set("quantization.mode", "fancy"), "quantization"),
    ("format-unknown", _set("quantization.format", "qnn"), "quantization"),
    ("per-channel-string", _set("quantization.per_channel", "yes"), "quantization"),
    ("calibrate-unknown", _set("quantization.calibrate", "magic"), "quantization"),
    ("activation-type-unknown", _set("quantization.activation_type", "int4"), "quantization"),
    ("weight-type-unknown", _set("quantization.weight_type", "fp8"), "quantization"),
    ("calibration-count-zero", _set("quantization.calibration_images", 0), "quantization"),
    ("recipe-string", _set("quantization.recipe", "cle"), "campaign spec"),
    ("strategy-string", _set("strategy", "sweep"), "strategy"),
    ("strategy-unknown", _set("strategy.speed", 2), "strategy.speed"),
    ("strategy-name-unknown", _set("strategy.name", "annealing"), "strategy.name"),
    ("max-candidates-zero", _set("strategy.max_candidates", 0), "strategy.max_candidates"),
    ("max-candidates-string", _set("strategy.max_candidates", "8"), "strategy.max_candidates"),
    ("ranking-unknown", _set("strategy.ranking", "random"), "strategy.ranking"),
    ("ranking-images-zero", _set("strategy.ranking_images", 0), "strategy.ranking_images"),
    ("agreement-drop-above-one", _set("strategy.max_agreement_drop", 2), "strategy.max_agreement_drop"),
    ("top1-drop-negative", _set("strategy.max_top1_drop", -0.1), "strategy.max_top1_drop"),
    ("budget-evals-zero", _set("strategy.budget_evals", 0), "strategy.budget_evals"),
    ("budget-seconds-negative", _set("strategy.budget_seconds", -1), "strategy.budget_seconds"),
    ("top-unknown", _set("owner", "mallory"), "owner"),
]
SPEC_TEXT_CASES = [("not-json", "{devices:", "not valid JSON"), ("json-array", "[]", "table/object"),
                   ("json-string", '"campaign"', "table/object"), ("json-null", "null", "table/object"),
                   ("json-number", "42", "table/object"), ("empty-object", "{}", "devices"),
                   ("deep-nesting", "[" * 100_000 + "]" * 100_000, "nested too deeply")]
# valid specs whose problem shows when the campaign runs: it fails, naming it
SPEC_RUNTIME_CASES = [("excludes-unknown-node", _set("models.0.excludes", ["no_such_node"]), "no_such_node"),
                      ("eval-more-than-images", _set("data.eval", 10_000), "--eval 10000")]


def bad_specs(corpus: Corpus, server, client: CampaignClient, base: dict) -> None:
    def submit(text: str) -> str:
        return client._call(client._stub.SubmitCampaign, farm_pb2.SubmitCampaignRequest(spec_json=text)).campaign_id

    for name, text, expected in SPEC_TEXT_CASES:
        with pytest.raises(QfarmError) as exc:
            submit(text)
        assert expected in str(exc.value), (name, str(exc.value))
        corpus.add(f"spec:{name}", str(exc.value)[:300])
    for name, mutate, expected in SPEC_FIELD_CASES:
        spec = copy.deepcopy(base)
        mutate(spec)
        with pytest.raises(QfarmError) as exc:
            submit(json.dumps(spec))
        assert expected in str(exc.value), (name, str(exc.value))
        corpus.add(f"spec:{name}", str(exc.value))
    for name, mutate, expected in SPEC_RUNTIME_CASES:
        spec = copy.deepcopy(base)
        mutate(spec)
        message = _wait_failed(server, client, submit(json.dumps(spec)))
        assert expected in message, (name, message)
        corpus.add(f"spec:{name}", f"campaign failed: {message}")


# ------------------------------------------------------------------------------------------ images
def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def bad_images(corpus: Corpus, server, client: CampaignClient, model: Path, tmp_path: Path) -> None:
    real = next(IMAGES.glob("*.jpg")).read_bytes()
    rng = np.random.default_rng(3)
    contents = {"empty": b"", "random": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
                "text": b"these are not the pixels you are looking for\n" * 20, "truncated-jpeg": real[:300],
                "png-signature-only": b"\x89PNG\r\n\x1a\n", "png-header-only": _png_header(64, 64),
                "png-decompression-bomb": _png_header(100_000, 100_000),
                "gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "html": b"<html><body>cat.jpg</body></html>",
                "corrupt-jpeg-body": real[:200] + bytes(len(real) - 200)}
    for name, data in contents.items():
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for i in range(4):                    # the synset in the name is right: only the pixels are wrong
            (folder / f"n01440764_{name}{i}.jpg").write_bytes(data)
        message = _wait_failed(server, client, client.submit(small_spec(f"images-{name}", model, folder, tmp_path)))
        assert "cannot read image" in message and f"n01440764_{name}" in message, (name, message)
        corpus.add(f"image:{name}", message)
    unlabeled = tmp_path / "images" / "no-synset"
    unlabeled.mkdir()
    for i in range(4):
        (unlabeled / f"cat{i}.jpg").write_bytes(real)
    message = _wait_failed(server, client, client.submit(small_spec("no-synset", model, unlabeled, tmp_path)))
    assert "synset" in message and "cat" in message, message
    corpus.add("image:no-synset-in-name", message)


# ------------------------------------------------------------------------------------------ raw gRPC
def _raw_call(channel: grpc.Channel, service: str, method: str, payload: bytes, metadata=AUTH):
    path = f"/qfarm.v1.{service}/{method}"
    if method in STREAM_REQUEST:
        return channel.stream_unary(path)(iter([payload]), metadata=metadata, timeout=30)
    if method in STREAM_RESPONSE:
        return list(channel.unary_stream(path)(payload, metadata=metadata, timeout=30))
    return channel.unary_unary(path)(payload, metadata=metadata, timeout=30)


MALFORMED = {"bad-varint": b"\x08" + b"\xff" * 11, "truncated-field": b"\x0a\x10abc", "wire-type-7": b"\x0f\x01",
             "end-group-alone": b"\x0c"}


def malformed_messages(corpus: Corpus, server, channel: grpc.Channel, authed: grpc.Channel) -> None:
    """As a registered agent holding a lease (agent calls) and as a client."""
    insider = ProtocolAgent(authed, "malformed-dev", name="malformed")
    insider.register()
    job = job_pb2.Job(job_id="malformed@malformed-dev", device="malformed-dev", reference=True)
    job.candidate.id = "malformed"
    server.coordinator.scheduler.submit(job, "reference", PRIORITY_REFERENCE, "corpus")
    assert len(insider.lease()) == 1
    as_agent = AUTH + insider.metadata()
    for service, methods in (("AgentService", AGENT_METHODS), ("CampaignService", CAMPAIGN_METHODS)):
        metadata = as_agent if service == "AgentService" else AUTH
        for method in methods:
            for label, payload in MALFORMED.items():
                error = _rpc_error(lambda: _raw_call(channel, service, method, payload, metadata))
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, label, error.code(), error.details())
                assert f"malformed /qfarm.v1.{service}/{method} request" in error.details()
                corpus.add(f"grpc:{service}.{method}:{label}", error.details())
    oversize = [("AgentService", "Register", farm_pb2.RegisterRequest(device="cpu-a", name="n" * (3 * MIB))),
                ("CampaignService", "SubmitCampaign", farm_pb2.SubmitCampaignRequest(spec_json="{" * (3 * MIB))),
                ("CampaignService", "UploadArtifact", farm_pb2.ArtifactChunk(data=b"\0" * (3 * MIB))),
                ("AgentService", "ReportResult", farm_pb2.ReportResultRequest(
                    result=job_pb2.DeviceResult(stderr_tail="x" * (3 * MIB))))]
    for service, method, message in oversize:
        error = _rpc_error(lambda: _raw_call(channel, service, method, message.SerializeToString()))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, error.code(), error.details())
        corpus.add(f"grpc:{service}.{method}:oversize", error.details())


def bad_tokens(corpus: Corpus, channel: grpc.Channel) -> None:
    variants = {"missing": (), "wrong": (("authorization", "Bearer " + TOKEN[::-1]),),
                "basic-scheme": (("authorization", f"Basic {TOKEN}"),)}
    for service, methods in (("AgentService", AGENT_METHODS), ("CampaignService", CAMPAIGN_METHODS)):
        for method in methods:
            for label, metadata in variants.items():
                error = _rpc_error(lambda: _raw_call(channel, service, method, b"", metadata=metadata))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method, label, error.code())
                corpus.add(f"token:{service}.{method}:{label}", error.details())


# ------------------------------------------------------------------------------------------ agent path
def agent_calls(corpus: Corpus, server, channel: grpc.Channel) -> None:
    """Calls an agent (or someone posing as one) could make wrongly, and results for jobs never leased."""
    stub = farm_pb2_grpc.AgentServiceStub(channel)
    sched, ctx = server.coordinator.scheduler, server.coordinator.ctx

    def expect(case: str, code: grpc.StatusCode, call: Callable[[], object], text: str = "") -> None:
        error = _rpc_error(call)
        assert error.code() == code, (case, error.code(), error.details())
        assert text in error.details(), (case, error.details())
        corpus.add(f"agent:{case}", error.details())

    caps = farm_pb2.AgentCapabilities(slots=1, protocol_version=CURRENT.protocol_version)
    registered = stub.Register(farm_pb2.RegisterRequest(device="ghost", name="ghost", capabilities=caps),
                               metadata=AUTH, timeout=10)
    ghost = registered.agent_id
    as_ghost = AUTH + AgentIdentity(ghost, registered.agent_secret).metadata()
    model = ctx.register_bytes(b"not a model", "model", "ghost.onnx")
    for i in range(2):
        job = job_pb2.Job(job_id=f"ghost-{i}@ghost", device="ghost", reference=True)
        job.candidate.id = f"ghost-{i}"
        job.candidate.model.CopyFrom(model)
        sched.submit(job, "reference", PRIORITY_REFERENCE, "corpus")
    [leased] = stub.Lease(farm_pb2.LeaseRequest(agent_id=ghost, max_jobs=1), metadata=as_ghost, timeout=10).jobs
    never = "ghost-1@ghost" if leased.job_id == "ghost-0@ghost" else "ghost-0@ghost"

    def report(job_id: str, attempt: int, metadata=as_ghost, **fields):
        values = {"device": "ghost", "candidate_id": job_id.split("@")[0], "status": job_pb2.RESULT_STATUS_OK,
                  **fields}
        result = job_pb2.DeviceResult(job_id=job_id, attempt=attempt, **values)
        return lambda: stub.ReportResult(farm_pb2.ReportResultRequest(agent_id=ghost, result=result),
                                         metadata=metadata, timeout=10)

    denied = grpc.StatusCode.PERMISSION_DENIED
    forged = AUTH + AgentIdentity(ghost, "not-the-secret-" + "x" * 30).metadata()
    stranger = AUTH + AgentIdentity("0" * 16, registered.agent_secret).metadata()
    expect("result-unknown-job", denied, report("nope@ghost", 1), "not leased")
    expect("result-never-leased", denied, report(never, 1), "not leased")
    expect("result-attempt-zero", denied, report(leased.job_id, 0), "not leased")
    expect("result-attempt-negative", grpc.StatusCode.INVALID_ARGUMENT, report(leased.job_id, -3), ">= 0")
    expect("result-future-attempt", denied, report(leased.job_id, 2), "not leased")
    expect("result-no-identity", denied, report(leased.job_id, 1, metadata=AUTH), "identity")
    expect("result-wrong-secret", denied, report(leased.job_id, 1, metadata=forged), "secret is wrong")
    expect("result-unknown-agent", denied, report(leased.job_id, 1, metadata=stranger), "request names agent")
    expect("result-nan-accuracy", grpc.StatusCode.INVALID_ARGUMENT,
           report(leased.job_id, 1, top1_agreement=float("nan")), "top1_agreement=nan")
    expect("result-inf-latency", grpc.StatusCode.INVALID_ARGUMENT,
           report(leased.job_id, 1, latency_ms_p50=float("inf")), "latency_ms_p50=inf")
    expect("result-negative-size", grpc.StatusCode.INVALID_ARGUMENT, report(leased.job_id, 1, size_bytes=-1), ">= 0")
    expect("result-huge-stderr", grpc.StatusCode.INVALID_ARGUMENT,
           report(leased.job_id, 1, stderr_tail="x" * 70_000), "stderr_tail has 70000 characters")
    expect("result-wrong-device", grpc.StatusCode.INVALID_ARGUMENT, report(leased.job_id, 1, device="cpu-a"),
           "names device")
    expect("result-wrong-candidate", grpc.StatusCode.INVALID_ARGUMENT, report(leased.job_id, 1, candidate_id="x"),
           "names candidate")
    expect("result-status-unknown", grpc.StatusCode.INVALID_ARGUMENT, report(leased.job_id, 1, status=99), "status")
    expect("result-status-unspecified", grpc.StatusCode.INVALID_ARGUMENT, report(leased.job_id, 1, status=0),
           "status")
    expect("result-reference-without-fp32", grpc.StatusCode.INVALID_ARGUMENT, report(leased.job_id, 1),
           "FP32 outputs")
    with server.coordinator.store.transaction() as c:
        assert c.results([leased.job_id, never]) == {}          # none of it was recorded
    for label, metadata in (("no-identity", AUTH), ("wrong-secret", forged)):
        expect(f"heartbeat-{label}", denied, lambda: stub.Heartbeat(
            farm_pb2.HeartbeatRequest(agent_id=ghost, running=[farm_pb2.JobRef(job_id=never, attempt=1)]),
            metadata=metadata, timeout=10))
        expect(f"lease-{label}", denied, lambda: stub.Lease(farm_pb2.LeaseRequest(agent_id=ghost, max_jobs=1),
                                                            metadata=metadata, timeout=10))
        expect(f"deregister-{label}", denied, lambda: stub.Deregister(farm_pb2.DeregisterRequest(agent_id=ghost),
                                                                      metadata=metadata, timeout=10))
    expect("heartbeat-negative-slots", grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Heartbeat(
        farm_pb2.HeartbeatRequest(agent_id=ghost, free_slots=-5), metadata=as_ghost, timeout=10), "free_slots")
    expect("heartbeat-running-bomb", grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Heartbeat(
        farm_pb2.HeartbeatRequest(agent_id=ghost, running=[farm_pb2.JobRef(job_id=str(i), attempt=1)
                                                           for i in range(5000)]), metadata=as_ghost, timeout=10),
        "running jobs listed")
    for label, device in (("register-empty-device", ""), ("register-bad-device", "a b"),
                          ("register-traversal-device", "../../etc")):
        expect(label, grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Register(
            farm_pb2.RegisterRequest(device=device, name="x", capabilities=CURRENT), metadata=AUTH, timeout=10), "device class key")

    def fetch(sha: str, offset: int = 0):
        return lambda: list(stub.FetchArtifact(farm_pb2.FetchArtifactRequest(sha256=sha, offset=offset),
                                               metadata=as_ghost, timeout=10))

    expect("fetch-bad-sha", grpc.StatusCode.INVALID_ARGUMENT, fetch("../../etc/passwd"), "64 lowercase hex")
    expect("fetch-empty-sha", grpc.StatusCode.INVALID_ARGUMENT, fetch(""), "64 lowercase hex")
    expect("fetch-unknown-sha", denied, fetch("f" * 64), "belongs to no job leased")
    expect("fetch-offset-past-end", grpc.StatusCode.INVALID_ARGUMENT, fetch(model.sha256, 10_000), "offset")
    expect("fetch-offset-negative", grpc.StatusCode.INVALID_ARGUMENT, fetch(model.sha256, -1), "offset")

    def upload(chunks: list[farm_pb2.ArtifactChunk]):
        return lambda: stub.UploadArtifact(iter(chunks), metadata=as_ghost, timeout=10)

    data = b"some artifact bytes"
    right = job_pb2.Artifact(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    expect("upload-no-chunks", grpc.StatusCode.INVALID_ARGUMENT, upload([]), "must start")
    expect("upload-no-sha", grpc.StatusCode.INVALID_ARGUMENT, upload([farm_pb2.ArtifactChunk(data=data)]),
           "must start")
    expect("upload-bad-sha", grpc.StatusCode.INVALID_ARGUMENT, upload([farm_pb2.ArtifactChunk(
        artifact=job_pb2.Artifact(sha256="xyz"), data=data)]), "64 lowercase hex")
    expect("upload-sha-mismatch", grpc.StatusCode.INVALID_ARGUMENT, upload([farm_pb2.ArtifactChunk(
        artifact=job_pb2.Artifact(sha256="e" * 64), data=data)]), "expected")
    expect("upload-size-mismatch", grpc.StatusCode.INVALID_ARGUMENT, upload([farm_pb2.ArtifactChunk(
        artifact=job_pb2.Artifact(sha256=right.sha256, size_bytes=5), data=data)]), "declared 5 bytes")
    expect("upload-size-short", grpc.StatusCode.INVALID_ARGUMENT, upload([farm_pb2.ArtifactChunk(
        artifact=job_pb2.Artifact(sha256=right.sha256, size_bytes=500), data=data)]), "declared 500 bytes")
    expect("upload-offset-gap", grpc.StatusCode.INVALID_ARGUMENT, upload([
        farm_pb2.ArtifactChunk(artifact=right, data=data[:5], offset=0),
        farm_pb2.ArtifactChunk(data=data[5:], offset=9)]), "offset 9")
    expect("upload-declared-too-big", grpc.StatusCode.RESOURCE_EXHAUSTED, upload([farm_pb2.ArtifactChunk(
        artifact=job_pb2.Artifact(sha256=right.sha256, size_bytes=1 << 40), data=data)]), "max_artifact_bytes")
    assert not ctx.artifacts.has(right.sha256)


def garbage_jobs(corpus: Corpus, server, agent) -> None:
    """Jobs whose artifacts are garbage, run by the real agent: each is a crash result with a cause."""
    sched, ctx = server.coordinator.scheduler, server.coordinator.ctx
    good = np.zeros((2, 3, 32, 32), np.float32)
    model = make_classifier(Path(agent.work_dir) / "garbage-good.onnx")
    cases = {"model-random-bytes": (np.random.default_rng(5).bytes(3000), npz_bytes({"input": good})),
             "model-empty": (b"", npz_bytes({"input": good})),
             "inputs-not-npz": (model.read_bytes(), b"PK\x03\x04 a zip, not an array"),
             "inputs-an-npy": (model.read_bytes(), npy_bytes(good)),
             "inputs-wrong-shape": (model.read_bytes(), npz_bytes({"input": np.zeros((2, 7), np.float32)})),
             "input-name-wrong": (model.read_bytes(), npz_bytes({"no_such_input": good})),
             "inputs-wrong-dtype": (model.read_bytes(), npz_bytes({"input": good.astype(np.float64)}))}
    ids = {}
    for name, (model_bytes, inputs) in cases.items():
        job = job_pb2.Job(job_id=f"garbage-{name}@cpu-a", device="cpu-a", reference=True,
                          data=job_pb2.EvalData(latency_runs=1))
        job.candidate.id = f"garbage-{name}"
        job.candidate.model.CopyFrom(ctx.register_bytes(model_bytes, "model", f"{name}.onnx"))
        job.data.inputs.CopyFrom(ctx.register_bytes(inputs, "inputs", f"{name} inputs"))
        sched.submit(job, "reference", PRIORITY_REFERENCE, "corpus")
        ids[name] = job.job_id
    for name, job_id in ids.items():
        row = wait_for(lambda: sched.results([job_id]).get(job_id), 90, f"the result of {job_id}")
        result = job_pb2.DeviceResult.FromString(row.payload)
        assert row.status in ("crash", "unsupported"), (name, row.status)
        assert result.crash_cause.startswith("error:") and result.crash_cause != "error:", (name, result.crash_cause)
        corpus.add(f"job:{name}", f"{row.status}: {result.crash_cause.splitlines()[0][:300]}")


# ------------------------------------------------------------------------------------------ the test
def test_bad_input_corpus_over_the_wire_then_a_normal_campaign(tmp_path, caplog):
    creds = Credentials(token=TOKEN)
    model = make_classifier(tmp_path / "tiny.onnx")
    images = tmp_path / "few-images"
    images.mkdir()
    for path in sorted(IMAGES.glob("*.jpg"))[:8]:
        shutil.copy(path, images / path.name)
    corpus = Corpus()
    with secured(tmp_path / "coord", ServerSecurity(token=TOKEN), LIMITS) as (server, address), \
            running_agent("cpu-a", address, tmp_path / "agent", creds) as agent, \
            CampaignClient(address, credentials=creds) as client, grpc.insecure_channel(address) as channel, \
            creds.channel(address) as authed:
        model_uploads(corpus, server, client, tmp_path, images)
        base_spec = small_spec("base", model, images, tmp_path)
        client.upload_missing(base_spec.files())
        bad_specs(corpus, server, client, base_spec.to_wire())
        bad_images(corpus, server, client, model, tmp_path)
        malformed_messages(corpus, server, channel, authed)
        bad_tokens(corpus, channel)
        agent_calls(corpus, server, channel)
        garbage_jobs(corpus, server, agent)
        log.info("%d malformed inputs answered; by kind: %s", len(corpus.outcomes),
                 {k: sum(c.startswith(k + ":") for c in corpus.outcomes)
                  for k in ("model", "spec", "image", "grpc", "token", "agent", "job")})
        (tmp_path / "outcomes.json").write_text(json.dumps(corpus.outcomes, indent=1))   # for a reader
        assert len(corpus.outcomes) >= 200
        bugs = [r.getMessage() for r in caplog.records if r.name.startswith("coordinator") and
                r.levelno >= logging.ERROR]
        assert bugs == [], bugs         # no "internal error in an RPC", no crashed campaign thread
        assert "coord/tmp" not in corpus.outcomes["model:truncated-0"]       # the user's file name, not ours

        # the same coordinator and agent still run a normal campaign correctly
        spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=2)
        campaign_id = client.submit(spec)
        final = client.wait(campaign_id, poll_s=0.2, timeout_s=120)
        assert final.state == "done", final.message
        client.report(campaign_id, tmp_path / "report")
        assert agent.counters["registrations"] == 1             # the agent never had to start over
    pairs = results_per_pair(read_json(tmp_path / "report" / "report.json"))
    assert len(pairs) == 2 and all(r["status"] == "ok" for r in pairs.values())
