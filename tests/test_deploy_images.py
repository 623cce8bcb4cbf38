"""The container images: what they install is pinned, and the pins come from pyproject.toml
(deploy/docker/lock.py); the build context holds what the Dockerfile copies and nothing else;
the wheel the images install carries every file the code reads; the demo spec is valid; the
health probe the HEALTHCHECK and TLS exec probes run answers as documented. Where a Docker daemon
answers (`docker info`), the images are built and the compose demo is run end to end."""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy_support import COMPOSE, DOCKER, DOCKERFILES, ROOT, arg_default, instructions

sys.path.insert(0, str(DOCKER))
import lock  # noqa: E402  deploy/docker/lock.py

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEBIAN_GLIBC = {"bookworm": (2, 36), "trixie": (2, 41)}


# ------------------------------------------------------------------------------------ locks
@pytest.mark.parametrize("role", lock.ROLES, ids=lambda r: r.name)
def test_lock_was_generated_from_the_current_pyproject(role):
    assert lock.stale(role) is None, f"{lock.stale(role)}: run python deploy/docker/lock.py"


@pytest.mark.parametrize("role", lock.ROLES, ids=lambda r: r.name)
def test_every_pin_satisfies_pyproject(role):
    _, pins = lock.read_lock(role.path)
    for text in lock.requirements(role, PYPROJECT):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{role.path.name} lacks {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{role.path.name}: {name}=={pins[name]} does not satisfy pyproject's {text}"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values())


def test_the_tvm_image_extends_the_base_venv_with_the_same_versions():
    _, base = lock.read_lock(lock.LOCKS / "base.txt")
    _, tvm = lock.read_lock(lock.LOCKS / "tvm.txt")
    assert {k: tvm.get(k) for k in base} == base
    assert "apache-tvm" in tvm and "apache-tvm" not in base


def test_stale_lock_is_detected(monkeypatch):
    changed = {**PYPROJECT, "project": {**PYPROJECT["project"],
                                        "dependencies": PYPROJECT["project"]["dependencies"] + ["tomli>=2"]}}
    role = lock.ROLES[1]
    assert lock.source_digest(lock.requirements(role, changed)) != lock.read_lock(role.path)[0]["source-sha256"]
    original = lock.requirements
    monkeypatch.setattr(lock, "requirements", lambda r, pyproject=None: original(r, changed))
    assert "other requirements" in lock.stale(role)


def test_base_image_matches_the_locks_platform():
    for dockerfile in DOCKERFILES:
        image = arg_default(dockerfile, "PYTHON_IMAGE")
        match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(\w+)", image)
        assert match, f"{image}: pin python:X.Y.Z-slim-<debian release>"
        assert f"{match[1]}.{match[2]}" == lock.PYTHON_VERSION
        assert DEBIAN_GLIBC[match[4]] == lock.GLIBC, f"{image}: the locks were resolved for glibc {lock.GLIBC}"
        requires = PYPROJECT["project"]["requires-python"]
        assert Requirement(f"python{requires}").specifier.contains(f"{match[1]}.{match[2]}.{match[3]}")


# ------------------------------------------------------------------------------------ what the Dockerfile installs
def _pip_installs(dockerfile: Path) -> list[list[str]]:
    """The argument lists of every `pip ... install` in a RUN."""
    found = []
    for word, rest in instructions(dockerfile):
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            argv = shlex.split(command)
            if argv and argv[0] == "pip" and "install" in argv:
                found.append(argv[argv.index("install") + 1:])
    return found


def _operands(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(positional operands, {option: [values]}) of pip install arguments."""
    takes_value = {"-r", "-c", "--index-url", "--extra-index-url", "--python"}
    operands, options = [], {}
    it = iter(argv)
    for arg in it:
        if arg in takes_value:
            options.setdefault(arg, []).append(next(it))
        elif arg.startswith("-"):
            options.setdefault(arg, [])
        else:
            operands.append(arg)
    return operands, options


def test_every_pip_install_is_pinned_by_a_lock_or_is_the_qfarm_wheel():
    for dockerfile in DOCKERFILES:
        installs = _pip_installs(dockerfile)
        assert len(installs) >= 5
        locks_used = set()
        for argv in installs:
            operands, options = _operands(argv)
            assert "--no-cache-dir" in options, argv
            if operands:       # only the wheel built in the builder stage
                assert operands == ["/wheels/qfarm-*.whl"] and "--no-deps" in options, argv
                continue
            reqs = options["-r"]
            if reqs == ["/export/requirements.txt"]:      # the demo-model stage, constrained by the base lock
                assert options["-c"] == ["/locks/base.txt"], argv
                continue
            assert "--no-deps" in options and "--only-binary=:all:" in options, argv
            assert len(reqs) == 1 and reqs[0].startswith("/locks/"), argv
            locks_used.add(Path(reqs[0]).name)
        assert locks_used == {role.path.name for role in lock.ROLES}
        text = dockerfile.read_text()
        for role in lock.ROLES:
            assert f"COPY deploy/docker/locks/{role.path.name} /locks/{role.path.name}" in text


def test_export_requirements_share_pins_with_the_demo_and_the_base_lock():
    _, base = lock.read_lock(lock.LOCKS / "base.txt")
    pinned = {}
    for line in (DOCKER / "export-requirements.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if req.specifier:
            [spec] = req.specifier
            assert spec.operator == "==", line
            pinned[name] = spec.version
        else:
            assert name in base, f"{line}: unpinned and not in locks/base.txt"
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    demo_pins = {canonicalize_name(n): v for n, v in re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", demo)}
    assert pinned == demo_pins, "the export stage and scripts/demo.sh must export with the same versions"


def test_torch_stays_in_the_model_export_stage():
    stage, in_torch_stage = None, set()
    for dockerfile in DOCKERFILES:
        for word, rest in instructions(dockerfile):
            if word == "FROM":
                stage = rest.split(" AS ")[-1]
            if "export/requirements.txt" in rest and word == "RUN":
                in_torch_stage.add(stage)
            if word == "COPY" and "--from=demo-model" in rest:
                assert rest.split()[1].endswith(".onnx"), f"only the exported model may leave the stage: {rest}"
    assert in_torch_stage == {"demo-model"}
    _, tvm = lock.read_lock(lock.LOCKS / "tvm.txt")
    assert "torch" not in tvm


def test_runtime_targets_run_as_the_unprivileged_user_without_pip():
    for dockerfile in DOCKERFILES:
        stage, users, parents = None, {}, {}
        for word, rest in instructions(dockerfile):
            if word == "FROM":
                parent, _, stage = rest.partition(" AS ")
                parents[stage] = parent
            elif word == "USER":
                users[stage] = rest
        for target in ("coordinator", "agent", "agent-tvm"):
            assert users[target] == "10001:10001", target
            assert parents[target] == "runtime"
        assert "pip uninstall --yes --no-cache-dir pip setuptools wheel" in dockerfile.read_text()


# ------------------------------------------------------------------------------------ build context
def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes (prefix folders included)."""
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes):
            allowed = negate
    return allowed


def test_dockerignore_lets_in_what_the_dockerfile_copies_and_keeps_out_the_rest():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = []
    for dockerfile in DOCKERFILES:
        for word, rest in instructions(dockerfile):
            if word == "COPY" and "--from=" not in rest:
                *sources, _ = rest.split()
                copied += sources
    assert "shared" in copied and "tests/fixtures/imagenet-100" in copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert _dockerignore_allows(source, patterns), f".dockerignore keeps out {source}, which is copied"
    for kept_out in (".venv/bin/python", "models/effnet_lite0.onnx", "demo-out/farm/report.json", "tests/test_x.py",
                     "coordinator/__pycache__/cli.cpython-311.pyc", ".git/HEAD", "deploy/k8s/base/kustomization.yaml"):
        assert not _dockerignore_allows(kept_out, patterns), kept_out


def test_the_wheel_carries_every_package_file(tmp_path):
    """The images install the wheel, not the checkout: a data file missing from it (the ImageNet
    class list) would break labels only inside containers."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("qfarm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "coordinator", "agent", "shared"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    assert "shared/imagenet_classes.tsv" in tracked
    missing = [f for f in tracked if f not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_demo_campaign_spec_is_valid(tmp_path, tiny_model, images_dir):
    """deploy/docker/demo-campaign.toml parses with the coordinator's own validator when its files
    are where the demo-client image puts them."""
    from coordinator.farm.spec import load_spec_file

    demo = tmp_path / "demo"
    (demo / "models").mkdir(parents=True)
    shutil.copy(tiny_model, demo / "models" / "effnet_lite0.onnx")
    (demo / "images").symlink_to(images_dir)
    shutil.copy(DOCKER / "demo-campaign.toml", demo / "campaign.toml")
    spec = load_spec_file(demo / "campaign.toml")
    assert spec.devices == ("cpu-x86",) and spec.max_candidates == 12 and spec.n_eval == 68
    text = (DOCKER / "Dockerfile").read_text()
    assert "/demo/models/effnet_lite0.onnx" in text and "COPY tests/fixtures/imagenet-100 /demo/images" in text


# ------------------------------------------------------------------------------------ health probe
def _probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordinator.farm.health_probe", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_health_probe_says_serving_then_fails_when_the_coordinator_stops(tmp_path):
    from tests.farm_support import coordinator

    with coordinator(tmp_path / "coord") as (server, address):
        ok = _probe("--coordinator", address)
        assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stdout + ok.stderr
        agents = _probe("--coordinator", address, "--service", "qfarm.v1.AgentService")
        assert agents.returncode == 0
        unknown = _probe("--coordinator", address, "--service", "qfarm.v1.Nope")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stdout
    gone = _probe("--coordinator", address, "--timeout", "1")
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stdout


def test_health_probe_speaks_tls_with_the_service_name_a_certificate_holds(tmp_path):
    """Inside the coordinator's pod the probe dials 127.0.0.1 but checks the certificate's name."""
    from shared.auth import ServerSecurity
    from tests.security_support import make_ca_and_server_cert, secured

    ca, cert, key = make_ca_and_server_cert(tmp_path / "pki")
    security = ServerSecurity(token="a-test-token-of-32-characters-xx", tls_cert=cert, tls_key=key)
    with secured(tmp_path / "coord", security) as (server, address):
        port = address.rsplit(":", 1)[1]
        named = _probe("--coordinator", f"127.0.0.1:{port}", "--tls-ca", str(ca), "--tls-server-name", "localhost")
        assert named.returncode == 0, named.stdout + named.stderr
        wrong = _probe("--coordinator", f"127.0.0.1:{port}", "--tls-ca", str(ca), "--tls-server-name",
                       "qfarm-coordinator", "--timeout", "2")
        assert wrong.returncode == 1
        plaintext = _probe("--coordinator", f"127.0.0.1:{port}", "--timeout", "2")
        assert plaintext.returncode == 1


# ------------------------------------------------------------------------------------ real images (Docker only)
def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    out = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return "`docker info` failed (no Docker daemon): " + (out.stderr.strip().splitlines() or ["?"])[-1]
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode != 0:
        return "`docker compose` is not installed"
    return None


def test_images_build_and_the_compose_demo_runs(tmp_path):
    why = _docker_unavailable()
    if why:
        pytest.skip(why)
    project = f"qfarm-test-{tmp_path.name.lower()[-12:]}"
    compose = ["docker", "compose", "-p", project, "-f", str(COMPOSE)]
    env = {**os.environ, "QFARM_COMPOSE_PORT": "0", "QFARM_COMPOSE_HTTP_PORT": "0"}   # any free loopback ports
    try:
        subprocess.run([*compose, "build"], check=True, env=env, timeout=3600)
        for image in ("qfarm-coordinator:dev", "qfarm-agent:dev"):
            def run(*argv: str) -> subprocess.CompletedProcess:
                return subprocess.run(["docker", "run", "--rm", "--entrypoint", argv[0], image, *argv[1:]],
                                      capture_output=True, text=True, timeout=120)
            assert run("id", "-u").stdout.strip() == "10001", image
            assert run("python", "-c", "import torch").returncode != 0, f"torch in {image}"
            assert run("python", "-m", "pip", "--version").returncode != 0, f"pip in {image}"
            assert run("sh", "-c", "command -v gcc cc").stdout.strip() == "", f"a compiler in {image}"
            assert run("python", "-c", "import coordinator.data as d; print(d.CLASSES_TSV.is_file())"
                       ).stdout.strip() == "True"
        demo = subprocess.run([*compose, "run", "--rm", "demo"], capture_output=True, text=True, env=env,
                              timeout=3600)
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
        assert "recommended:" in demo.stdout
    finally:
        subprocess.run([*compose, "down", "-v", "--remove-orphans"], capture_output=True, env=env, timeout=600)
