"""Who may call what, and which budget of concurrent calls a call draws from: one table, method ->
(roles, pool). The gate (gate.py) enforces it before any servicer code runs;
tests/test_farm_security.py checks that every method of the wire contract is in it.

Roles (shared.auth.Role): an agent registers, leases, fetches the artifacts of its own jobs and
reports; a client submits, reads status and reports, uploads campaign files and cancels. The
health service is open (no token): probes carry no secret.

Pools: each has its own cap overall and per peer address (shared.limits.Limits), so calls that
wait by design (Lease long-polls), streams that may stall (uploads, downloads, health watches) and
unauthenticated probes never use up the budget of short control calls such as heartbeats."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Mapping

from shared.auth import Role


class Pool(str, Enum):
    CONTROL = "call"        # short unary calls
    WAIT = "lease wait"     # Lease long-polls and Work streams
    STREAM = "stream"       # artifact uploads and downloads
    OPEN = "open call"      # the health service

    @property
    def limits(self) -> tuple[str, str]:
        """The names of this pool's caps in shared.limits.Limits: (overall, per peer)."""
        base = {"call": "max_calls", "lease wait": "max_lease_waits", "stream": "max_streams",
                "open call": "max_open_calls"}[self.value]
        return base, f"{base}_per_peer"


@dataclass(frozen=True)
class Access:
    roles: frozenset[Role]      # empty: open to anyone, no token
    pool: Pool


_AGENT, _CLIENT, _OPEN = frozenset({Role.AGENT}), frozenset({Role.CLIENT}), frozenset()
_AGENTS = "/qfarm.v1.AgentService/"
_CAMPAIGNS = "/qfarm.v1.CampaignService/"
_HEALTH = "/grpc.health.v1.Health/"

ACCESS: Mapping[str, Access] = {
    _AGENTS + "Register": Access(_AGENT, Pool.CONTROL),
    _AGENTS + "Heartbeat": Access(_AGENT, Pool.CONTROL),
    _AGENTS + "Lease": Access(_AGENT, Pool.WAIT),
    _AGENTS + "FetchArtifact": Access(_AGENT, Pool.STREAM),       # only artifacts of the agent's own jobs
    _AGENTS + "UploadArtifact": Access(_AGENT, Pool.STREAM),      # only while it holds a lease
    _AGENTS + "ReportResult": Access(_AGENT, Pool.CONTROL),       # only for the attempt it holds
    _AGENTS + "Work": Access(_AGENT, Pool.WAIT),                  # jobs and results; waits like a Lease
    _AGENTS + "Deregister": Access(_AGENT, Pool.CONTROL),
    _CAMPAIGNS + "MissingArtifacts": Access(_CLIENT, Pool.CONTROL),
    _CAMPAIGNS + "UploadArtifact": Access(_CLIENT, Pool.STREAM),
    _CAMPAIGNS + "SubmitCampaign": Access(_CLIENT, Pool.CONTROL),
    _CAMPAIGNS + "GetStatus": Access(_CLIENT, Pool.CONTROL),
    _CAMPAIGNS + "GetReport": Access(_CLIENT, Pool.CONTROL),      # reports and the models in them
    _CAMPAIGNS + "CancelCampaign": Access(_CLIENT, Pool.CONTROL),
    _HEALTH + "Check": Access(_OPEN, Pool.OPEN),
    _HEALTH + "List": Access(_OPEN, Pool.OPEN),
    _HEALTH + "Watch": Access(_OPEN, Pool.OPEN),
}
