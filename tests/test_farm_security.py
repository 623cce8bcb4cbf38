"""Attacks by holders of a token, on a real coordinator (127.0.0.1, port 0): results bound to the
lease that produced them, agent identities that ids and names cannot fake, separate agent and
client roles, bounded registrations and campaign specs, campaign cancellation, and one-line
errors for bad `serve` flags. Protocol-level agents (coordinator.testing.ProtocolAgent) play the
attackers; the lease rules run on an injected clock."""
from __future__ import annotations

import json
import math
import secrets
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.farm.client import CampaignClient
from coordinator.farm.scheduler import PRIORITY_CANDIDATE, PRIORITY_REFERENCE, LeasePolicy
from coordinator.farm.states import AgentState, JobState
from coordinator.testing import (AgentThread, ManualClock, ProtocolAgent, agent_process, coordinator, ok_result,
                                 stop_process, wait_for)
from shared.auth import (ROLE_TOKEN_ENV, TOKEN_ENV, AgentIdentity, Credentials, Role, ServerSecurity, check_token,
                         server_security_from_args)
from shared.errors import (FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted)
from shared.limits import Limits
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc, job_pb2
from shared.version import PROTOCOL_VERSION
from coordinator.farm.spec import spec_from_local
from tests.farm_support import IMAGES, read_json, results_per_pair, tiny_spec
from tests.models import make_classifier
from tests.security_support import call_every_method, coordinator_never_errs, make_ca_and_server_cert  # noqa: F401

DENIED = grpc.StatusCode.PERMISSION_DENIED
# heartbeats every second; nobody goes missing or is evicted while a test moves the clock a few seconds
SLOW = LeasePolicy(heartbeat_interval_s=1, missing_after_s=60, evict_after_s=120, lease_ttl_s=5, max_wait_s=2)


def _job(server, job_id: str, device: str = "cpu-a", reference: bool = False,
         model_sha: str = "") -> job_pb2.Job:
    job = job_pb2.Job(job_id=job_id, device=device, reference=reference)
    job.candidate.id = job_id.split("@")[0]
    job.candidate.model.sha256 = model_sha
    server.coordinator.scheduler.submit(job, "reference" if reference else "candidate",
                                        PRIORITY_REFERENCE if reference else PRIORITY_CANDIDATE, "test")
    return job


def _state(server) -> dict:
    """Everything an attack could change: jobs (state, holder, attempt, deadline), results, agents."""
    with server.coordinator.store.transaction() as c:
        jobs = c.execute("SELECT job_id, state, agent_id, holder, attempt, lease_deadline FROM jobs").fetchall()
        results = c.execute("SELECT job_id, attempt, agent_id, status FROM results").fetchall()
        agents = c.execute("SELECT agent_id, state, last_heartbeat FROM agents").fetchall()
    return {"jobs": sorted(map(tuple, jobs)), "results": sorted(map(tuple, results)),
            "agents": sorted(map(tuple, agents)), "counters": dict(server.coordinator.scheduler.counters)}


def _denied(call) -> str:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    assert exc.value.code() == DENIED, (exc.value.code(), exc.value.details())
    return exc.value.details()


def _liar(channel, device: str, identity: AgentIdentity) -> ProtocolAgent:
    agent = ProtocolAgent(channel, device, name="liar")
    agent.identity = identity
    return agent


@contextmanager
def _two_agents(tmp_path: Path, clock: ManualClock, second: str):
    """A coordinator on `clock` and two registered protocol-level agents of cpu-a: honest and `second`."""
    with coordinator(tmp_path / "coord", policy=SLOW, clock=clock) as (server, address), \
            grpc.insecure_channel(address) as channel:
        agents = ProtocolAgent(channel, "cpu-a", "honest"), ProtocolAgent(channel, "cpu-a", second)
        for agent in agents:
            agent.register()
        yield server, channel, agents


