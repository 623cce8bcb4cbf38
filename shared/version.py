"""Versions an agent and a coordinator tell each other at registration, so skew is refused with
a clear message instead of failing later in odd ways."""
from __future__ import annotations

from importlib import metadata

#: the wire protocol this build speaks (protos/qfarm/v1); bump on an incompatible change of meaning
#: (2: .npz input sets and reference outputs, the FP32 model in candidate jobs, interleaved latency;
#: 3: whole-feed evaluation data, EvalData.data_layout, which an older agent would run as batches;
#: 4: jobs and results on the Work stream; a protocol-3 agent's Lease and ReportResult calls still work)
PROTOCOL_VERSION = 4
#: protocols a coordinator of this build accepts from agents
COMPATIBLE_PROTOCOLS = frozenset({3, 4})
#: what an agent that predates versioned registration (it sends 0) speaks
UNVERSIONED_PROTOCOL = 1


def package_version() -> str:
    try:
        return metadata.version("qfarm")
    except metadata.PackageNotFoundError:     # run from a source tree that was never installed
        return "unknown"


def protocol_mismatch(agent_protocol: int, agent_package: str) -> str | None:
    """Why an agent speaking `agent_protocol` cannot join, naming both sides; None if it can."""
    speaks = agent_protocol or UNVERSIONED_PROTOCOL
    if speaks in COMPATIBLE_PROTOCOLS:
        return None
    return (f"agent speaks qfarm protocol {agent_protocol} (package {agent_package or 'unknown'}), this coordinator "
            f"speaks protocol {PROTOCOL_VERSION} (package {package_version()}, accepts "
            f"{', '.join(map(str, sorted(COMPATIBLE_PROTOCOLS)))}): run the same qfarm version on both")
