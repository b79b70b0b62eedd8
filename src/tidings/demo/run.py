"""Playing the demo: tidings on a throwaway store, a simulated shop and ESP, a clock that runs fast.

Nothing here is a stand-in for tidings itself: the webhooks are signed and POSTed to its real HTTP
endpoint, processed by its real loops, and the Klaviyo destination really delivers, in sandbox
mode, to the Klaviyo simulator. Only time is faked: a `ScaledClock` makes the flow's 30-minute
wait pass in 30 seconds at `--speed 60`. Every port is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import Connection, func, select

from tidings.api.app import create_app
from tidings.api.auth import new_token
from tidings.app import Tidings
from tidings.clock import ScaledClock
from tidings.config import Settings, parse_settings
from tidings.delivery.outbox import IN_FLIGHT, PENDING
from tidings.demo.feed import Feed, Line, Summary, cart_text, esp_received, recorded_requests, summarize
from tidings.demo.shop import SHOP_DOMAIN, Shop
from tidings.demo.story import Beat, story
from tidings.exceptions import TidingsError
from tidings.flows.runs import ACTIVE
from tidings.store.schema import flow_runs, inbox, outbox
from tidings.testing import ShopifySimulator

MIN_SPEED, MAX_SPEED = 1.0, 300.0  # faster, and a delivery could outlast its 5-minute lease
SETTLE_MINUTES = 60.0  # after the last beat, how long (virtual) the demo waits for runs to end
POLL = 0.1  # real seconds between looks at the store


@dataclass(frozen=True, slots=True)
class DemoOptions:
    speed: float = 60.0
    port: int = 0  # 0: any free port
    keep_running: bool = False


@dataclass(slots=True)
class DemoResult:
    summary: Summary
    esp: list[dict[str, Any]]  # what the ESP simulator accepted
    requests: list[dict[str, Any]]  # every request the simulators received
    settled: bool
    url: str
    admin_token: str
    virtual_start: datetime  # the clock's start
    story_start: datetime  # minute 0 of the story (once tidings was up)
    virtual_end: datetime
    real_seconds: float
    speed: float

    def as_json(self) -> dict[str, Any]:
        return {
            **self.summary.as_json(),
            "esp_received": self.esp,
            "sandbox_requests": self.requests,
            "settled": self.settled,
            "url": self.url,
            "dashboard": f"{self.url}/ui/",
            "virtual_start": self.virtual_start.isoformat(),
            "story_start": self.story_start.isoformat(),
            "virtual_end": self.virtual_end.isoformat(),
            "real_seconds": round(self.real_seconds, 2),
            "speed": self.speed,
        }


def demo_settings(
    *, port: int, store: Path, admin_token: str, shopify_secret: str, shopify_token: str, shopify_url: str
) -> Settings:
    """The packaged demo config (the abandoned-cart example), filled in."""
    text = resources.files("tidings.demo").joinpath("config.yaml").read_text()
    environ = {
        "DEMO_PORT": str(port),
        "DEMO_STORE": f"sqlite:///{store.as_posix()}",
        "DEMO_ADMIN_TOKEN": admin_token,
        "DEMO_SHOPIFY_SECRET": shopify_secret,
        "DEMO_SHOPIFY_TOKEN": shopify_token,
        "DEMO_SHOPIFY_URL": shopify_url,
        "DEMO_KLAVIYO_KEY": "pk_demo_" + secrets.token_hex(16),
    }
    return parse_settings(text, "tidings/demo/config.yaml", environ)


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise TidingsError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror} (try another --port)") from exc
    return sock


def _morning() -> datetime:
    """10:00 UTC today: the flow's quiet hours (21:00 to 08:00 in London) never hold a send back."""
    return datetime.combine(datetime.now(UTC).date(), time_of_day(10, 0), UTC)


