"""deploy/ checked without Docker or a cluster: hadolint on every Dockerfile, the compose file
against the Compose specification, every Kubernetes manifest and every rendered kustomization
against the Kubernetes schemas (strict: unknown fields fail), and what schemas cannot see:
patches that target nothing, pods that break the restricted Pod Security level, probes, drain
times longer than the grace period. All offline (validators that try the network fail)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest

from tests.deploy_support import (COMPOSE, DOCKERFILES, HADOLINT_CONFIG, K8S, K8S_VERSION, OFFLINE_ENV, ROOT,
                                  arg_default, instructions, is_component, kustomizations, load_yaml,
                                  manifest_files, pod_spec, render, renderable, tool)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------------------------ Dockerfiles
def _hadolint(path: Path) -> list[dict]:
    out = subprocess.run([tool("hadolint"), "--config", str(HADOLINT_CONFIG), "--format", "json", str(path)],
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(out.stdout or "[]")
    assert out.returncode == (1 if findings else 0), out.stderr
    return findings


def test_there_are_dockerfiles():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_rel)
def test_hadolint_passes(dockerfile):
    findings = _hadolint(dockerfile)
    assert not findings, "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_rel)
def test_hadolint_passes_with_the_base_image_spelled_out(dockerfile, tmp_path):
    """hadolint cannot check the tag or registry of `FROM ${PYTHON_IMAGE}`; lint it spelled out too."""
    image = arg_default(dockerfile, "PYTHON_IMAGE")
    spelled = tmp_path / "Dockerfile"
    spelled.write_text(dockerfile.read_text().replace("${PYTHON_IMAGE}", image))
    assert f"FROM {image} AS" in spelled.read_text()
    assert not _hadolint(spelled)


def test_hadolint_reports_what_it_should(tmp_path):
    """The lint is live: an unpinned base image, a root user and an unpinned pip install fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nRUN pip install numpy\n")
    codes = {f["code"] for f in _hadolint(bad)}
    assert {"DL3007", "DL3002", "DL3013"} <= codes


def test_the_only_inline_exception_is_the_tvm_toolchain():
    """No rule is switched off globally; each inline ignore stands right after its reason."""
    config = HADOLINT_CONFIG.read_text()
    assert "ignored" not in re.sub(r"#.*", "", config)
    for dockerfile in DOCKERFILES:
        lines = dockerfile.read_text().splitlines()
        ignores = [i for i, line in enumerate(lines) if "hadolint ignore" in line]
        assert len(ignores) <= 1
        for i in ignores:
            assert lines[i].strip() == "# hadolint ignore=DL3008" and "libc6-dev" in lines[i - 3] + lines[i - 2]
            assert "gcc libc6-dev" in "\n".join(lines[i:i + 4])


# ------------------------------------------------------------------------------------ compose
def test_compose_file_follows_the_compose_specification():
    out = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True, env=OFFLINE_ENV, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_runs_two_agents_and_the_demo_from_the_dockerfile_targets():
    [compose] = load_yaml(COMPOSE)
    services = compose["services"]
    targets = {name: s["build"]["target"] for name, s in services.items()}
    stages = {rest.split(" AS ")[1] for dockerfile in DOCKERFILES for word, rest in instructions(dockerfile)
              if word == "FROM" and " AS " in rest}
    assert set(targets.values()) <= stages
    assert targets["agent"] == "agent" and services["agent"]["deploy"]["replicas"] == 2
    assert targets["demo"] == "demo-client" and "--wait" in services["demo"]["command"]
    token = "/run/qfarm/token"
    for name in ("coordinator", "agent", "demo"):
        command = services[name]["command"]
        assert command[command.index("--token-file") + 1] == token, name
        assert "auth:/run/qfarm:ro" in services[name]["volumes"], name
    assert services["coordinator"]["ports"][0].startswith("127.0.0.1:")     # loopback only
    assert services["agent"]["depends_on"]["coordinator"]["condition"] == "service_healthy"


# ------------------------------------------------------------------------------------ Kubernetes schemas
def _validate(doc: dict, where: str) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{where}: {doc['kind']}/{doc['metadata'].get('name')}: {path}: {exc.message}") from None


def test_every_manifest_file_is_valid():
    files = manifest_files()
    assert len(files) >= 6
    for path in files:
        for doc in load_yaml(path):
            _validate(doc, _rel(path))


@pytest.mark.parametrize("folder", renderable(), ids=_rel)
def test_every_kustomization_renders_to_valid_resources(folder):
    docs = render(folder)
    assert docs
    for doc in docs:
        _validate(doc, f"kubectl kustomize {_rel(folder)}")


def test_schema_validation_is_strict():
    [job] = load_yaml(K8S / "overlays" / "demo" / "demo-job.yaml")
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(AssertionError, match="readOnlyRootFileSystem"):
        _validate(job, "typo")


# ------------------------------------------------------------------------------------ what schemas cannot see
def _resources_of(folder: Path) -> list[dict]:
    """What a kustomization's patches apply to: its resources as they come out of each entry."""
    [kust] = load_yaml(folder / "kustomization.yaml")
    docs: list[dict] = []
    for entry in kust.get("resources", []):
        path = (folder / entry).resolve()
        docs += render(path) if path.is_dir() else load_yaml(path)
    return docs


def _patches_with_context() -> list[tuple[Path, dict, Path]]:
    """(kustomization, patch, folder whose resources the patch applies to); a Component's patches
    apply to the resources of each kustomization that uses it."""
    out = []
    for folder in kustomizations():
        [kust] = load_yaml(folder / "kustomization.yaml")
        if is_component(folder):
            continue
        for patch in kust.get("patches", []):
            out.append((folder, patch, folder))
        for component in kust.get("components", []):
            [comp] = load_yaml(folder / component / "kustomization.yaml")
            out += [((folder / component).resolve(), patch, folder) for patch in comp.get("patches", [])]
    return out


