"""The coordinator's limits on what callers send (shared.limits.Limits), applied where the input
arrives: agents' registrations, uploaded artifacts, submitted campaigns and the candidates a
running campaign creates. Exceeding a limit raises ResourceExhausted naming it; malformed input
raises InvalidArgument or ModelError, so the caller gets one clear line and nothing changes.
Requests whose bytes are not a protobuf of their method's type are refused the same way."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

import grpc

from shared.artifacts import ArtifactStore
from coordinator.farm.scheduler import LeasePolicy, Scheduler
from coordinator.farm.spec import _DEVICE, CampaignSpec   # the one rule for device class keys
from coordinator.farm.store import Store
from shared.errors import InvalidArgument, QfarmError
from shared.limits import Limits
from shared.pb.qfarm.v1 import job_pb2

log = logging.getLogger(__name__)

MAX_AGENT_NAME_CHARS = 256


def check_registration(device: str, name: str) -> None:
    if not _DEVICE.match(device or ""):
        raise InvalidArgument(f"device class key {device[:80]!r} is not letters, digits, '.', '_' or '-' "
                              "(1 to 64 characters)", step="register")
    if len(name) > MAX_AGENT_NAME_CHARS:
        raise InvalidArgument(f"agent name of {len(name)} characters is longer than {MAX_AGENT_NAME_CHARS}",
                              step="register")


def planned_candidates(spec: CampaignSpec) -> int | None:
    """Candidates per model the spec caps itself to (max_candidates, budget_evals), or None."""
    caps = [c for c in (spec.max_candidates, spec.budget_evals) if c is not None]
    return min(caps) if caps else None


def check_campaign(spec: CampaignSpec, limits: Limits, artifacts: ArtifactStore, scratch: Path) -> None:
    """Before a campaign is accepted: its size, and each model file as hostile input (size, parse,
    node count, dimensions, external data) in a folder holding only that file."""
    from coordinator.prepare import load_model

    limits.check("max_campaign_models", len(spec.models), f"the number of models of campaign {spec.name!r}")
    per_model = planned_candidates(spec)
    if per_model is not None:
        limits.check("max_campaign_candidates", per_model * len(spec.models),
                     f"the planned candidates of campaign {spec.name!r} ({len(spec.models)} model(s) x {per_model})")
    for model in spec.models:
        limits.check("max_model_bytes", model.file.size_bytes, f"the size of model {model.file.name}")
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch, prefix="admit-") as tmp:
            staged = Path(tmp) / model.file.name
            _stage(artifacts.get(model.file.sha256).path, staged)
            try:
                load_model(staged, limits)
            except QfarmError as exc:     # name the user's file, not the coordinator's scratch path
                raise type(exc)(exc.args[0].replace(str(staged), model.file.name), step=exc.step) from None


def _stage(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class BoundedScheduler(Scheduler):
    """A Scheduler that refuses a campaign's candidate job once the campaign has
    `max_campaign_candidates` distinct candidates: the campaign then fails naming the limit. This
    bounds strategies without a cap (greedy over a large model), which the submit check cannot."""

    def __init__(self, store: Store, policy: LeasePolicy, clock: Callable[[], float], limits: Limits):
        super().__init__(store, policy, clock)
        self.limits = limits
        self._candidates: dict[str, set[str]] = {}
        self._guard = threading.Lock()

    def _known(self, campaign_id: str) -> set[str]:
        if campaign_id not in self._candidates:    # first sight (e.g. after a restart): what the store has
            with self.store.transaction() as c:
                rows = c.execute("SELECT DISTINCT j.candidate_id FROM campaign_jobs cj JOIN jobs j "
                                 "ON j.job_id = cj.job_id WHERE cj.campaign_id = ? AND j.kind = 'candidate'",
                                 (campaign_id,)).fetchall()
            self._candidates[campaign_id] = {r[0] for r in rows}
        return self._candidates[campaign_id]

    def submit(self, job: job_pb2.Job, kind: str, priority: int, campaign_id: str):
        if kind == "candidate":
            with self._guard:
                known = self._known(campaign_id)
                if job.candidate.id not in known:
                    self.limits.check("max_campaign_candidates", len(known) + 1,
                                      f"the number of candidates of campaign {campaign_id}")
                    known.add(job.candidate.id)
        return super().submit(job, kind, priority, campaign_id)


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the handler can refuse it by name."""

    def __init__(self, error: str):
        self.error = error


class MalformedRequests(grpc.ServerInterceptor):
    """A request that is not a valid protobuf of its method's type is answered INVALID_ARGUMENT,
    naming the method, instead of gRPC's generic INTERNAL "Exception deserializing request!"."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _guarded(handler, handler_call_details.method)


def _guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer

    def safe_parse(data: bytes):
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's malformed request
            return _Malformed(f"{type(exc).__name__}: {str(exc)[:200]}")

    def message(bad: _Malformed) -> str:
        return f"malformed {method} request ({bad.error})"

    def checked(requests):      # raised inside the servicer's loop: its error mapping answers INVALID_ARGUMENT
        for request in requests:
            if isinstance(request, _Malformed):
                raise InvalidArgument(message(request), step="input")
            yield request

    kind = (handler.request_streaming, handler.response_streaming)
    inner = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
             (True, False): handler.stream_unary, (True, True): handler.stream_stream}[kind]
    if handler.request_streaming:
        def behaviour(requests, context):
            return inner(checked(requests), context)
    else:
        def behaviour(request, context):
            if isinstance(request, _Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input: {message(request)}")
            return inner(request, context)
    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[kind]
    return make(behaviour, request_deserializer=safe_parse, response_serializer=handler.response_serializer)