async def run_demo(options: DemoOptions, console: Console) -> DemoResult:
    if not MIN_SPEED <= options.speed <= MAX_SPEED:
        raise TidingsError(f"--speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}, not {options.speed:g}")
    admin_token, _ = new_token()
    shopify_token = "shpat_" + secrets.token_hex(16)
    shopify_secret = "shpss_" + secrets.token_hex(16)
    sock = _listen(options.port)
    port = int(sock.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    shopify = ShopifySimulator([shopify_token], shop=SHOP_DOMAIN)
    with tempfile.TemporaryDirectory(prefix="tidings-demo-") as folder:
        shopify.start()
        try:
            settings = demo_settings(
                port=port,
                store=Path(folder) / "demo.db",
                admin_token=admin_token,
                shopify_secret=shopify_secret,
                shopify_token=shopify_token,
                shopify_url=shopify.url,
            )
            clock = ScaledClock(_morning(), speed=options.speed)
            tidings = Tidings(settings, clock=clock)
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(tidings), lifespan="on", log_level="warning", access_log=False, log_config=None
                )
            )
            serving = asyncio.create_task(server.serve(sockets=[sock]), name="tidings-demo-server")
            try:
                await _started(server, serving)
                return await _play(
                    tidings, clock, shopify, shopify_secret, url, admin_token, options, console, serving
                )
            finally:
                server.should_exit = True
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
        finally:
            shopify.stop()
            sock.close()


