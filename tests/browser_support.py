"""A real Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the page tests: one
browser per test module, pages that record every request they make and every dialog that opens."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

CHROMIUM = os.environ.get("QFARM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: where screenshots are copied for the lead when the tests run outside CI
NOTES_SCREENS = Path("/work/notes/screens")


@contextmanager
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium (apt-get)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    page: object
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def watched_page(browser, width: int = 1400, height: int = 1000) -> Iterator[Watched]:
    """A page in a fresh context that records requests, dialogs (dismissed) and script errors."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    watched = Watched(page)
    page.on("request", lambda request: watched.requests.append(request.url))
    page.on("pageerror", lambda exc: watched.errors.append(str(exc)))

    def on_dialog(dialog) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()
    page.on("dialog", on_dialog)
    try:
        yield watched
    finally:
        context.close()


def screenshot(page, path: Path, full_page: bool = True) -> Path:
    """Save a screenshot under the test's folder; outside CI also copy it where the lead looks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    if not os.environ.get("CI") and NOTES_SCREENS.parent.is_dir():
        NOTES_SCREENS.mkdir(exist_ok=True)
        shutil.copyfile(path, NOTES_SCREENS / path.name)
    return path
