"""The dashboard's pages under /ui: server-rendered HTML over the same reads as the admin API.

Every page needs a signed-in admin token with `read` (session.py); retrying a dead letter needs
`write` and a genuine form (CSRF). Pages are plain HTML with a small script for conveniences
(local times, auto-refresh); they work without it. Errors are pages, not the API's JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tidings import sandbox
from tidings.api.profiles import profile_document, timeline_document
from tidings.delivery import outbox
from tidings.flows.read import get_run, list_runs, summaries
from tidings.ui import charts, queries
from tidings.ui.session import (
    COOKIE,
    COOKIE_PATH,
    MAX_AGE,
    Operator,
    authorise,
    csrf_problem,
    is_https,
    login_url,
    new_cookie_value,
    operator,
    safe_next,
    same_origin,
)

STATUSES = (outbox.PENDING, outbox.IN_FLIGHT, outbox.DELIVERED, outbox.DEAD)
MAX_FORM_BYTES = 16 * 1024
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


class Denied(Exception):
    """Raised by a page's guard; the response (a redirect to the login, or an error page) is sent."""

    def __init__(self, response: Response) -> None:
        self.response = response


class PageRoute(APIRoute):
    """Turns `Denied` into its response, so guards read as one line at the top of each page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Denied as denied:
                return denied.response

        return handle


router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False, route_class=PageRoute)

env = Environment(
    loader=PackageLoader("tidings.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


env.filters.update(when=_when, iso=_iso, pretty=_pretty, short=_short, seconds=charts.seconds_label)
env.globals.update(colour=charts.colour)


def page(
    request: Request, template: str, who: Operator | None, http_status: int = 200, **context: Any
) -> HTMLResponse:
    html = env.get_template(template).render(
        request=request, who=who, csrf=who.csrf if who else "", path=request.url.path, **context
    )
    return HTMLResponse(html, status_code=http_status, headers=HEADERS)


def error_page(request: Request, who: Operator | None, status: int, message: str) -> HTMLResponse:
    return page(request, "error.html", who, status, status_code=status, message=message)


async def viewer(request: Request) -> Operator:
    """The signed-in operator with `read`, or Denied: to the login page, or a 403 page."""
    who = await operator(request)
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise Denied(RedirectResponse(login_url(target), status_code=303, headers=HEADERS))
    if not who.can("read"):
        raise Denied(error_page(request, None, 403, f"The token {who.name!r} lacks the 'read' scope."))
    return who


async def form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Denied(error_page(request, None, 413, "The form is too large."))
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


async def writer(request: Request) -> Operator:
    """`viewer` plus the `write` scope and a genuine form (same origin, this login's CSRF token)."""
    who = await viewer(request)
    fields = await form(request)
    problem = csrf_problem(request, who, fields.get("csrf", ""))
    if problem is not None:
        raise Denied(error_page(request, who, 403, f"Refused: {problem}."))
    if not who.can("write"):
        raise Denied(
            error_page(
                request, who, 403, f"The token {who.name!r} lacks the 'write' scope; nothing was changed."
            )
        )
    return who


# ------------------------------------------------------------------ signing in


@router.get("", response_class=HTMLResponse)
async def root() -> Response:
    return RedirectResponse(COOKIE_PATH + "/", status_code=308)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "") -> Response:
    return page(request, "login.html", None, next=safe_next(next), error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    fields = await form(request)
    target = safe_next(fields.get("next"))
    if not same_origin(request):
        return page(
            request, "login.html", None, 403, next=target, error="The form was sent from another site."
        )
    token = fields.get("token", "").strip()
    found = await authorise(request, token) if token else None
    if found is None:
        error = "That token is not one of server.admin_tokens." if token else "Paste an admin token."
        return page(request, "login.html", None, 401, next=target, error=error)
    name, scopes = found
    if "read" not in scopes:
        error = f"The token {name!r} lacks the 'read' scope the dashboard needs."
        return page(request, "login.html", None, 403, next=target, error=error)
    response = RedirectResponse(target, status_code=303, headers=HEADERS)
    response.set_cookie(
        COOKIE,
        new_cookie_value(token),
        max_age=MAX_AGE,
        path=COOKIE_PATH,
        secure=is_https(request),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request) -> Response:
    who = await operator(request)
    fields = await form(request)
    if who is not None and csrf_problem(request, who, fields.get("csrf", "")) is not None:
        return error_page(request, who, 403, "Refused: the form is not from this session.")
    response = RedirectResponse(COOKIE_PATH + "/login", status_code=303, headers=HEADERS)
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, secure=is_https(request), httponly=True, samesite="strict"
    )
    return response


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    body = resources.files("tidings.ui").joinpath("static", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"cache-control": "max-age=300"})


# ------------------------------------------------------------------ pages


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    who = await viewer(request)
    tidings = request.app.state.tidings
    now = tidings.clock.now()
    configured = sorted(tidings.settings.destinations)

    def read(conn: Any) -> tuple[queries.Overview, Any, list[outbox.Delivery]]:
        return (
            queries.overview(conn, now, configured),
            summaries(conn, tidings.flows),
            outbox.list_deliveries(conn, status=outbox.DEAD, limit=10),
        )

    view, flows, dead = await tidings.store.read(read)
    order = sorted(view.freshness)
    return page(
        request,
        "overview.html",
        who,
        nav="overview",
        view=view,
        flows=flows,
        dead=dead,
        chart=charts.freshness_svg(view.freshness, view.since, view.now),
        legend=[(name, charts.colour(i)) for i, name in enumerate(order)],
    )


