"""The farm harness shipped in qfarm (coordinator/testing.py) with an injected clock, and the
versions agents and coordinators exchange at registration: an agent of another protocol is
refused by name and stops, instead of failing later."""
from __future__ import annotations

import grpc
import pytest

from coordinator.testing import FAST, Farm, ManualClock, wait_for
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc
from shared.version import PROTOCOL_VERSION, package_version


def _register(address: str, protocol: int, name: str = "raw") -> farm_pb2.RegisterResponse:
    with grpc.insecure_channel(address) as channel:
        caps = farm_pb2.AgentCapabilities(slots=1, package_version="9.9.9", protocol_version=protocol)
        return farm_pb2_grpc.AgentServiceStub(channel).Register(
            farm_pb2.RegisterRequest(device="cpu-x", name=name, capabilities=caps), timeout=10)


def _agent_states(farm: Farm) -> dict[str, str]:
    with farm.client() as client:
        return {a.name: a.state for a in client.status().agents}


def test_the_injected_clock_drives_missing_and_eviction_without_waiting(tmp_path):
    clock = ManualClock()
    with Farm(tmp_path, clock=clock) as farm:
        _register(farm.address, PROTOCOL_VERSION, name="silent")          # registers, never heartbeats
        assert _agent_states(farm) == {"silent": "idle"}
        clock.advance(FAST.missing_after_s + 0.1)
        wait_for(lambda: _agent_states(farm) == {"silent": "missing"}, 10, "the agent to go missing")
        clock.advance(FAST.evict_after_s)
        wait_for(lambda: _agent_states(farm) == {"silent": "evicted"}, 10, "the agent to be evicted")


def test_registration_carries_versions_and_status_shows_them(tmp_path):
    with Farm(tmp_path, agents={"cpu-x": "ort"}) as farm:
        agent = farm.agents[0]
        wait_for(lambda: agent.counters["registrations"], 30, "the agent to register")
        with farm.client() as client:
            [status] = client.status().agents
        assert status.capabilities.protocol_version == PROTOCOL_VERSION
        assert status.capabilities.package_version == package_version() != ""
        with pytest.raises(grpc.RpcError) as old:     # older than versioning: speaks protocol 1, not this one
            _register(farm.address, 0, name="an agent older than versioning")
        assert old.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"this coordinator speaks protocol {PROTOCOL_VERSION}" in old.value.details()


def test_an_agent_of_another_protocol_is_refused_naming_both_versions_and_stops(tmp_path, monkeypatch):
    with Farm(tmp_path) as farm:
        with pytest.raises(grpc.RpcError) as info:
            _register(farm.address, PROTOCOL_VERSION + 1)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = info.value.details()
        assert f"agent speaks qfarm protocol {PROTOCOL_VERSION + 1} (package 9.9.9)" in details
        assert f"this coordinator speaks protocol {PROTOCOL_VERSION} (package {package_version()}" in details

        monkeypatch.setattr("agent.worker.PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
        agent = farm.add_agent("cpu-x")
        wait_for(lambda: agent.fatal, 30, "the agent to give up")
        assert f"protocol {PROTOCOL_VERSION + 1}" in agent.fatal and f"protocol {PROTOCOL_VERSION}" in agent.fatal
        assert agent.counters["registrations"] == 0 and _agent_states(farm) == {}