# ------------------------------------------------------------------------------------------ results
def test_forged_reports_from_unregistered_ids_and_other_agents_change_nothing(tmp_path):
    with _two_agents(tmp_path, ManualClock(), "other") as (server, channel, (honest, other)):
        _job(server, "ref@cpu-a", reference=True)
        _job(server, "cand@cpu-a")
        ref, cand = honest.lease(max_jobs=2)
        before = _state(server)
        forged = ok_result(cand, size_bytes=1, top1_agreement=1.0)          # a 1-byte "perfect" candidate
        crash = ok_result(ref, status=job_pb2.RESULT_STATUS_CRASH, crash_cause="signal:SIGSEGV")
        nobody = _liar(channel, "cpu-a", AgentIdentity(secrets.token_hex(8), secrets.token_urlsafe(32)))
        guesser = _liar(channel, "cpu-a", AgentIdentity(honest.agent_id, secrets.token_urlsafe(32)))
        borrower = _liar(channel, "cpu-a", AgentIdentity(honest.agent_id, other.identity.secret))
        anonymous = _liar(channel, "cpu-a", None)
        messages = [_denied(lambda: nobody.report(forged)),                   # an id that never registered
                    _denied(lambda: guesser.report(forged)),                  # the holder's id, a guessed secret
                    _denied(lambda: borrower.report(forged)),                 # the holder's id, another's secret
                    _denied(lambda: anonymous.report(forged)),                # no identity at all
                    _denied(lambda: other.report(forged)),                    # a registered agent, not the holder
                    _denied(lambda: other.report(crash))]                     # a forged crash of the FP32 reference
        request = farm_pb2.ReportResultRequest(agent_id=honest.agent_id, result=forged)   # names the holder ...
        messages.append(_denied(lambda: other.stub.ReportResult(request, metadata=other.metadata(), timeout=10)))
        assert "not leased to agent" in messages[4] and "request names agent" in messages[-1], messages
        assert _state(server) == before                                       # nothing changed

        fp32 = honest.upload(b"fp32 outputs of the reference")
        assert honest.report(ok_result(ref), fp32).accepted
        assert honest.report(ok_result(cand, size_bytes=1234)).accepted       # the real result is accepted
        assert honest.report(ok_result(cand, size_bytes=1234)).duplicate      # a retry changes nothing
        _denied(lambda: other.report(forged))                                 # still not the holder's
        rows = server.coordinator.scheduler.results(["ref@cpu-a", "cand@cpu-a"])
        assert {r.agent_id for r in rows.values()} == {honest.agent_id}
        assert job_pb2.DeviceResult.FromString(rows["cand@cpu-a"].payload).size_bytes == 1234
        assert server.coordinator.scheduler.counters == {"results_accepted": 2, "results_duplicate": 1}


def test_lease_takeover_by_heartbeat_or_deregister_with_another_agents_id_is_refused(tmp_path):
    clock = ManualClock()
    with _two_agents(tmp_path, clock, "thief") as (server, channel, (honest, thief)):
        _job(server, "j@cpu-a")
        [job] = honest.lease()
        before = _state(server)
        running = (("j@cpu-a", job.attempt),)
        assert thief.heartbeat(running) == [("j@cpu-a", 1)]                  # told to stop; the lease stays
        borrower = _liar(channel, "cpu-a", AgentIdentity(honest.agent_id, thief.identity.secret))
        _denied(lambda: borrower.heartbeat(running))
        _denied(lambda: borrower.deregister())
        _denied(lambda: thief.stub.Deregister(farm_pb2.DeregisterRequest(agent_id=honest.agent_id),
                                              metadata=thief.metadata(), timeout=10))
        _denied(lambda: _liar(channel, "cpu-a", None).deregister())
        after = _state(server)
        assert after["jobs"] == before["jobs"]                               # same holder, attempt, deadline
        assert {a[0]: a[1] for a in after["agents"]}[honest.agent_id] == AgentState.BUSY.value

        clock.advance(SLOW.lease_ttl_s + 1)                                  # the lease runs out: re-queued
        wait_for(lambda: _state(server)["jobs"][0][1] == JobState.QUEUED.value, 10, "the lease to expire")
        assert thief.heartbeat(running) == [("j@cpu-a", 1)]                  # a re-queued job is not its either
        assert _state(server)["jobs"][0][1] == JobState.QUEUED.value
        assert honest.heartbeat(running) == []                               # its holder takes it back
        jobs = _state(server)["jobs"]
        assert jobs[0][1:5] == (JobState.LEASED.value, honest.agent_id, honest.agent_id, 1)


