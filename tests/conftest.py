from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.models import make_classifier  # noqa: E402

FIXTURE_IMAGES = ROOT / "tests" / "fixtures" / "imagenet-100"


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return FIXTURE_IMAGES


@pytest.fixture(scope="module")
def browser():
    """One real Chromium per test module (tests/browser_support.py)."""
    from tests.browser_support import chromium

    with chromium() as b:
        yield b


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    return make_classifier(tmp_path / "tiny.onnx")


@pytest.fixture(autouse=True)
def _no_token_from_the_developer_environment(monkeypatch):
    """A QFARM_TOKEN (or role token) exported in the shell must not leak into coordinators and
    agents the tests start; tests that need a token set it themselves."""
    from shared.auth import ROLE_TOKEN_ENV, TOKEN_ENV

    for name in (TOKEN_ENV, *ROLE_TOKEN_ENV.values()):
        monkeypatch.delenv(name, raising=False)
