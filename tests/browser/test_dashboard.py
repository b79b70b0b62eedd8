"""The dashboard in Chromium against a real `tidings serve` with data: what an operator sees and does.

Each page is checked for its content and elements, and screenshotted: the picture must be the
page's size and not blank (many colours, most pixels not the background's). A dead letter is
retried by clicking, and its status is seen to change; a read-only token cannot do that.
"""

from __future__ import annotations

import base64
import html
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import READ, WRITE, Site

SHOTS = Path(os.environ.get("TIDINGS_SCREENSHOTS", "")) if os.environ.get("TIDINGS_SCREENSHOTS") else None
MEASURE = """async (data) => {
  const img = new Image();
  img.src = "data:image/png;base64," + data;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.width;
  canvas.height = img.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, img.width, img.height).data;
  const colours = new Set();
  const first = (px[0] << 16) | (px[1] << 8) | px[2];
  let differ = 0;
  for (let i = 0; i < px.length; i += 4) {
    const v = (px[i] << 16) | (px[i + 1] << 8) | px[i + 2];
    if (colours.size < 10000) colours.add(v);
    if (v !== first) differ++;
  }
  return {width: img.width, height: img.height, colours: colours.size, differ: differ / (px.length / 4)};
}"""


def screenshot(page: Page, name: str, tmp_path: Path) -> dict[str, Any]:
    """A full-page PNG of `page`, measured in a blank page of the same browser (canvas pixels)."""
    png = page.screenshot(full_page=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    (SHOTS or tmp_path).mkdir(parents=True, exist_ok=True)
    (SHOTS or tmp_path).joinpath(f"{name}.png").write_bytes(png)
    probe = page.context.new_page()
    try:
        probe.set_content("<!doctype html><title>probe</title>")
        measured: dict[str, Any] = probe.evaluate(MEASURE, base64.b64encode(png).decode())
    finally:
        probe.close()
    assert (measured["width"], measured["height"]) == (width, height)
    assert width == 1280 and height >= 900, (width, height)
    assert measured["colours"] > 50, f"{name}: only {measured['colours']} colours: a blank page?"
    assert measured["differ"] > 0.05, f"{name}: {measured['differ']:.1%} of the pixels differ: a blank page?"
    return measured


def text_of(page: Page, selector: str) -> str:
    return html.unescape(page.inner_text(selector))


# --------------------------------------------------------------------------- signing in


def test_without_a_cookie_the_login_page_comes_and_a_wrong_token_is_refused(browser, site: Site) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(site.url + "/ui/deliveries?status=dead")
        assert re.search(r"/ui/login\?next=/ui/deliveries", page.url), page.url
        expect(page.locator("h1")).to_have_text("Sign in")
        page.fill("#token", "wrong-token-0123456789")
        page.click("button[type=submit]")
        expect(page.locator(".error")).to_contain_text("not one of server.admin_tokens")
        assert "/ui/login" in page.url
        assert not context.cookies()
        page.fill("#token", READ)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/ui/deliveries\?status=dead$"))
        expect(page.locator("h1")).to_have_text("Deliveries")
        [cookie] = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
        assert page.evaluate("document.cookie") == ""  # not readable by scripts
        assert READ not in page.content()
    finally:
        context.close()


# --------------------------------------------------------------------------- pages


def test_overview_shows_rates_freshness_waits_and_dead_letters(signed_in, site: Site, tmp_path) -> None:
    page = signed_in(READ)
    sources = page.locator("#sources tbody tr")
    expect(sources).to_have_count(1)
    assert text_of(page, "#sources tbody tr td:nth-child(1)") == "web"
    assert int(text_of(page, "#sources tbody tr td:nth-child(2)")) == 6  # 2 identify + 4 track
    rows = {
        r.locator("td").first.inner_text().split()[0]: [c.inner_text() for c in r.locator("td").all()]
        for r in page.locator("#destinations tbody tr").all()
    }
    assert set(rows) == {"crm", "esp"}
    assert int(rows["esp"][1]) >= 3  # two profile syncs and the reminder delivered
    assert int(rows["crm"][3]) >= len(site.dead)  # failed attempts
    assert int(rows["crm"][5]) >= 1  # dead letters now
    chart = page.locator("#freshness svg.chart")
    expect(chart).to_be_visible()
    assert chart.locator('path[data-destination="esp"][data-quantile="p50"]').count() == 1
    assert chart.locator('path[data-destination="esp"][data-quantile="p99"]').count() == 1
    assert chart.locator("circle").count() >= 1
    assert "esp" in text_of(page, "#freshness .legend")
    waits = text_of(page, "#waits")
    assert "browse_followup" in waits and "linger" in waits
    dead = page.locator("#dead tbody tr")
    assert dead.count() >= 1
    assert "422" in text_of(page, "#dead")
    assert READ not in page.content()
    screenshot(page, "overview", tmp_path)


def test_a_customer_page_shows_profile_consent_and_the_flow_reasons(signed_in, site: Site, tmp_path) -> None:
    page = signed_in(READ)
    page.click("text=Customers")
    page.fill("#q", "bob@example.com")
    page.click("form.search button")
    expect(page.locator("#profile h2")).to_contain_text("Profile")
    assert "bob@example.com" in text_of(page, "#profile .identities")
    assert "unsubscribed" in text_of(page, "#consent")
    assert "Bob" in text_of(page, "#traits")
    timeline = text_of(page, "#timeline")
    assert "Checkout Started" in timeline and "Product Viewed" in timeline
    flow_rows = page.locator("#timeline tr.tl-flow")
    assert flow_rows.count() >= 3
    skipped = page.locator("#timeline tr.tl-flow", has_text="skipped")
    expect(skipped).to_have_count(1)
    expect(skipped.locator(".reason")).to_have_text("consent: email is unsubscribed")
    deliveries = text_of(page, "#deliveries")
    assert "crm" in deliveries and "dead" in deliveries
    screenshot(page, "customer-bob", tmp_path)

    # the same customer by kind:value, then Ann by id from the link in a run: she was reminded
    page.fill("#q", "user_id:u1")
    page.click("form.search button")
    assert "ann@example.com" in text_of(page, "#profile")
    sent = page.locator("#timeline tr.tl-flow", has_text="sent")
    expect(sent).to_have_count(1)
    assert "remind" in sent.inner_text() and "esp" in sent.inner_text()
    esp_rows = page.locator("#deliveries tbody tr", has_text="track_event")
    expect(esp_rows).to_have_count(1)
    assert "delivered" in esp_rows.inner_text()

    page.fill("#q", "nobody@example.com")
    page.click("form.search button")
    expect(page.locator(".error")).to_contain_text("No profile matches nobody@example.com")


def test_flows_page_shows_steps_sends_skips_and_recent_runs(signed_in, site: Site, tmp_path) -> None:
    page = signed_in(READ)
    page.click("text=Flows")
    cart = page.locator("#flow-abandoned_cart")
    assert text_of(page, "#flow-abandoned_cart .sends").split() == [
        "sent",
        "1",
        "skipped",
        "1",
        "delayed",
        "0",
    ]
    expect(cart.locator(".skip-reasons")).to_contain_text("consent: email is unsubscribed")
    browse = page.locator("#flow-browse_followup")
    assert browse.locator(".by-step").inner_text().split() == ["linger", "2"]
    runs = cart.locator("details.run")
    expect(runs).to_have_count(2)
    runs.first.locator("summary").click()
    steps = runs.first.locator("table.steps")
    expect(steps).to_be_visible()
    assert "trigger" in steps.inner_text() and "end" in steps.inner_text()
    screenshot(page, "flows", tmp_path)
    # a run of its own, from its number
    runs.first.locator("summary a").first.click()
    expect(page.locator("h1")).to_contain_text("abandoned_cart")
    assert page.locator("table.steps tbody tr").count() >= 3


def test_deliveries_filter_and_one_delivery_with_its_attempts(signed_in, site: Site, tmp_path) -> None:
    page = signed_in(READ)
    page.click("text=Deliveries")
    page.select_option("#destination", "crm")  # the page's script submits the form
    page.wait_for_url(re.compile(r".*destination=crm.*"))
    page.select_option("#status", "dead")
    page.wait_for_url(re.compile(r".*destination=crm&status=dead$"))
    rows = page.locator("#delivery-list tbody tr")
    assert rows.count() >= 2
    for row in rows.all():
        assert row.get_attribute("data-status") == "dead"
        assert "crm" in row.inner_text()
    screenshot(page, "deliveries", tmp_path)
    page.click(f"#delivery-list a[href='/ui/deliveries/{site.dead[-1]}']")
    expect(page.locator("h1")).to_contain_text(f"Delivery {site.dead[-1]}")
    payload = text_of(page, "pre.payload")
    assert '"profile_id"' in payload
    attempt = page.locator("#attempts tbody tr").first
    cells = [c.inner_text() for c in attempt.locator("td").all()]
    assert "action=upsert_contact" in cells[1] and "attempt=1" in cells[1]  # what the dispatcher records
    assert cells[2] == "422"
    assert re.fullmatch(r"\d+ ms", cells[3])
    assert cells[4] == "dead"
    assert "field email_2 is unknown" in cells[5]
    screenshot(page, "delivery", tmp_path)


# --------------------------------------------------------------------------- acting


def test_a_read_only_token_cannot_retry(signed_in, site: Site) -> None:
    page = signed_in(READ)
    page.goto(f"{site.url}/ui/deliveries/{site.dead[-1]}")
    button = page.locator("#retry")
    expect(button).to_be_disabled()
    assert "read-only" in text_of(page, "form.retry")
    # the form sent anyway (as a crafted request would be) is refused
    page.evaluate("document.querySelector('form.retry').submit()")
    expect(page.locator(".error")).to_contain_text("lacks the 'write' scope")
    assert status(site, site.dead[-1]) == "dead"


def test_a_dead_letter_is_retried_from_the_ui_and_delivered(signed_in, site: Site) -> None:
    target = site.dead[0]
    site.crm.faults.clear()  # the receiver is fixed; now the operator retries
    page = signed_in(WRITE)
    page.goto(f"{site.url}/ui/deliveries?status=dead")
    page.click(f"#delivery-list a[href='/ui/deliveries/{target}']")
    expect(page.locator("#delivery-status")).to_have_text("dead")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#retry")
    page.wait_for_url(re.compile(rf".*/ui/deliveries/{target}\?retried=1$"))
    expect(page.locator(".notice")).to_contain_text("Queued again")
    until = time.monotonic() + 15
    while page.inner_text("#delivery-status") != "delivered" and time.monotonic() < until:
        page.wait_for_timeout(200)  # polling interval while the dispatcher sends it
        page.reload()
    expect(page.locator("#delivery-status")).to_have_text("delivered")
    assert [c.inner_text() for c in page.locator("#attempts tbody tr").last.locator("td").all()][2] == "200"
    assert page.locator("#retry").count() == 0
    assert status(site, target) == "delivered"
    assert status(site, site.dead[-1]) == "dead"  # only the one asked for


def status(site: Site, delivery_id: int) -> str:
    rows = httpx.get(
        f"{site.url}/api/v1/deliveries?destination=crm&limit=500",
        headers={"authorization": f"Bearer {READ}"},
        timeout=10,
    ).json()
    [row] = [r for r in rows if r["id"] == delivery_id]
    return str(row["status"])
