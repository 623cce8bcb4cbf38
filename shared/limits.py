"""Bounds on untrusted input, configurable, with sane defaults; exceeding one names the limit."""
from __future__ import annotations

from dataclasses import dataclass

from shared.errors import InvalidArgument, ResourceExhausted


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

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"limit {name}={value!r} must be a positive integer")

    def check(self, name: str, value: int, what: str) -> None:
        limit = getattr(self, name)
        if value > limit:
            raise ResourceExhausted(f"{what} is {value}, above the limit {name}={limit}")


DEFAULT_LIMITS = Limits()