async def _started(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + 30
    while not server.started:
        if serving.done():
            serving.result()  # its error, if it has one
            raise TidingsError("the demo's server stopped while starting")
        if time.monotonic() > deadline:
            raise TidingsError("the demo's server did not start within 30 s")
        await asyncio.sleep(0.02)


async def _play(
    tidings: Tidings,
    clock: ScaledClock,
    shopify: ShopifySimulator,
    secret: str,
    url: str,
    admin_token: str,
    options: DemoOptions,
    console: Console,
    serving: asyncio.Task[None],
) -> DemoResult:
    started_real = time.monotonic()
    script = story()
    t0 = clock.now()  # the story starts now that tidings is up
    _banner(console, url, admin_token, t0, options.speed)
    feed = Feed(tidings, shopify)

    def show(line: Line) -> None:
        who = escape(line.who)
        text = f"[{line.style}]{line.text}[/]" if line.style else line.text
        console.print(f"[dim]{line.at:%H:%M:%S}[/] [bold]{who:<15}[/] {text}", highlight=False)

    async def watch() -> None:
        while True:
            for line in await feed.poll():
                show(line)
            await asyncio.sleep(POLL)

    watcher = asyncio.create_task(watch(), name="tidings-demo-feed")
    settled = False
    try:
        # A connection per webhook, as Shopify makes them: no keep-alive to race the server closing it.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            shop = Shop(f"{url}/hooks/shop", secret, shopify, http)
            for beat in script.beats:
                await _until(clock, t0 + timedelta(minutes=beat.minute), serving)
                if beat.after_run_of is not None:
                    await _when(tidings, partial(_run_ended, key=beat.after_run_of), clock, serving)
                await _act(shop, beat, clock, show)
        settled = await _when(tidings, _settled, clock, serving, minutes=SETTLE_MINUTES)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    for line in await feed.poll():
        show(line)
    result = DemoResult(
        summary=await tidings.store.read(summarize),
        esp=esp_received(tidings),
        requests=recorded_requests(tidings),
        settled=settled,
        url=url,
        admin_token=admin_token,
        virtual_start=clock.start,
        story_start=t0,
        virtual_end=clock.now(),
        real_seconds=time.monotonic() - started_real,
        speed=options.speed,
    )
    _report(console, result)
    _after(console, result, options.keep_running)
    if options.keep_running:
        await serving
    return result


async def _act(shop: Shop, beat: Beat, clock: ScaledClock, show: Callable[[Line], None]) -> None:
    at = clock.now()
    status = await beat.act(shop, at)
    what = escape(f"{beat.who} {beat.what}")
    if status is None:
        show(Line(at, "shop", what, "blue"))
        return
    style = "blue" if 200 <= status < 300 else "bold red"
    show(Line(at, "shop", f"{what} [dim]-> {shop.sent[-1][0]} {status}[/]", style))


async def _until(clock: ScaledClock, target: datetime, serving: asyncio.Task[None]) -> None:
    left = (target - clock.now()).total_seconds()
    if left > 0:
        await _sleep(clock.real_seconds(left), serving)


async def _sleep(seconds: float, serving: asyncio.Task[None]) -> None:
    """Sleep, unless the server stops first (Ctrl-C): then stop the demo."""
    done, _ = await asyncio.wait({serving}, timeout=seconds)
    if done:
        raise TidingsError("the demo was stopped")


async def _when(
    tidings: Tidings,
    condition: Callable[[Connection], bool],
    clock: ScaledClock,
    serving: asyncio.Task[None],
    *,
    minutes: float = SETTLE_MINUTES,
) -> bool:
    """Wait until `condition` holds in the store; False after `minutes` of virtual time."""
    give_up = clock.now() + timedelta(minutes=minutes)
    while not await tidings.store.read(condition):
        if clock.now() > give_up:
            return False
        await _sleep(POLL, serving)
    return True


def _run_ended(conn: Connection, *, key: str) -> bool:
    status = conn.execute(select(flow_runs.c.status).where(flow_runs.c.run_key == key)).scalar()
    return status is not None and status != ACTIVE


def _settled(conn: Connection) -> bool:
    """Nothing left to do: every webhook processed, every run ended, every send settled."""

    def count(query: Any) -> int:
        return int(conn.execute(query).scalar_one())

    return (
        count(select(func.count()).select_from(inbox).where(inbox.c.status == "pending")) == 0
        and count(select(func.count()).select_from(flow_runs).where(flow_runs.c.status == ACTIVE)) == 0
        and count(select(func.count()).select_from(outbox).where(outbox.c.status.in_([PENDING, IN_FLIGHT])))
        == 0
    )


# --------------------------------------------------------------------------- what is printed


def _banner(console: Console, url: str, token: str, start: datetime, speed: float) -> None:
    minutes = 60 / speed
    console.print(
        Panel.fit(
            f"tidings is running at [bold]{url}[/] on a throwaway SQLite store, in sandbox mode:\n"
            f"  webhooks  POST {url}/hooks/shop  (a simulated Shopify store signs and sends them)\n"
            f"  dashboard [bold]{url}/ui/[/]\n"
            f"  admin API {url}/api/v1/...  with  Authorization: Bearer {token}\n"
            f"Klaviyo is a local simulator that records what it receives; nothing leaves this machine.\n"
            f"The clock starts at {start:%H:%M} UTC and runs {speed:g}x: a minute every "
            f"{minutes:g} s, the flow's 30-minute wait in {30 * minutes:g} s.",
            title="tidings demo: abandoned carts, Shopify to Klaviyo",
        ),
        highlight=False,
    )


def _report(console: Console, result: DemoResult) -> None:
    s = result.summary
    console.print()
    topics = ", ".join(f"{topic} {n}" for topic, n in s.webhooks.items())
    console.print(
        f"[bold]Summary[/] ({result.virtual_start:%H:%M} to {result.virtual_end:%H:%M} virtual, "
        f"{result.real_seconds:.0f} s real)",
        highlight=False,
    )
    console.print(f"  webhooks received: {sum(s.webhooks.values())} ({topics})", highlight=False)
    console.print(
        f"  events: {s.events}; profiles: {s.profiles} ({s.with_email} with an email)", highlight=False
    )
    sent = Table("customer", "sent", "cart", "delivery", title=f"Emails triggered: {len(s.sent)}", box=None)
    for item in s.sent:
        sent.add_row(
            item["customer"],
            f"{item['event']} via {item['destination']}",
            cart_text(item["cart"], item["value"]),
            str(item["delivery"]),
        )
    console.print(sent)
    skipped = Table("customer", "why not", title=f"Not sent: {len(s.not_sent)}", box=None)
    for item in s.not_sent:
        skipped.add_row(item["customer"], escape(str(item["reason"])))
    console.print(skipped)
    received = Table(
        "destination", "customer", "event", "cart", title="What the ESP simulator recorded", box=None
    )
    for item in result.esp:
        received.add_row(
            item["destination"],
            str(item["customer"]),
            str(item["event"]),
            cart_text(item["cart"], item["value"]),
        )
    console.print(received)
    if not result.settled:
        console.print(f"[yellow]Some work had not finished ({s.waiting} runs still waiting).[/]")


def _after(console: Console, result: DemoResult, keep_running: bool) -> None:
    if not keep_running:
        console.print("\ntidings has stopped; `tidings demo --keep-running` leaves it up to look around.")
        return
    token = result.admin_token
    console.print(
        f"\ntidings keeps running (Ctrl-C to stop; its clock still runs {result.speed:g}x):\n"
        f"  dashboard  {result.url}/ui/   token {token}\n"
        f"  sandbox    curl -H 'Authorization: Bearer {token}' {result.url}/api/v1/sandbox/requests",
        highlight=False,
        soft_wrap=True,
    )
