"""Token authentication and TLS on a real coordinator (loopback, port 0): refused calls get
UNAUTHENTICATED and change nothing; agents and clients with the right credentials run a campaign;
TLS works with a CA made here by openssl, and a client without that CA fails with a clear hint."""
from __future__ import annotations

import secrets
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.worker import Agent, AgentConfig
from coordinator.farm.client import CampaignClient, CoordinatorUnavailable
from coordinator.farm.server import ServerConfig, build_server
from coordinator.farm.store import Store
from shared.auth import (PLACEHOLDER_TOKEN, TOKEN_ENV, Credentials, ServerSecurity, credentials_from_args,
                         resolve_token, token_matches)
from shared.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from tests.farm_support import read_json, results_per_pair, tiny_spec
from tests.security_support import call_every_method, make_ca_and_server_cert, running_agent, secured
from tests.models import make_classifier

TOKEN = secrets.token_urlsafe(24)


def _state_counts(data_dir: Path) -> dict[str, int]:
    store = Store(data_dir)
    try:
        with store.transaction() as c:
            return {t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("agents", "jobs", "results", "campaigns", "artifacts", "candidates")}
    finally:
        store.close()


def _stored_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "artifacts").rglob("*") if p.is_file())


def test_calls_without_or_with_a_wrong_token_are_refused_and_change_nothing(tmp_path):
    data_dir = tmp_path / "coord"
    with secured(data_dir, ServerSecurity(token=TOKEN)) as (_, address), grpc.insecure_channel(address) as channel:
        before = _state_counts(data_dir)
        bad = {"missing": None, "wrong": [("authorization", "Bearer " + secrets.token_urlsafe(24))],
               "prefix": [("authorization", "Bearer " + TOKEN[:-1])], "longer": [("authorization", f"Bearer {TOKEN}x")],
               "no scheme": [("authorization", TOKEN)], "other key": [("x-token", TOKEN)],
               "empty": [("authorization", "")]}
        for label, metadata in bad.items():
            answers = call_every_method(channel, metadata)
            assert {code for code, _ in answers.values()} == {grpc.StatusCode.UNAUTHENTICATED}, (label, answers)
            assert all(details.startswith("auth: ") for _, details in answers.values())
        assert _state_counts(data_dir) == before == {k: 0 for k in before}
        assert _stored_files(data_dir) == []
        health = health_pb2_grpc.HealthStub(channel)       # open on purpose: probes carry no secret
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        answers = call_every_method(channel, [("authorization", f"Bearer {TOKEN}")])
        good = {name: code for name, (code, _) in answers.items()}
        assert grpc.StatusCode.UNAUTHENTICATED not in good.values()
        assert good["GetStatus"] == grpc.StatusCode.OK and good["Register"] == grpc.StatusCode.OK
        assert good["ReportResult"] == grpc.StatusCode.PERMISSION_DENIED   # past the token: no agent identity
        assert _state_counts(data_dir)["agents"] == 1

        with CampaignClient(address) as anonymous, pytest.raises(Unauthenticated, match="missing token"):
            anonymous.status()
        wrong = Credentials(token=secrets.token_urlsafe(24))
        with CampaignClient(address, credentials=wrong) as intruder, pytest.raises(Unauthenticated, match="wrong"):
            intruder.status()


def test_agent_with_the_token_completes_a_campaign_and_one_without_stops_saying_why(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=2)
    creds = Credentials(token=TOKEN)
    with secured(tmp_path / "coord", ServerSecurity(token=TOKEN)) as (_, address):
        intruder = Agent(AgentConfig(device="cpu-a", coordinator=address, work_dir=tmp_path / "intruder",
                                     credentials=Credentials(token=secrets.token_urlsafe(20)),
                                     backoff_s=(0.1, 0.5)))
        done = threading.Event()
        threading.Thread(target=lambda: (intruder.run(), done.set()), daemon=True).start()
        assert done.wait(30), "an agent with a wrong token must stop, not retry forever"
        assert "refused this agent's credentials" in intruder.fatal and "wrong token" in intruder.fatal
        with running_agent("cpu-a", address, tmp_path / "a1", creds) as agent, \
                CampaignClient(address, credentials=creds) as client:
            campaign_id = client.submit(spec)
            final = client.wait(campaign_id, poll_s=0.2, timeout_s=120)
            assert final.state == "done", final.message
            client.report(campaign_id, tmp_path / "report")
            assert [a.name for a in client.status().agents] == [agent.config.agent_name()]
    pairs = results_per_pair(read_json(tmp_path / "report" / "report.json"))
    assert len(pairs) == 2 and all(r["status"] == "ok" for r in pairs.values())


