"""Jinja2 rendering of the report view. Autoescaping is on for every template; the page's one
script is allowed by its hash in the Content-Security-Policy, so any script that found its way
into the page some other way would not run, and `default-src 'none'` forbids every network load."""
from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from coordinator.html.fleet import INDEX_FILE, Fleet
from coordinator.html.view import build
from shared.atomic import atomic_write_text

REPORT_FILE = "report.html"


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(loader=PackageLoader("coordinator.html", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@lru_cache(maxsize=8)
def script(name: str, env: Environment | None = None):
    """A template folder's script (as markup: our own file, not data) and its CSP source expression
    ('sha256-...'), so the page allows exactly that script and no other."""
    env = env or environment()
    source = env.loader.get_source(env, name)[0]
    digest = base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()
    return Markup(source), f"sha256-{digest}"


def qfarm_version() -> str:
    try:
        return version("qfarm")
    except PackageNotFoundError:
        return "dev"


def render_html(report: Mapping[str, Any], refresh_s: float = 0) -> str:
    """The page for a report dict (reloading itself every `refresh_s` seconds when > 0, for a
    campaign still running); raises DataError when it is not a qfarm report."""
    view = build(report)
    js, digest = script("report.js")
    return environment().get_template("report.html.j2").render(view=view, script=js, script_hash=digest,
                                                               version=qfarm_version(), refresh=refresh_s)


def render_fleet(fleet: Fleet, title: str, subtitle: str = "", refresh_s: float = 0) -> str:
    """The fleet summary page (index.html of a multi-model campaign; the dashboard's live one)."""
    js, digest = script("report.js")
    return environment().get_template("fleet.html.j2").render(fleet=fleet, title=title, subtitle=subtitle, script=js,
                                                              script_hash=digest, version=qfarm_version(),
                                                              refresh=refresh_s)


def write_index(fleet: Fleet, out_dir: Path, title: str, subtitle: str = "") -> Path:
    """Write the fleet summary as out_dir/index.html (atomically) and return its path."""
    path = Path(out_dir) / INDEX_FILE
    atomic_write_text(path, render_fleet(fleet, title, subtitle))
    return path


def write_html(report: Mapping[str, Any], out_dir: Path, name: str = REPORT_FILE) -> Path:
    """Write the page beside report.json (atomically) and return its path."""
    path = Path(out_dir) / name
    atomic_write_text(path, render_html(report))
    return path
