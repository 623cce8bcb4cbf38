"""The fleet summary of a multi-model campaign: a real campaign of two tiny models on two device
classes (cpu-a on onnxruntime, npu-x a runtime without a quantized Gemm), written by `coordinator
report` as index.html beside each model's folder and printed on the console, and served live by the
dashboard (each model's report page, the campaign page listing every model), opened in Chromium.
What the pages say is compared with each model's report.json, never assumed."""
from __future__ import annotations

import copy
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.dashboard import snapshot
from coordinator.dashboard.app import DashboardServer
from coordinator.dashboard.auth import HttpAuth
from coordinator.html.fleet import fleet, pick
from coordinator.html.render import render_fleet
from tests.browser_support import screenshot, watched_page
from tests.report_support import FLEET_DEVICES, FLEET_MODELS, HOSTILE_NODE, fleet_spec, two_class_campaign


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """The finished campaign, `coordinator report` of it in out/, and the coordinator's dashboard."""
    tmp = tmp_path_factory.mktemp("fleet")
    with two_class_campaign(tmp, fleet_spec(tmp)) as (server, address, campaign):
        assert main(["report", campaign, "-o", str(tmp / "out"), "--coordinator", address]) == 0
        dashboard = DashboardServer(server.coordinator, "127.0.0.1", 0, HttpAuth(), refresh_s=0.5)
        dashboard.start()
        try:
            yield tmp, address, campaign, dashboard
        finally:
            dashboard.stop()


@pytest.fixture(scope="module")
def reports(farm) -> dict[str, dict]:
    out = farm[0] / "out"
    return {m: json.loads((out / m / "report.json").read_text()) for m in FLEET_MODELS}


def _recommended(report: dict, device: str) -> str | None:
    return report["pareto"]["per_device"][device]["recommended"]


def _rows(page) -> dict[str, object]:
    """The fleet table's rows by model name."""
    rows = page.locator("#fleet tbody tr")
    return {rows.nth(i).locator("td.col-model").inner_text(): rows.nth(i) for i in range(rows.count())}


def _check_fleet_table(page, reports: dict[str, dict]) -> None:
    """Both models x both classes, each cell the candidate its report.json recommends (or none)."""
    assert page.locator("#fleet tr.groups th.group").all_inner_texts() == list(FLEET_DEVICES)
    rows = _rows(page)
    assert sorted(rows) == sorted(FLEET_MODELS)
    for model, report in reports.items():
        for i, device in enumerate(FLEET_DEVICES):
            cell = rows[model].locator(f"td.col-d{i}-ship")
            recommended = _recommended(report, device)
            if recommended is None:
                assert cell.inner_text().startswith("none — "), cell.inner_text()
            else:
                assert cell.get_attribute("title").split(":")[0] == recommended
                assert cell.inner_text().startswith(recommended[:10])
            result = next(c for c in report["candidates"] if c["id"] == recommended)["results"][device] \
                if recommended else None
            ratio = rows[model].locator(f"td.col-d{i}-ratio").inner_text()
            if result and result.get("latency_ratio_vs_fp32") is not None:
                assert ratio.startswith(f"{result['latency_ratio_vs_fp32']:.2f}x ("), ratio     # with p10-p90


def test_index_html_shows_every_model_on_every_class_and_links_their_pages(browser, farm, reports):
    out = farm[0] / "out"
    assert (out / "index.html").is_file() and not (out / "report.html").exists()
    with watched_page(browser) as w:
        page = w.page
        page.goto((out / "index.html").as_uri())
        _check_fleet_table(page, reports)
        screenshot(page, farm[0] / "fleet-index.png")
        for model in FLEET_MODELS:
            page.goto((out / "index.html").as_uri())
            _rows(page)[model].locator("td.col-model a").click()
            page.wait_for_selector("article.card[data-device='npu-x']")
            assert page.url == (out / model / "report.html").as_uri()
            assert f"{model}.onnx" in page.locator("h1").inner_text()
            for device in FLEET_DEVICES:
                shown = page.locator(f"article.card[data-device='{device}']").get_attribute("data-recommended")
                assert (shown or None) == _recommended(reports[model], device)
        assert all(url.startswith("file://") for url in w.requests), w.requests
        assert w.errors == [] and w.dialogs == []


def test_the_console_prints_the_same_table(farm, reports, capsys):
    tmp, address, campaign, _ = farm
    assert main(["report", campaign, "-o", str(tmp / "again"), "--coordinator", address]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("What to ship: each model on each device class"):]
    for model, report in reports.items():
        assert model in table
        for device in FLEET_DEVICES:
            assert (_recommended(report, device) or "none — ") in table
    assert f"fleet summary: {tmp / 'again' / 'index.html'}" in printed


def test_the_dashboard_lists_every_model_and_serves_each_ones_report(browser, farm, reports):
    _, _, campaign, dashboard = farm
    with watched_page(browser) as w:
        page = w.page
        page.goto(f"{dashboard.url}campaigns/{campaign}")
        assert page.locator("#models li").evaluate_all("items => items.map(i => i.dataset.model)") == \
            list(FLEET_MODELS)
        _check_fleet_table(page, reports)
        screenshot(page, farm[0] / "fleet-dashboard-campaign.png")
        for model in FLEET_MODELS:
            page.goto(f"{dashboard.url}campaigns/{campaign}")
            page.click(f"#models li[data-model='{model}'] a.model-link")
            page.wait_for_selector("article.card[data-device='npu-x']")
            assert f"{model}.onnx" in page.locator("h1").inner_text()
            for device in FLEET_DEVICES:
                shown = page.locator(f"article.card[data-device='{device}']").get_attribute("data-recommended")
                assert (shown or None) == _recommended(reports[model], device)
        page.goto(f"{dashboard.url}campaigns/{campaign}")
        page.click("a.report-link")                       # several models: the live fleet summary page
        page.wait_for_selector("#fleet tbody tr")
        _check_fleet_table(page, reports)
        origin = dashboard.url.rstrip("/")
        assert all(url.startswith(origin + "/") for url in w.requests), w.requests
        assert w.errors == [] and w.dialogs == []


