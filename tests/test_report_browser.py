"""report.html in a real browser (Debian's Chromium through Playwright): a real campaign on two
device classes, written by `coordinator report`; the recommended candidate of each class, the
comparison table and the charts are on the page, columns sort, nothing is fetched from the network,
and text from models and agents never runs as script."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.cli import main
from tests.browser_support import screenshot, watched_page
from tests.report_support import HOSTILE_NODE, farm_campaign_report, hostile_model, local_tune


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("campaign")
    assert farm_campaign_report(tmp, tmp / "report") == 0
    assert (tmp / "report" / "report.html").is_file()        # `coordinator report` wrote the page
    assert not (tmp / "report" / "index.html").exists()      # one model: no fleet summary page
    return tmp / "report"


@pytest.fixture(scope="module")
def report(campaign) -> dict:
    return json.loads((campaign / "report.json").read_text())


@pytest.fixture()
def opened(browser, campaign):
    with watched_page(browser) as w:
        w.page.goto((campaign / "report.html").as_uri())
        yield w
        assert w.errors == [], w.errors


def _column(page, table: str, key: str) -> list[str]:
    return page.eval_on_selector_all(f"#{table} tbody td.col-{key}",
                                     "cells => cells.map(c => c.getAttribute('data-v') ?? c.textContent)")


def test_each_device_class_shows_its_recommended_candidate(opened, report):
    page = opened.page
    for device in ("cpu-a", "npu-x"):
        recommended = report["pareto"]["per_device"][device]["recommended"]
        card = page.locator(f"article.card[data-device='{device}']")
        assert card.get_attribute("data-recommended") == recommended
        assert card.locator(".rec-id").inner_text() == recommended[:10]
        assert card.locator(".rec-id").is_visible() and "why" in card.inner_text().lower()
        row = page.locator(f"section[data-device='{device}'] tr.rec")
        assert row.count() == 1 and row.get_attribute("data-cand") == recommended


def test_the_comparison_table_flags_what_diverges_across_classes(opened, report):
    page = opened.page
    table = page.locator("#comparison table#comparison")
    assert table.is_visible()
    assert table.locator("tbody tr").count() == len(report["candidates"])
    groups = table.locator("tr.groups th.group").all_inner_texts()
    assert groups == ["cpu-a", "npu-x"]
    full = next(c for c in report["candidates"] if c["excluded_nodes"] == [])     # no quantized Gemm on npu-x
    row = table.locator(f"tr[data-cand='{full['id']}']")
    assert "diverge" in row.get_attribute("class")
    assert "unsupported on npu-x" in row.locator("td.col-divergence").inner_text()
    assert row.locator("td.odd").inner_text() == "unsupported"


def test_charts_are_drawn(opened, report):
    page = opened.page
    for index, device in enumerate(("cpu-a", "npu-x")):
        ok = [c for c in report["candidates"] if c["results"][device]["status"] == "ok"]
        points = page.locator(f"#device-{index} figure.chart-scatter svg.plot circle.pt")
        assert points.count() == len(ok) and points.first.is_visible()
        front = report["pareto"]["per_device"][device]["fronts"][0]
        assert page.locator(f"#device-{index} svg.plot circle.pt.front").count() == len(front)
        assert page.locator(f"#device-{index} svg.plot circle.rec-ring").count() == 1
    assert page.locator("#ranking svg.plot rect.bar").count() >= len(report["ranking"])
    history = page.locator("#history svg.plot")
    assert history.is_visible() and history.locator("circle.dot").count() + history.locator("path.fail").count() \
        == sum(len(c["results"]) for c in report["candidates"])
    # a chart point finds its row in the table
    page.locator("#device-0 svg.plot circle.pt.front").first.click(force=True)
    assert page.locator("#device-0 tr.flash").count() == 1


def test_clicking_a_header_sorts_the_column(opened):
    page = opened.page
    header = page.locator("#candidates-0 th.col-latency_ms_p50")
    header.click()
    values = [float(v) for v in _column(page, "candidates-0", "latency_ms_p50") if v != ""]
    assert values == sorted(values) and len(values) >= 3 and header.get_attribute("aria-sort") == "ascending"
    header.click()
    values = [float(v) for v in _column(page, "candidates-0", "latency_ms_p50") if v != ""]
    assert values == sorted(values, reverse=True)
    # text columns sort too, and failed candidates (no numbers) stay last in both directions
    page.locator("#candidates-1 th.col-top1_agreement").click()
    cells = _column(page, "candidates-1", "top1_agreement")
    filled = [c for c in cells if c != ""]
    assert cells[: len(filled)] == filled and "" in cells


def test_the_page_makes_no_network_request_and_is_screenshotted(opened, campaign, tmp_path):
    page = opened.page
    page.wait_for_load_state("networkidle")
    assert opened.requests == [(campaign / "report.html").as_uri()]
    full = screenshot(page, tmp_path / "report-two-devices.png")
    page.locator("#device-1").scroll_into_view_if_needed()
    part = tmp_path / "report-device-npu-x.png"
    page.locator("#device-1").screenshot(path=str(part))
    assert full.stat().st_size > 50_000 and part.stat().st_size > 10_000
    size = (campaign / "report.html").stat().st_size
    assert size < 5_000_000


def test_hostile_names_render_as_text(browser, tmp_path):
    """A node named <script>, a device named like an <img onerror>, crash stderr with markup."""
    out = tmp_path / "out"
    # a pinned recipe: a probed recipe keeping the first layers float could leave the hostile node out of the ranking
    assert local_tune(hostile_model(tmp_path / "hostile.onnx"), out, "--no-reduce-range") == 0
    report = json.loads((out / "report.json").read_text())
    device = '<img src=x onerror="alert(2)">'
    for cand in report["candidates"]:
        cand["results"][device] = {"status": "crash", "crash_cause": "signal:SIGSEGV",
                                   "stderr_tail": "</pre><script>alert(3)</script>"}
    report["devices"].append(device)
    hostile = tmp_path / "hostile" / "report.json"
    hostile.parent.mkdir()
    hostile.write_text(json.dumps(report))
    assert main(["export-html", str(hostile)]) == 0
    for page_file in (out / "report.html", hostile.parent / "report.html"):
        with watched_page(browser) as w:
            w.page.goto(page_file.as_uri())
            w.page.wait_for_timeout(200)
            assert w.dialogs == [] and w.errors == []
            cell = w.page.locator("#ranking td.col-node").filter(has_text=HOSTILE_NODE)
            assert cell.count() == 1 and cell.is_visible() and cell.inner_text() == HOSTILE_NODE
            assert w.page.locator("script").count() == 1 and w.page.locator("img").count() == 0
            assert w.requests == [page_file.as_uri()]
            if page_file.parent == hostile.parent:
                assert w.page.locator(f"article.card[data-device='{device}'] h3").inner_text() == device
                w.page.locator("details summary").first.click()
                assert "</pre><script>alert(3)</script>" in w.page.locator("details pre").first.inner_text()
                screenshot(w.page, tmp_path / "report-hostile-names.png")