@router.get("/customers", response_class=HTMLResponse)
async def customers(request: Request, q: str = "", offset: int = 0) -> Response:
    who = await viewer(request)
    ref = q.strip()
    if not ref:
        return page(request, "customer.html", who, nav="customers", q="", profile=None, missing=False)
    offset = max(0, offset)
    tidings = request.app.state.tidings

    def read(conn: Any) -> tuple[Any, Any, list[outbox.Delivery], list[Any]]:
        document = profile_document(conn, ref)
        if document is None:
            return None, None, [], []
        timeline = timeline_document(conn, str(document.id), limit=100, offset=offset)
        deliveries = queries.profile_deliveries(conn, document.id)
        runs = [
            run
            for flow in sorted(tidings.flows.current)
            for run in list_runs(conn, flow, profile_id=document.id, limit=20, with_steps=False)
        ]
        return document, timeline, deliveries, runs

    profile, timeline, deliveries, runs = await tidings.store.read(read)
    if profile is None:
        return page(request, "customer.html", who, 404, nav="customers", q=ref, profile=None, missing=True)
    return page(
        request,
        "customer.html",
        who,
        nav="customers",
        q=ref,
        profile=profile,
        timeline=timeline,
        deliveries=deliveries,
        runs=runs,
        missing=False,
        offset=offset,
    )


@router.get("/flows", response_class=HTMLResponse)
async def flows(request: Request, status: str = "") -> Response:
    who = await viewer(request)
    tidings = request.app.state.tidings
    wanted = status if status in ("active", "completed", "exited", "failed") else None

    def read(conn: Any) -> tuple[Any, dict[str, Any]]:
        found = summaries(conn, tidings.flows)
        return found, {f.name: list_runs(conn, f.name, status=wanted, limit=10) for f in found}

    found, recent = await tidings.store.read(read)
    return page(request, "flows.html", who, nav="flows", flows=found, recent=recent, status=wanted or "")


@router.get("/flows/runs/{run_id:int}", response_class=HTMLResponse)
async def flow_run(request: Request, run_id: int) -> Response:
    who = await viewer(request)
    run = await request.app.state.tidings.store.read(lambda conn: get_run(conn, run_id))
    if run is None:
        return error_page(request, who, 404, f"There is no flow run {run_id}.")
    return page(request, "run.html", who, nav="flows", run=run)


@router.get("/deliveries", response_class=HTMLResponse)
async def deliveries(request: Request, destination: str = "", status: str = "") -> Response:
    who = await viewer(request)
    tidings = request.app.state.tidings
    names = sorted(tidings.settings.destinations)
    chosen = status if status in STATUSES else None
    where = destination or None
    rows = await tidings.store.read(
        lambda conn: outbox.list_deliveries(conn, status=chosen, destination=where, limit=100)
    )
    return page(
        request,
        "deliveries.html",
        who,
        nav="deliveries",
        rows=rows,
        destinations=names,
        statuses=STATUSES,
        destination=destination,
        status=chosen or "",
    )


@router.get("/sandbox", response_class=HTMLResponse)
async def sandbox_requests(request: Request, destination: str = "") -> Response:
    """In sandbox mode: what the simulated destinations received instead of the vendors."""
    who = await viewer(request)
    tidings = request.app.state.tidings
    try:
        rows = sandbox.recorded(tidings, destination=destination or None, limit=200)
    except sandbox.SandboxError as exc:
        return page(
            request,
            "sandbox.html",
            who,
            nav="sandbox",
            rows=[],
            problem=str(exc),
            destinations=sorted(tidings.settings.destinations),
            destination=destination,
        )
    return page(
        request,
        "sandbox.html",
        who,
        nav="sandbox",
        rows=rows,
        problem=None,
        destinations=sorted(tidings.settings.destinations),
        destination=destination,
    )


@router.get("/deliveries/{delivery_id:int}", response_class=HTMLResponse)
async def delivery(request: Request, delivery_id: int, retried: str = "") -> Response:
    who = await viewer(request)
    found = await request.app.state.tidings.store.read(lambda conn: outbox.get_delivery(conn, delivery_id))
    if found is None:
        return error_page(request, who, 404, f"There is no delivery {delivery_id}.")
    return page(request, "delivery.html", who, nav="deliveries", d=found, retried=retried)


@router.post("/deliveries/{delivery_id:int}/retry", response_class=HTMLResponse)
async def retry(request: Request, delivery_id: int) -> Response:
    who = await writer(request)
    tidings = request.app.state.tidings
    queued = await tidings.store.write(
        lambda conn: outbox.retry_dead(conn, tidings.clock.now(), [delivery_id])
    )
    if not queued:
        return error_page(
            request, who, 409, f"Delivery {delivery_id} is not a dead letter; nothing was retried."
        )
    tidings.dispatcher.wake()
    query = urlencode({"retried": "1"})
    return RedirectResponse(
        f"{COOKIE_PATH}/deliveries/{delivery_id}?{query}", status_code=303, headers=HEADERS
    )
