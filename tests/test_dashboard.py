"""The live dashboard (`coordinator serve --http-port`): a real coordinator with a token, real
agents joining while a browser (Debian's Chromium) watches the campaign progress, the report page
filling in, Prometheus /metrics, and the token enforced exactly as for gRPC."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from argparse import Namespace
from pathlib import Path

import pytest

from coordinator.dashboard.app import DashboardServer
from coordinator.dashboard.auth import COOKIE, HttpAuth
from coordinator.dashboard.command import start_dashboard
from coordinator.farm.client import CampaignClient
from shared.auth import Credentials, ServerSecurity
from shared.errors import FailedPrecondition
from tests.browser_support import screenshot, watched_page
from tests.farm_support import ROOT, AgentThread, stop_process, tiny_spec, wait_for
from tests.models import make_classifier
from tests.security_support import secured

TOKEN = "dashboard-test-token-0123456789"


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A coordinator with a token and its dashboard; no agent yet."""
    tmp = tmp_path_factory.mktemp("farm")
    with secured(tmp / "coord", ServerSecurity(token=TOKEN)) as (server, address):
        dashboard = DashboardServer(server.coordinator, "127.0.0.1", 0, HttpAuth(TOKEN), refresh_s=0.5)
        dashboard.start()
        try:
            yield tmp, address, dashboard
        finally:
            dashboard.stop()


def _done(page, device: str) -> int:
    return int(page.locator(f".progress[data-device='{device}'] .done").first.inner_text())


def test_a_browser_watches_a_campaign_progress_and_its_report_fill_in(browser, farm):
    tmp, address, dashboard = farm
    credentials = Credentials(token=TOKEN)
    spec = tiny_spec(tmp, make_classifier(tmp / "tiny.onnx"), ["cpu-a", "npu-x"], max_candidates=3)
    with CampaignClient(address, credentials=credentials) as client, watched_page(browser) as w:
        campaign = client.submit(spec)
        page = w.page
        page.goto(dashboard.url)
        assert page.locator("form.login").is_visible() and page.locator("#login-error").count() == 0
        page.fill("input[name=token]", "not-the-token-at-all-0000")
        page.click("button[type=submit]")
        assert page.locator("#login-error").inner_text() == "wrong token"
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector(f"article.campaign[data-campaign='{campaign}']")
        assert page.locator("#agents .empty").is_visible()                # nobody has joined yet
        page.click(f"article.campaign[data-campaign='{campaign}'] h3 a")
        page.wait_for_selector("#progress .progress[data-device='cpu-a']")
        before = _done(page, "cpu-a")
        with AgentThread("cpu-a", address, tmp / "a", credentials=credentials), \
                AgentThread("npu-x", address, tmp / "n", credentials=credentials,
                            runtime="tests.device_runtimes:no_quantized_gemm"):
            # the page reloads itself: the count rises while we only look
            wait_for(lambda: _done(page, "cpu-a") > before, 120, "cpu-a progress on the page", poll=0.3)
            screenshot(page, tmp / "dashboard-campaign-running.png")
            # the report page fills in: while the campaign runs it is a snapshot that says so and reloads
            response = wait_for(lambda: (r := page.request.get(f"{dashboard.url}campaigns/{campaign}/report")).ok
                                and r, 60, "a partial report")
            body = response.text()
            [state] = [c.state for c in client.status(campaign).campaigns]
            if state == "running":          # else it finished between the two calls: nothing to check
                assert "this campaign is still running" in body and 'http-equiv="refresh"' in body
            wait_for(lambda: "done" == page.locator("#progress .state").inner_text(), 180, "campaign done", poll=0.5)
        assert page.locator("#recent tbody tr").count() > 0
        assert "no quantized Gemm kernel" in page.locator("#failures").inner_text()     # failures with their cause
        assert _done(page, "cpu-a") == int(page.locator(".progress[data-device='cpu-a'] .total").inner_text())
        page.click("a.report-link")
        page.wait_for_selector("article.card[data-device='npu-x']")
        report = client_report(client, campaign, tmp)
        for device in ("cpu-a", "npu-x"):
            recommended = report["pareto"]["per_device"][device]["recommended"]
            shown = page.locator(f"article.card[data-device='{device}']").get_attribute("data-recommended")
            assert (shown or None) == recommended           # "" when nothing pays on that device
        page.goto(dashboard.url)
        assert page.locator("#agents tbody tr").count() == 2
        screenshot(page, tmp / "dashboard-overview.png")
        origin = dashboard.url.rstrip("/")
        assert all(url.startswith(origin + "/") for url in w.requests), w.requests
        assert w.errors == [] and w.dialogs == []