def test_registering_under_a_victims_name_does_not_evict_it(tmp_path):
    with coordinator(tmp_path / "coord", policy=SLOW, clock=ManualClock()) as (server, address), \
            grpc.insecure_channel(address) as channel:
        victim = ProtocolAgent(channel, "cpu-a", "workstation-7/cpu-a/1234abcd")
        victim.register()
        _job(server, "j@cpu-a")
        [job] = victim.lease()
        impostor = ProtocolAgent(channel, "cpu-a", victim.name)
        impostor.register(running=(("j@cpu-a", job.attempt),))
        assert impostor.agent_id != victim.agent_id
        assert impostor.heartbeat((("j@cpu-a", 1),)) == [("j@cpu-a", 1)]
        assert victim.heartbeat((("j@cpu-a", 1),)) == []
        with CampaignClient(address) as client:
            agents = {a.agent_id: a for a in client.status().agents}
        assert {a.name for a in agents.values()} == {victim.name}
        assert agents[victim.agent_id].state == "busy" and list(agents[victim.agent_id].jobs) == ["j@cpu-a"]
        assert agents[impostor.agent_id].state == "idle"


def test_after_a_coordinator_restart_only_the_proven_agent_keeps_its_lease(tmp_path):
    with coordinator(tmp_path / "coord", policy=SLOW) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        with grpc.insecure_channel(address) as channel:
            agent = ProtocolAgent(channel, "cpu-a", "restarted")
            agent.register()
            _job(server, "j@cpu-a")
            [job] = agent.lease()
            old = agent.identity
    with coordinator(tmp_path / "coord", policy=SLOW, port=port) as (server, address), \
            grpc.insecure_channel(address) as channel:
        agent.stub = farm_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as gone:
            agent.heartbeat((("j@cpu-a", 1),))
        assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "register again" in gone.value.details()
        impostor = ProtocolAgent(channel, "cpu-a", "restarted")
        impostor.register(running=(("j@cpu-a", 1),))                        # same name, no proof
        impostor.register(running=(("j@cpu-a", 1),), previous=AgentIdentity(old.agent_id, "guessed-" * 6))
        assert impostor.heartbeat((("j@cpu-a", 1),)) == [("j@cpu-a", 1)]
        reply = agent.register(running=(("j@cpu-a", 1),), previous=old)
        assert reply.agent_id != old.agent_id
        assert agent.heartbeat((("j@cpu-a", 1),)) == []                      # handed over, same attempt
        assert agent.report(ok_result(job)).accepted
        with server.coordinator.store.transaction() as c:
            assert c.agent(old.agent_id).state == AgentState.GONE
            assert c.job("j@cpu-a").holder == reply.agent_id


def test_an_agent_restarted_on_its_work_dir_replaces_its_old_registration(tmp_path):
    work = tmp_path / "agent"
    with coordinator(tmp_path / "coord", policy=SLOW) as (server, address), CampaignClient(address) as client:
        first = agent_process("cpu-a", address, work)
        try:
            [old] = wait_for(lambda: client.status().agents, 60, "the agent to register")
            assert (work / "identity.json").stat().st_mode & 0o777 == 0o600
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = agent_process("cpu-a", address, work)
            try:
                def replaced():
                    agents = {a.agent_id: a for a in client.status().agents}
                    return len(agents) == 2 and agents[old.agent_id].state == "gone" and agents
                agents = wait_for(replaced, 60, "the restarted agent to replace its old registration")
                [new] = [a for a in agents.values() if a.agent_id != old.agent_id]
                assert new.state == "idle" and new.name == old.name
            finally:
                stop_process(second)
        finally:
            stop_process(first)