def test_tls_campaign_works_and_a_client_without_the_ca_fails_clearly(tmp_path):
    ca, cert, key = make_ca_and_server_cert(tmp_path / "pki")
    other_ca, _, _ = make_ca_and_server_cert(tmp_path / "other", name="rogue")
    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=1)
    creds = Credentials(token=TOKEN, tls_ca=ca)
    with secured(tmp_path / "coord", ServerSecurity(token=TOKEN, tls_cert=cert, tls_key=key)) as (_, address):
        with CampaignClient(address, credentials=Credentials(token=TOKEN), timeout_s=5) as plain:
            with pytest.raises(CoordinatorUnavailable, match="pass --tls-ca"):
                plain.status()
        with CampaignClient(address, credentials=Credentials(token=TOKEN, tls_ca=other_ca), timeout_s=5) as rogue:
            with pytest.raises(CoordinatorUnavailable, match="check that it signed the coordinator's certificate"):
                rogue.status()
        with CampaignClient(address, credentials=Credentials(tls_ca=ca)) as tokenless:
            with pytest.raises(Unauthenticated):      # TLS alone is not authentication
                tokenless.status()
        with running_agent("cpu-a", address, tmp_path / "a1", creds), \
                CampaignClient(address, credentials=creds) as client:
            final = client.wait(client.submit(spec), poll_s=0.2, timeout_s=120)
            assert final.state == "done", final.message
            assert client.status().stats.results_accepted == 2      # FP32 reference + 1 candidate, over TLS


def test_tokens_come_from_flag_file_or_environment_and_weak_ones_are_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    env_token = secrets.token_urlsafe(20)
    env = {TOKEN_ENV: env_token}
    assert resolve_token(TOKEN, None, env) == TOKEN
    assert resolve_token(None, token_file, env) == TOKEN
    assert resolve_token(None, None, env) == env_token
    assert resolve_token(None, None, {}) is None
    with pytest.raises(InvalidArgument, match="not both"):
        resolve_token(TOKEN, token_file, env)
    with pytest.raises(InvalidArgument, match="at least 16"):
        resolve_token("short", None, {})
    with pytest.raises(InvalidArgument, match="placeholder"):
        resolve_token(None, None, {TOKEN_ENV: PLACEHOLDER_TOKEN})
    with pytest.raises(InvalidArgument, match="printable ASCII"):
        resolve_token("a token with spaces in it", None, {})
    with pytest.raises(InvalidArgument, match="cannot be read"):
        resolve_token(None, tmp_path / "absent", {})
    assert token_matches(TOKEN, TOKEN) and not token_matches(TOKEN[:-1], TOKEN) and not token_matches(None, TOKEN)
    assert TOKEN not in repr(Credentials(token=TOKEN)) and TOKEN not in repr(ServerSecurity(token=TOKEN))

    from coordinator.cli import build_parser
    args = build_parser().parse_args(["status", "--coordinator", "127.0.0.1:1", "--token-file", str(token_file),
                                      "--tls-ca", str(tmp_path / "ca.pem")])
    creds = credentials_from_args(args, env)
    assert creds.token == TOKEN and creds.tls_ca == tmp_path / "ca.pem"


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    with pytest.raises(FailedPrecondition, match="without a token"):
        build_server(ServerConfig(data_dir=tmp_path / "c", host="0.0.0.0", port=0))
    with pytest.raises(InvalidArgument, match="both --tls-cert and --tls-key"):
        ServerSecurity(token=TOKEN, tls_cert=tmp_path / "cert.pem")
    server, port = build_server(ServerConfig(data_dir=tmp_path / "c2", host="0.0.0.0", port=0,
                                             security=ServerSecurity(allow_no_auth=True)))
    assert port > 0
    server.stop(0)


def test_coordinator_cli_sends_the_token_from_the_environment(tmp_path, monkeypatch, capsys):
    from coordinator.cli import main as coordinator_main

    with secured(tmp_path / "coord", ServerSecurity(token=TOKEN)) as (_, address):
        monkeypatch.setenv(TOKEN_ENV, secrets.token_urlsafe(20))
        assert coordinator_main(["status", "--coordinator", address]) == 2
        assert "wrong token" in capsys.readouterr().err
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        assert coordinator_main(["status", "--coordinator", address]) == 0
        assert "campaigns" in capsys.readouterr().out


def test_an_agent_stops_when_the_coordinator_restarts_with_another_token(tmp_path):
    from coordinator.farm.server import ServerConfig as Config
    from tests.farm_support import FAST, wait_for

    server, port = build_server(Config(data_dir=tmp_path / "coord", port=0, policy=FAST, tick_interval_s=0.1,
                                       security=ServerSecurity(token=TOKEN)))
    server.start()
    address = f"127.0.0.1:{port}"
    agent = Agent(AgentConfig(device="cpu-a", coordinator=address, work_dir=tmp_path / "a1",
                              credentials=Credentials(token=TOKEN), backoff_s=(0.1, 0.5)))
    done = threading.Event()
    threading.Thread(target=lambda: (agent.run(), done.set()), daemon=True).start()
    try:
        wait_for(lambda: agent.counters["registrations"] == 1, 30, "the agent to register")
        server.stop(0)
        rotated = secrets.token_urlsafe(24)          # the farm's token was rotated; this agent still has the old one
        server, _ = build_server(Config(data_dir=tmp_path / "coord", port=port, policy=FAST, tick_interval_s=0.1,
                                        security=ServerSecurity(token=rotated)))
        server.start()
        assert done.wait(30), "the agent must stop once its token is refused"
        assert agent.fatal and "wrong token" in agent.fatal
    finally:
        agent.stop()
        server.stop(0)
