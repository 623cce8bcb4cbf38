"""The dashboard's web application (aiohttp), run on its own event loop in a thread of
`coordinator serve`. Every page is read-only; every route but the login form needs the coordinator's
token when one is configured (see auth.py). Pages reload themselves while there is something to
watch (a small script fetches the page again and swaps its content in, so nothing flickers and a
click is never lost to a reload)."""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from functools import lru_cache, partial
from typing import Any, Callable

from aiohttp import web
from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined

from coordinator.dashboard import snapshot
from coordinator.dashboard.auth import COOKIE, HttpAuth
from coordinator.dashboard.metrics import CONTENT_TYPE, FarmMetrics
from coordinator.html.render import qfarm_version, render_fleet, render_html, script
from shared.errors import NotFound, QfarmError

log = logging.getLogger("coordinator.dashboard")

PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; script-src '{script}'")
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
TERMINAL = ("done", "failed", "cancelled")


@lru_cache(maxsize=1)
def environment() -> Environment:
    loader = ChoiceLoader([PackageLoader("coordinator.dashboard", "templates"),
                           PackageLoader("coordinator.html", "templates")])
    return Environment(loader=loader, autoescape=True, undefined=StrictUndefined, trim_blocks=True,
                       lstrip_blocks=True)


def _page(template: str, status: int = 200, **context: Any) -> web.Response:
    js, digest = script("dashboard.js", environment())
    body = environment().get_template(template).render(version=qfarm_version(), script=js, **context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8",
                        headers={**HEADERS, "Content-Security-Policy": PAGE_CSP.format(script=digest)})


def _safe_next(value: str | None) -> str:
    """Only a path on this server (never //host or a scheme) is a place to go back to."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def make_app(coord, auth: HttpAuth, metrics: FarmMetrics, refresh_s: float = 2.0, secure_cookie: bool = False):
    async def blocking(fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))

    @web.middleware
    async def guard(request: web.Request, handler):
        if request.path == "/login":
            return await handler(request)
        why = auth.check(request.headers.get("Authorization"), request.cookies.get(COOKIE))
        if why:
            if request.path == "/metrics" or "Authorization" in request.headers or \
                    "text/html" not in request.headers.get("Accept", ""):
                return web.Response(text=f"unauthenticated: {why} (send Authorization: Bearer TOKEN)\n", status=401,
                                    headers={**HEADERS, "WWW-Authenticate": 'Bearer realm="qfarm"'})
            return _page("login.html.j2", 401, error="" if why == "no token" else why, next=request.path_qs)
        try:
            response = await handler(request)
        except NotFound as exc:
            return _page("error.html.j2", 404, message=str(exc))
        except QfarmError as exc:
            return _page("error.html.j2", 400, message=str(exc))
        return response

    async def login_form(request: web.Request):
        if not auth.required:
            raise web.HTTPSeeOther("/")
        return _page("login.html.j2", error="", next=_safe_next(request.query.get("next")))

    async def login(request: web.Request):
        form = await request.post()
        target = _safe_next(str(form.get("next", "/")))
        if not auth.required:
            raise web.HTTPSeeOther(target)
        if not auth.login(str(form.get("token", ""))):
            log.warning("dashboard login refused from %s", request.remote)
            return _page("login.html.j2", 401, error="wrong token", next=target)
        response = web.HTTPSeeOther(target)
        response.set_cookie(COOKIE, auth.session_value(), httponly=True, samesite="Strict", secure=secure_cookie,
                            path="/")
        raise response

    async def index(request: web.Request):
        view = await blocking(snapshot.overview, coord)
        busy = any(c.state not in TERMINAL for c in view.campaigns)
        return _page("overview.html.j2", view=view, refresh=refresh_s if busy or not view.campaigns else 0,
                     title="qfarm coordinator")

    async def campaign(request: web.Request):
        cid = request.match_info["campaign"]
        detail = await blocking(snapshot.campaign, coord, cid)
        reports = await blocking(snapshot.live_reports, coord, cid)
        fleet = snapshot.campaign_fleet(cid, reports, [p.device for p in detail.summary.progress])
        running = detail.summary.state not in TERMINAL
        return _page("campaign.html.j2", c=detail, has_report=any(r is not None for _, r in reports), fleet=fleet,
                     refresh=refresh_s if running else 0, title=f"campaign {detail.summary.name}")

    async def report_page(request: web.Request):
        """A model's live report (?model=NAME; the only model's without it), or for a campaign of
        several models without ?model, their fleet summary linking each one's page."""
        cid = request.match_info["campaign"]
        detail = await blocking(snapshot.campaign, coord, cid)        # 404 for an unknown campaign
        reports = await blocking(snapshot.live_reports, coord, cid)
        model = request.query.get("model")
        if all(r is None for _, r in reports) and model is None:
            raise NotFound(f"campaign {cid} has no report yet ({detail.summary.state}: {detail.summary.message})",
                           step="dashboard")
        running = detail.summary.state not in TERMINAL
        refresh = max(refresh_s, 5.0) if running else 0
        if model is None and len(reports) > 1:
            fleet = snapshot.campaign_fleet(cid, reports, [p.device for p in detail.summary.progress])
            body = await blocking(partial(render_fleet, fleet, f"qfarm fleet summary: {detail.summary.name}",
                                          f"campaign {cid}: {len(reports)} models; state: {detail.summary.state}",
                                          refresh))
        else:
            report = snapshot.model_report(reports, cid, reports[0][0] if model is None else model)
            body = await blocking(partial(render_html, report, refresh_s=refresh))
        return web.Response(text=body, content_type="text/html", charset="utf-8",
                            headers={**HEADERS, "Content-Security-Policy": "frame-ancestors 'none'"})

    async def metrics_page(request: web.Request):
        body = await blocking(metrics.exposition)
        return web.Response(body=body, headers={**HEADERS, "Content-Type": CONTENT_TYPE})

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.add_routes([web.get("/", index), web.get("/login", login_form), web.post("/login", login),
                    web.get("/campaigns/{campaign}", campaign), web.get("/campaigns/{campaign}/report", report_page),
                    web.get("/metrics", metrics_page)])
    return app


class DashboardServer:
    """The web app on its own event loop in a daemon thread; `start()` returns the bound port."""

    def __init__(self, coord, host: str, port: int, auth: HttpAuth, ssl_context: ssl.SSLContext | None = None,
                 refresh_s: float = 2.0):
        self.coord, self.host, self.port, self.auth = coord, host, port, auth
        self.ssl_context = ssl_context
        self.refresh_s = refresh_s
        self.metrics = FarmMetrics(coord.store)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}/"

    def start(self) -> int:
        self.coord.store.job_listeners.append(self.metrics.on_job_transition)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self.port

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self.metrics.on_job_transition in self.coord.store.job_listeners:
            self.coord.store.job_listeners.remove(self.metrics.on_job_transition)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it in the caller
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _serve(self) -> None:
        app = make_app(self.coord, self.auth, self.metrics, self.refresh_s, secure_cookie=self.ssl_context is not None)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