# ------------------------------------------------------------------------------------------ roles
AGENT_TOKEN, CLIENT_TOKEN = secrets.token_urlsafe(24), secrets.token_urlsafe(24)


def _role_refusals(channel: grpc.Channel, token: str) -> set[str]:
    """The methods that refuse `token` for its role (PERMISSION_DENIED naming the roles, not the token)."""
    refused = set()
    for name, (code, details) in call_every_method(channel, (("authorization", f"Bearer {token}"),)).items():
        if code == DENIED and details.startswith("permission:"):
            assert "role" in details and token not in details
            refused.add(name)
    return refused


def test_agent_and_client_roles_are_separate(tmp_path):
    model = make_classifier(tmp_path / "scalar.onnx", scalar_mul=0.5)       # a Mul by a 0-d initializer, too
    spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=2, eval_images=8)
    security = ServerSecurity(agent_token=AGENT_TOKEN, client_token=CLIENT_TOKEN)
    agent_creds, client_creds = Credentials(token=AGENT_TOKEN), Credentials(token=CLIENT_TOKEN)
    with coordinator(tmp_path / "coord", security=security) as (server, address), \
            grpc.insecure_channel(address) as channel:
        agent_methods = {"Register", "Heartbeat", "Lease", "FetchArtifact", "AgentUpload", "ReportResult",
                         "Deregister"}
        client_methods = {"MissingArtifacts", "CampaignUpload", "SubmitCampaign", "GetStatus", "GetReport",
                          "CancelCampaign"}
        assert _role_refusals(channel, AGENT_TOKEN) == client_methods
        assert _role_refusals(channel, CLIENT_TOKEN) == agent_methods
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING                              # still open, no token

        misconfigured = AgentThread("cpu-a", address, tmp_path / "wrong-role", credentials=client_creds)
        with misconfigured as stopped:
            wait_for(lambda: stopped.fatal, 30, "an agent with the client token to stop")
        assert "refused this agent's credentials" in stopped.fatal and "agent role" in stopped.fatal

        with AgentThread("cpu-a", address, tmp_path / "a1", credentials=agent_creds), \
                CampaignClient(address, credentials=client_creds) as client:
            campaign_id = client.submit(spec)
            final = client.wait(campaign_id, poll_s=0.2, timeout_s=120)
            assert final.state == "done", final.message
            client.report(campaign_id, tmp_path / "report")
            with CampaignClient(address, credentials=agent_creds) as wrong:
                with pytest.raises(PermissionDenied, match="client role"):
                    wrong.report(campaign_id, tmp_path / "stolen")
            # an agent may fetch the artifacts of its own jobs only, not any model it knows the sha256 of
            snoop = ProtocolAgent(Credentials(token=AGENT_TOKEN).channel(address), "cpu-a", "snoop")
            snoop.register()
            model_sha = spec.models[0].file.sha256
            assert "belongs to no job leased" in _denied(lambda: snoop.fetch(model_sha))
        assert not (tmp_path / "stolen").exists()
    pairs = results_per_pair(read_json(tmp_path / "report" / "report.json"))
    assert len(pairs) == 2 and all(r["status"] == "ok" for r in pairs.values())


def test_every_method_of_the_wire_contract_has_an_access_rule():
    from coordinator.farm.access import ACCESS

    services = [*farm_pb2.DESCRIPTOR.services_by_name.values(), health_pb2.DESCRIPTOR.services_by_name["Health"]]
    methods = {f"/{service.full_name}/{method.name}" for service in services for method in service.methods}
    assert methods == set(ACCESS)
    assert all(ACCESS[m].roles for m in methods if not m.startswith("/grpc.health.v1.Health/"))