def test_every_patch_targets_a_resource_that_exists():
    """kustomize silently skips a patch whose target matches nothing (a renamed resource)."""
    checked = 0
    for owner, patch, context in _patches_with_context():
        target = patch["target"]
        matches = [d for d in _resources_of(context) if d["kind"] == target["kind"]
                   and ("name" not in target or d["metadata"]["name"] == target["name"])]
        assert matches, f"{_rel(owner)}: a patch targets {target}, which {_rel(context)} does not have"
        checked += 1
    assert checked >= 6


def test_every_image_and_replica_override_names_something_used():
    for folder in renderable():
        [kust] = load_yaml(folder / "kustomization.yaml")
        docs = _resources_of(folder)
        images = {c["image"] for d in docs if pod_spec(d) for c in pod_spec(d)["containers"]}
        for image in kust.get("images", []):
            assert image["name"] in images, f"{_rel(folder)}: images: {image['name']} is used by nothing"
        names = {d["metadata"]["name"] for d in docs}
        for replicas in kust.get("replicas", []):
            assert replicas["name"] in names, f"{_rel(folder)}: replicas: {replicas['name']} does not exist"


def _workloads(docs: list[dict]) -> list[tuple[dict, dict]]:
    return [(d, pod_spec(d)) for d in docs if pod_spec(d) is not None]


@pytest.mark.parametrize("overlay", sorted((K8S / "overlays").iterdir()), ids=_rel)
def test_pods_meet_the_restricted_pod_security_level_and_have_limits(overlay):
    docs = render(overlay)
    [namespace] = [d for d in docs if d["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc, spec in _workloads(docs):
        where = f"{_rel(overlay)}: {doc['kind']}/{doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert {"/tmp"} <= {m["mountPath"] for m in c["volumeMounts"]}, f"{where}: /tmp must be writable"
            assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}, where


@pytest.mark.parametrize("overlay", sorted((K8S / "overlays").iterdir()), ids=_rel)
def test_coordinator_is_one_stateful_replica_with_a_volume_and_health_probes(overlay):
    docs = render(overlay)
    [sts] = [d for d in docs if d["kind"] == "StatefulSet"]
    spec = sts["spec"]
    assert spec["replicas"] == 1
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["data"]
    [c] = spec["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": c["args"][c["args"].index("--data-dir") + 1]} in c["volumeMounts"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c[probe]
        assert p.get("grpc", {}).get("port") == 50051 or p["exec"]["command"][:3] == [
            "python", "-m", "coordinator.farm.health_probe"], f"{probe}: {p}"
    tls = any(e["name"] == "QFARM_TLS_CERT" for e in c.get("env", []))
    assert tls == ("exec" in c["readinessProbe"]), "grpc probes cannot speak TLS: TLS needs the exec probe"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50051, "http": 8080}
    assert [c["args"][c["args"].index(flag) + 1] for flag in ("--port", "--http-port")] == ["50051", "8080"]
    [service] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "qfarm-coordinator"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 50051, "http": 8080}
    assert all(service["spec"]["selector"].get(k) == v for k, v in spec["selector"]["matchLabels"].items())


@pytest.mark.parametrize("overlay", sorted((K8S / "overlays").iterdir()), ids=_rel)
def test_agents_are_one_deployment_per_device_class_and_drain_within_their_grace(overlay):
    docs = render(overlay)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert deployments
    classes = []
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        [c] = spec["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        device = env["QFARM_DEVICE"]
        classes.append(device)
        assert c["args"][c["args"].index("--device") + 1] == "$(QFARM_DEVICE)"
        assert spec["nodeSelector"].get("qfarm.dev/device-class", device) == device
        assert d["spec"]["selector"]["matchLabels"]["qfarm.dev/device-class"] == device   # no overlapping selectors
        assert d["metadata"]["name"].endswith(device)
        drain = c["lifecycle"]["preStop"]["exec"]["command"]
        assert drain[:2] == ["agent", "drain"]
        timeout = float(drain[drain.index("--timeout") + 1])
        after_sigterm = float(c["args"][c["args"].index("--drain-timeout") + 1])
        assert spec["terminationGracePeriodSeconds"] >= timeout + after_sigterm + 10, \
            "the grace period must cover the preStop drain, the SIGTERM drain and the deregistration"
        assert c["args"][c["args"].index("--coordinator") + 1] == "qfarm-coordinator:50051"
    assert len(classes) == len(set(classes))
    assert len(classes) == {"demo": 1, "fleet": 2}[overlay.name]


def test_secret_env_files_use_the_names_the_code_reads():
    """The token variables live in one place, deploy/k8s/secrets/*.env.example; the manifests
    only name the Secrets (envFrom). Every Secret a manifest names has its example."""
    from shared.auth import TOKEN_ENV

    named = set()
    for folder in renderable():
        for doc, spec in _workloads(render(folder)):
            for c in spec["containers"]:
                named |= {e["secretRef"]["name"] for e in c.get("envFrom", [])}
    assert named == {"qfarm-coordinator-auth", "qfarm-agent-auth", "qfarm-client-auth"}
    for name in named:
        role = name.removeprefix("qfarm-").removesuffix("-auth")
        example = K8S / "secrets" / f"{role}.env.example"
        assigned = [line.split("=", 1)[0] for line in example.read_text().splitlines()
                    if line and not line.startswith("#")]
        assert assigned == [TOKEN_ENV], f"{example.name}: {assigned}"
        assert f"--from-env-file={role}.env" in example.read_text()
