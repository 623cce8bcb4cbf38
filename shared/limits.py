"""Bounds on untrusted input and on what callers may hold at once, configurable (one `coordinator
serve` flag each), with sane defaults; exceeding one names the limit."""
from __future__ import annotations

from dataclasses import dataclass

from shared.errors import InvalidArgument, ResourceExhausted

#: jobs an agent may be owed at once on its Work stream (farm.proto: WorkRequest.more_jobs, 0 to this
#: per message; credit above it is not kept): the agent never grants more, the coordinator refuses more
MAX_WORK_CREDIT = 64


@dataclass(frozen=True)
class Limits:
    max_model_bytes: int = 2 * 1024**3          # protobuf's own ceiling for a single file
    max_nodes: int = 200_000
    max_tensor_dim: int = 1 << 31                # any single declared dimension
    max_tensor_elements: int = 1 << 33           # any single initializer
    max_artifact_bytes: int = 4 * 1024**3
    max_message_bytes: int = 8 * 1024**2        # gRPC messages; artifacts travel in chunks below this
    max_campaign_candidates: int = 10_000
    max_campaign_models: int = 64
    max_campaign_devices: int = 64              # device classes of one campaign
    max_input_bytes: int = 1 << 30              # a campaign's preprocessed image tensors (images x input size)
    max_agents: int = 10_000                    # agents registered and alive at once
    # calls in progress at once, overall and from one peer address (RESOURCE_EXHAUSTED beyond):
    max_calls: int = 2048                       # short calls (register, heartbeat, status, report, ...)
    max_calls_per_peer: int = 256
    max_lease_waits: int = 10_000               # Lease long-polls (cost no thread: an idle agent holds one)
    max_lease_waits_per_peer: int = 2048
    max_streams: int = 256                      # artifact uploads and downloads
    max_streams_per_peer: int = 32
    max_open_calls: int = 64                    # the health service, which needs no token
    max_open_calls_per_peer: int = 16
    max_stream_idle_s: int = 60                 # an artifact upload or download with no chunk this long is cut
    max_stream_s: int = 3600                    # ... and any stream (health watches too) after this long

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"limit {name}={value!r} must be a positive integer")

    def check(self, name: str, value: int, what: str) -> None:
        limit = getattr(self, name)
        if value > limit:
            raise ResourceExhausted(f"{what} is {value}, above the limit {name}={limit}")


DEFAULT_LIMITS = Limits()