def test_the_dashboard_takes_the_client_token_not_the_agent_token(tmp_path):
    import urllib.error
    import urllib.request
    from argparse import Namespace

    from coordinator.dashboard.command import start_dashboard

    security = ServerSecurity(agent_token=AGENT_TOKEN, client_token=CLIENT_TOKEN)
    args = Namespace(http_port=0, http_host=None, host="127.0.0.1", http_port_file=None, http_refresh=2.0)

    def status(url: str, token: str) -> int:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    with coordinator(tmp_path / "coord", security=security) as (server, _):
        dashboard = start_dashboard(args, server.coordinator, security)
        try:
            url = dashboard.url.rstrip("/") + "/metrics"
            assert (status(url, AGENT_TOKEN), status(url, CLIENT_TOKEN)) == (401, 200)
        finally:
            dashboard.stop()


def test_role_tokens_come_from_flags_files_or_environment_and_weak_tokens_are_refused(tmp_path):
    from coordinator.cli import build_parser

    def security(*flags: str, env: dict | None = None) -> ServerSecurity:
        return server_security_from_args(build_parser().parse_args(["serve", *flags]), env or {})

    one, agent, client = (secrets.token_urlsafe(20) for _ in range(3))
    assert security(f"--token={one}").role_tokens == {Role.AGENT: one, Role.CLIENT: one}
    assert not security(env={TOKEN_ENV: one}).separate_roles
    split = security(env={ROLE_TOKEN_ENV[Role.AGENT]: agent, ROLE_TOKEN_ENV[Role.CLIENT]: client, TOKEN_ENV: one})
    assert split.separate_roles and split.roles_of(agent) == {Role.AGENT} and split.roles_of(client) == {Role.CLIENT}
    assert split.roles_of(one) == frozenset() and split.roles_of(None) == frozenset()
    token_file = tmp_path / "agent.token"
    token_file.write_text(agent + "\n")
    flags = security("--agent-token-file", str(token_file), f"--client-token={client}")
    assert flags.role_tokens == {Role.AGENT: agent, Role.CLIENT: client}
    assert security().role_tokens is None and security().roles_of(None) == set(Role)
    with pytest.raises(InvalidArgument, match="--client-token is missing"):
        security(f"--agent-token={agent}")
    with pytest.raises(InvalidArgument, match="not both"):
        ServerSecurity(token=one, agent_token=agent, client_token=client)
    for weak in ("a" * 16, "ab" * 12, "abcabcabcabcabcabc", "aaaaaaaaaaaaaaaaaaab"):
        with pytest.raises(InvalidArgument, match="too predictable"):
            check_token(weak, "--token")
    for strong in (secrets.token_urlsafe(12), secrets.token_hex(8), secrets.token_urlsafe(32)):
        assert check_token(strong, "--token") == strong
    assert agent not in repr(split)


# ------------------------------------------------------------------------------------------ bounds
def _db_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("qfarm.sqlite3*"))


