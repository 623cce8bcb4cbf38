"""Layers point one way (shared <- agent, shared <- coordinator) and no module imports itself
back, checked on the source by scripts/layering.py; the checker itself is tested on a small tree
that breaks each rule."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tests.conftest import ROOT


def _checker():
    spec = importlib.util.spec_from_file_location("layering", ROOT / "scripts" / "layering.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("layering", module)       # its dataclasses resolve annotations there
    spec.loader.exec_module(sys.modules["layering"])
    module = sys.modules["layering"]
    return module


def test_the_source_tree_has_no_uphill_import_and_no_cycle():
    assert _checker().violations() == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_uphill_imports_at_module_and_function_level(tmp_path):
    root = _tree(tmp_path, {
        "shared/__init__.py": "", "agent/__init__.py": "", "coordinator/__init__.py": "",
        "shared/low.py": "def f():\n    import coordinator.user\n",             # inside a function
        "agent/worker.py": "import coordinator\n",
        "coordinator/top.py": "import agent.worker\nfrom shared import low\nthing = 1\n",
        "coordinator/testing.py": "from agent import worker\n",                  # the documented exception
        "coordinator/user.py": "from coordinator.testing import x\n",            # nobody else may use it
    })
    bad = sorted(str(v) for v in _checker().violations(root))
    assert bad == ["uphill: agent/worker.py:1: agent.worker imports coordinator",
                   "uphill: coordinator/top.py:1: coordinator.top imports agent.worker",
                   "uphill: coordinator/user.py:1: coordinator.user imports coordinator.testing",
                   "uphill: shared/low.py:2: shared.low imports coordinator.user"]


def test_checker_finds_cycles_through_function_level_and_relative_imports(tmp_path):
    root = _tree(tmp_path, {
        "coordinator/__init__.py": "", "coordinator/farm/__init__.py": "from . import a\n",
        "coordinator/farm/a.py": "from .b import x\n",
        "coordinator/farm/b.py": "def g():\n    from coordinator.farm import c\nx = 1\n",
        "coordinator/farm/c.py": "from coordinator.farm.a import y\n",
        "coordinator/ok.py": "from coordinator.farm import a\n",
    })
    assert _checker().violations(root) == ["cycle: coordinator.farm.a -> coordinator.farm.b -> coordinator.farm.c"]