def client_report(client, campaign: str, tmp: Path) -> dict:
    import json

    _, paths = client.report(campaign, tmp / "report")
    return json.loads(next(p for p in paths if p.name == "report.json").read_text())


def test_the_token_is_required_and_metrics_count_the_farm(farm):
    _, _, dashboard = farm
    url = dashboard.url
    html = {"Accept": "text/html"}
    assert _get(url)[0] == 401
    status, body = _get(url, html)
    assert status == 401 and "Sign in" in body and "wrong token" not in body
    assert _get(url, {**html, "Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    assert _get(url, {"Authorization": f"Basic {TOKEN}"})[0] == 401
    assert _get(url, {"Cookie": f"{COOKIE}={TOKEN}"})[0] == 401              # the cookie is not the token
    assert _get(url + "metrics")[0] == 401
    assert _get(url, {**html, "Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert _get(url, {"Cookie": f"{COOKIE}={HttpAuth(TOKEN).session_value()}"})[0] == 200
    status, metrics = _get(url + "metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    samples = dict(re.findall(r'^(qfarm_\S+) (\S+)$', metrics, re.M))
    assert float(samples['qfarm_results_total{device="cpu-a",status="ok"}']) >= 1
    assert float(samples['qfarm_crashes_total{device="npu-x"}']) >= 1                # no quantized Gemm there
    assert float(samples['qfarm_lease_wait_seconds_count{device="cpu-a"}']) >= 1
    assert float(samples['qfarm_report_latency_seconds_count{device="npu-x"}']) >= 1
    assert 'qfarm_agents{device="cpu-a",state="gone"}' in samples
    assert _get(url + "campaigns/nope", {**html, "Authorization": f"Bearer {TOKEN}"})[0] == 404


def test_login_redirects_only_within_the_dashboard(farm):
    _, _, dashboard = farm
    for target, expected in (("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/metrics", "/metrics")):
        data = urllib.parse.urlencode({"token": TOKEN, "next": target}).encode()
        request = urllib.request.Request(dashboard.url + "login", data=data, method="POST")

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None
        try:
            urllib.request.build_opener(NoRedirect).open(request, timeout=10)
            raise AssertionError("login did not redirect")
        except urllib.error.HTTPError as exc:
            assert exc.code == 303 and exc.headers["Location"] == expected
            assert "HttpOnly" in exc.headers["Set-Cookie"] and "SameSite=Strict" in exc.headers["Set-Cookie"]


def test_without_a_token_the_dashboard_stays_on_loopback(tmp_path):
    args = Namespace(http_port=0, http_host="0.0.0.0", host="127.0.0.1", http_port_file=None, http_refresh=2.0)
    with pytest.raises(FailedPrecondition, match="without a token"):
        start_dashboard(args, coord=None, security=ServerSecurity())
    # `coordinator serve --http-port 0` on loopback: no token needed there, as for gRPC
    port_file = tmp_path / "http-port"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--port", "0", "--data-dir",
                             str(tmp_path / "data"), "--http-port", "0", "--http-port-file", str(port_file)],
                            stdout=log, stderr=log, cwd=ROOT)
    try:
        port = int(wait_for(lambda: port_file.is_file() and port_file.read_text().strip(), 60, "dashboard port"))
        status, body = _get(f"http://127.0.0.1:{port}/", {"Accept": "text/html"})
        assert status == 200 and "no agent has registered" in body
    finally:
        stop_process(proc, signal.SIGTERM)
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()
    assert "dashboard on http://127.0.0.1:" in (tmp_path / "serve.log").read_text()