def test_capability_bombs_unprintable_names_and_too_many_agents_are_refused(tmp_path, capsys):
    data_dir = tmp_path / "coord"
    with coordinator(data_dir, limits=Limits(max_agents=3)) as (server, address), \
            grpc.insecure_channel(address) as channel:
        stub = farm_pb2_grpc.AgentServiceStub(channel)

        def register(name: str = "n", **host) -> grpc.RpcError | farm_pb2.RegisterResponse:
            caps = farm_pb2.AgentCapabilities(slots=1, host=farm_pb2.HostInfo(**host),
                                              protocol_version=PROTOCOL_VERSION)
            try:
                return stub.Register(farm_pb2.RegisterRequest(device="cpu-a", name=name, capabilities=caps), timeout=30)
            except grpc.RpcError as exc:
                return exc

        before = _db_bytes(data_dir)
        for _ in range(10):
            bomb = register(cpu_model="X" * 7_800_000)
            assert bomb.code() == grpc.StatusCode.INVALID_ARGUMENT and "capabilities take" in bomb.details()
        hostile = {"\x1b[2J\x1b[31mred": "name", "two\nlines": "name", "bidi\u202eexe.cpu": "name",
                   "zero\u200bwidth": "name", "x" * 300: "name"}
        for name in hostile:
            refused = register(name=name)
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        for field in ("hostname", "cpu_model", "os", "arch"):
            refused = register(**{field: "ok\x1b]0;pwned\x07"})
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and field in refused.details()
        assert _db_bytes(data_dir) - before < 256 << 10                      # nothing of it was stored
        kept = [register(name=f"[red]agent {i}[/red]", cpu_model="Intel(R) Xeon(R) \u00ae") for i in range(3)]
        assert all(isinstance(r, farm_pb2.RegisterResponse) for r in kept)
        full = register(name="fourth")
        assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_agents=3" in full.details()
        ProtocolAgent(channel, "cpu-a").stub.Deregister(farm_pb2.DeregisterRequest(agent_id=kept[0].agent_id),
                                                        metadata=AgentIdentity(kept[0].agent_id,
                                                                               kept[0].agent_secret).metadata())
        assert isinstance(register(name="fourth"), farm_pb2.RegisterResponse)   # a place was freed
        from coordinator.cli import main as coordinator_main
        assert coordinator_main(["status", "--coordinator", address]) == 0
    shown = capsys.readouterr().out
    assert shown.count("[red]") == 3 and shown.count("[/red]") == 3        # shown literally, not as markup