def _get(url: str) -> tuple[int, str, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "text/html"}), timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_an_unknown_model_is_a_404_that_names_the_models_and_shows_a_hostile_name_as_text(browser, farm):
    _, _, campaign, dashboard = farm
    base = f"{dashboard.url}campaigns/{campaign}/report?model="
    status, body, headers = _get(base + "nope")
    assert status == 404 and f"campaign {campaign} has no model &#39;nope&#39;; its models: tiny-a, tiny-b" in body
    assert headers["X-Content-Type-Options"] == "nosniff" and "script-src 'sha256-" in \
        headers["Content-Security-Policy"]
    status, body, _ = _get(base + "tiny-b")
    assert status == 200 and "tiny-b.onnx" in body
    hostile = base + urllib.parse.quote(HOSTILE_NODE)
    status, body, _ = _get(hostile)
    assert status == 404 and "&lt;script&gt;alert(1)&lt;/script&gt;" in body and HOSTILE_NODE not in body
    with watched_page(browser) as w:
        w.page.goto(hostile)
        assert HOSTILE_NODE in w.page.locator("#error").inner_text()
        assert w.dialogs == [] and w.errors == []


def test_a_hostile_model_name_renders_as_text_in_index_html(browser, farm, reports, tmp_path):
    summary = fleet([(HOSTILE_NODE, reports["tiny-a"], f"{urllib.parse.quote(HOSTILE_NODE)}/report.html"),
                     ("tiny-b", reports["tiny-b"], "tiny-b/report.html")])
    page_file = tmp_path / "index.html"
    page_file.write_text(render_fleet(summary, f"fleet {HOSTILE_NODE}"))
    with watched_page(browser) as w:
        w.page.goto(page_file.as_uri())
        assert HOSTILE_NODE in _rows(w.page) and HOSTILE_NODE in w.page.locator("h1").inner_text()
        assert w.page.locator("script").count() == 1            # the page's own, nothing injected
        assert w.dialogs == [] and w.errors == []


def test_no_recommendation_shows_none_with_the_verdict_and_a_met_target_shows(reports):
    report = copy.deepcopy(reports["tiny-a"])
    entry = report["pareto"]["per_device"]["npu-x"]
    verdict = "quantization does not pay for tiny-a.onnx on npu-x: best INT8 p50 0.05 ms vs FP32 0.04 ms (1.20x FP32)"
    entry["recommended"], entry["policy"]["verdict"] = None, verdict
    none = pick(report, "npu-x")
    assert none.ship == "none — quantization does not pay" and none.ratio is None
    cpu = report["pareto"]["per_device"]["cpu-a"]
    cpu["target"] = {"max_agreement_drop": 0.01, "met": True, "line": "target met on cpu-a by it"}
    table = fleet([("tiny-a", report, "tiny-a/report.html")]).table()
    cells = {c.cls.split()[0] if c.cls else "": c for c in table.rows[0].cells}
    assert cells["none"].text == "none — quantization does not pay" and cells["none"].detail == verdict
    assert cells["met"].text == "met" and cells["met"].title == "target met on cpu-a by it"
    recommended = _recommended(report, "cpu-a")
    if recommended is not None:
        met = pick(report, "cpu-a")
        assert met.target_met is True and met.recommended == recommended and met.size_fraction is not None


def test_the_live_summary_shows_a_model_not_started_yet_as_waiting(farm, reports):
    _, _, campaign, _ = farm
    live = snapshot.campaign_fleet(campaign, [("tiny-a", reports["tiny-a"]), ("tiny-b", None)], list(FLEET_DEVICES))
    assert [r.state for r in live.rows] == ["done", "waiting"] and live.rows[1].href == ""
    assert live.rows[0].href == f"/campaigns/{campaign}/report?model=tiny-a"
    assert [c.text for c in live.table().rows[1].cells if c.cls == "waiting"] == ["waiting", "waiting"]
    assert live.notes == ["tiny-b: no report yet"]


def test_reports_of_odd_shapes_render_what_they_have():
    odd = {"devices": "cpu-a", "candidates": {"x": 1}, "pareto": {"per_device": {"cpu-a": {"recommended": 7}}},
           "status": {"state": "running"}}
    summary = fleet([("odd", odd, "odd/report.html"), ("old", {"devices": ["cpu-a"], "candidates": []}, "")])
    assert summary.devices == ["cpu-a"]
    odd_pick, old_pick = (r.picks["cpu-a"] for r in summary.rows)
    assert odd_pick.decided and odd_pick.ship == "none — no recommendation" and old_pick.ship == "waiting"
    assert summary.notes == ["odd: running, not done: its picks may still change",
                             "old: unknown, not done: its picks may still change"]
    assert "none — no recommendation" in render_fleet(summary, "odd")