def _upload_spec_files(client: CampaignClient, tmp_path: Path) -> dict:
    """A small campaign's files on the coordinator; its wire form, to be spoiled field by field."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(IMAGES.glob("*.jpg"))[:8]:
        shutil.copy(path, images / path.name)
    spec = spec_from_local({"name": "bounded", "devices": ["cpu-a"], "models": [{"path": "tiny.onnx"}],
                            "data": {"images": "images", "calibration": 2, "eval": 2, "latency_runs": 1},
                            "preprocess": {"input_size": 32}, "strategy": {"max_candidates": 1}}, "test", tmp_path)
    client.upload_missing(spec.files())
    return spec.to_wire()


def test_campaign_specs_are_bounded_at_submit(tmp_path):
    make_classifier(tmp_path / "tiny.onnx")
    with coordinator(tmp_path / "coord") as (server, address), CampaignClient(address) as client:
        base = _upload_spec_files(client, tmp_path)

        def submit(**changes) -> str:
            wire = json.loads(json.dumps(base))
            for path, value in changes.items():
                *parents, key = path.split("__")
                target = wire
                for part in parents:
                    target = target[part]
                target[key] = value
            text = json.dumps(wire)              # NaN and Infinity travel as JSON's NaN / Infinity tokens
            return client._call(client._stub.SubmitCampaign, farm_pb2.SubmitCampaignRequest(spec_json=text))

        cases = [({"device_timeout_s": math.nan}, InvalidArgument, "device_timeout_s"),
                 ({"device_timeout_s": math.inf}, InvalidArgument, "device_timeout_s"),
                 ({"strategy__budget_seconds": math.nan}, InvalidArgument, "strategy.budget_seconds"),
                 ({"preprocess__mean": [math.nan, 0.5, 0.5]}, InvalidArgument, "preprocess"),
                 ({"data__latency_runs": 2 ** 31}, InvalidArgument, "data.latency_runs"),
                 ({"data__seed": 2 ** 40}, InvalidArgument, "data.seed"),
                 ({"devices": [f"dev-{i}" for i in range(5000)]}, ResourceExhausted, "max_campaign_devices=64"),
                 ({"preprocess__input_size": 4096, "data__eval": 8, "data__calibration": 8}, ResourceExhausted,
                  "max_input_bytes=1073741824")]
        for changes, error, text in cases:
            with pytest.raises(error, match=text):
                submit(**changes)
        with server.coordinator.store.transaction() as c:
            assert c.execute("SELECT COUNT(*) FROM campaigns").fetchone()[0] == 0
            assert c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


# ------------------------------------------------------------------------------------------ cancel
def test_cancel_stops_a_running_campaign_and_takes_its_jobs_back(tmp_path, capsys):
    from coordinator.cli import main as coordinator_main

    model = make_classifier(tmp_path / "tiny.onnx")
    spec = tiny_spec(tmp_path, model, ["cpu-a"], max_candidates=2, eval_images=8)
    with coordinator(tmp_path / "coord", policy=SLOW) as (server, address), CampaignClient(address) as client, \
            grpc.insecure_channel(address) as channel:
        agent = ProtocolAgent(channel, "cpu-a", "holder")
        agent.register()
        campaign_id = client.submit(spec)
        [ref] = wait_for(lambda: agent.lease(wait_s=1), 60, "the FP32 reference job")
        assert coordinator_main(["cancel", campaign_id, "--coordinator", address]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert out == [f"campaign {campaign_id} cancelled (1 job(s) cancelled; running ones are taken back at "
                       "their agents' next heartbeat)"]
        assert agent.heartbeat(((ref.job_id, ref.attempt),)) == [(ref.job_id, ref.attempt)]
        server.coordinator.campaigns.wait(campaign_id, timeout=60)           # its runner thread has ended
        [status] = client.status(campaign_id).campaigns
        assert (status.state, status.message) == ("cancelled", "cancelled by a client")
        assert all(d.queued == 0 and d.leased == 0 for d in status.devices)
        assert agent.lease() == []
        assert client.cancel(campaign_id).state == "cancelled"               # twice is fine
        with pytest.raises(NotFound):
            client.cancel("no-such-campaign")
        nobody = tiny_spec(tmp_path, model, ["nobody"], max_candidates=1, device_timeout_s=0.5, name="nobody")
        failed = client.submit(nobody)
        assert client.wait(failed, poll_s=0.1, timeout_s=60).state == "failed"
        with pytest.raises(FailedPrecondition, match="already failed"):
            client.cancel(failed)
        port = int(address.rsplit(":", 1)[1])
    with coordinator(tmp_path / "coord", policy=SLOW, port=port) as (server, address), \
            CampaignClient(address) as client:
        assert client.status(campaign_id).campaigns[0].state == "cancelled"  # not resumed after a restart


# ------------------------------------------------------------------------------------------ flags
def test_bad_serve_and_agent_flags_are_one_line_errors(tmp_path, capsys):
    from agent.cli import main as agent_main
    from coordinator.cli import main as coordinator_main

    _, cert, _ = make_ca_and_server_cert(tmp_path / "pki")
    _, _, other_key = make_ca_and_server_cert(tmp_path / "other")
    data = ["--data-dir", str(tmp_path / "data")]
    cases = [(["--port", "70000"], "--port 70000 is not a TCP port"),
             (["--port", "-1"], "--port -1 is not a TCP port"),
             (["--max-workers", "0"], "--max-workers 0 must be between 1 and 256"),
             (["--heartbeat-interval", "nan"], "--heartbeat-interval nan must be a finite number"),
             (["--lease-ttl", "inf"], "--lease-ttl inf must be a finite number"),
             (["--token", "a" * 16], "too predictable"),
             ([f"--agent-token={secrets.token_urlsafe(20)}"], "--client-token is missing"),
             (["--tls-cert", str(cert), "--tls-key", str(other_key), f"--token={secrets.token_urlsafe(20)}"],
              "does not match the certificate")]
    for flags, text in cases:
        assert coordinator_main(["serve", *data, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and text in err, (flags, err)
    assert not (tmp_path / "data").exists()                                  # refused before anything was made
    assert agent_main(["register", "--device", "cpu-a", "--coordinator", "127.0.0.1:70000",
                       "--work-dir", str(tmp_path / "agent")]) == 2
    err = capsys.readouterr().err
    assert "port 70000 is not a TCP port" in err and err.count("\n") == 1
