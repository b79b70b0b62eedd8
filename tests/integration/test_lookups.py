"""Live cart lookups (tidings.lookups) against the Shopify and Stripe simulators."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tidings.clock import FakeClock
from tidings.ingest.hubspot import HubSpotSettings
from tidings.ingest.shopify import ShopifySettings
from tidings.ingest.stripe import StripeSettings
from tidings.lookups import CartLookup, CartState, LookupUnavailable, cart_lookup
from tidings.lookups.base import ITEM_KEYS
from tidings.lookups.shopify import ShopifyCartLookup
from tidings.lookups.stripe import StripeCartLookup
from tidings.testing.shopify import ShopifySimulator
from tidings.testing.stripe import StripeSimulator

SHOP_TOKEN = "shpat_0123456789abcdef"
STRIPE_KEY = "sk_test_lookup_0123456789"

SHIRT = {
    "title": "Linen shirt",
    "price": "49.50",
    "quantity": 2,
    "sku": "SH-1",
    "variant_title": "M / Blue",
    "product_id": 7001,
    "variant_id": 8001,
    "url": "https://shop.example/products/linen-shirt",
    "image_url": "https://cdn.example/shirt.jpg",
}
CAP = {"title": "Cap", "price": "15.00", "quantity": 1, "product_id": 7002, "variant_id": 8002}


# --------------------------------------------------------------------------- Shopify


def shopify_settings(url: str, **lookup: Any) -> ShopifySettings:
    block = {"shop": "example.myshopify.com", "access_token": SHOP_TOKEN, "base_url": url, **lookup}
    return ShopifySettings.model_validate({"kind": "shopify", "secrets": ["shpss_client"], "lookup": block})


@pytest.fixture
def shop():
    with ShopifySimulator([SHOP_TOKEN]).running() as server:
        yield server


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


def shopify_lookup(sim: ShopifySimulator, http: httpx.AsyncClient, **lookup: Any) -> CartLookup:
    found = cart_lookup("shop", shopify_settings(sim.url, **lookup), http)
    assert isinstance(found, ShopifyCartLookup)
    return found


async def test_shopify_open_checkout_by_id_has_its_current_items_total_and_link(shop, http):
    checkout = shop.add_checkout([SHIRT, CAP], currency="EUR")
    state = await shopify_lookup(shop, http).cart(str(checkout.id))

    assert state is not None
    assert state.completed is False and state.exists is True
    assert state.value == 114.0 and state.currency == "EUR"
    assert state.checkout_url is not None and checkout.token in state.checkout_url
    assert state.updated_at is not None and state.updated_at.tzinfo is not None
    assert state.items == [
        {
            "product_id": "7001",
            "variant_id": "8001",
            "sku": "SH-1",
            "name": "Linen shirt",
            "variant": "M / Blue",
            "price": 49.5,
            "quantity": 2,
            "url": "https://shop.example/products/linen-shirt",
            "image_url": "https://cdn.example/shirt.jpg",
        },
        {
            "product_id": "7002",
            "variant_id": "8002",
            "sku": None,
            "name": "Cap",
            "variant": None,
            "price": 15.0,
            "quantity": 1,
            "url": None,
            "image_url": None,
        },
    ]
    # One GraphQL call, authenticated the Admin API way.
    (request,) = shop.requests
    assert request.path == "/admin/api/2025-07/graphql.json"
    assert request.headers["x-shopify-access-token"] == SHOP_TOKEN


async def test_shopify_checkout_gid_is_accepted_too(shop, http):
    checkout = shop.add_checkout([CAP])
    state = await shopify_lookup(shop, http).cart(f"gid://shopify/AbandonedCheckout/{checkout.id}")
    assert state is not None and state.completed is False and state.value == 15.0


async def test_shopify_completed_checkout_by_id(shop, http):
    checkout = shop.add_checkout([SHIRT])
    lookup = shopify_lookup(shop, http)
    shop.complete_checkout(checkout.id)

    state = await lookup.cart(str(checkout.id))
    assert state is not None and state.completed is True


async def test_shopify_unknown_checkout_id_is_none(shop, http):
    shop.add_checkout([SHIRT])
    assert await shopify_lookup(shop, http).cart("999999") is None


async def test_shopify_deleted_checkout_is_none(shop, http):
    checkout = shop.add_checkout([SHIRT])
    shop.delete_checkout(checkout.id)
    assert await shopify_lookup(shop, http).cart(str(checkout.id)) is None


async def test_shopify_changed_items_are_the_current_ones(shop, http):
    checkout = shop.add_checkout([SHIRT, CAP])
    lookup = shopify_lookup(shop, http)
    before = await lookup.cart(str(checkout.id))
    shop.set_items(checkout.id, [dict(CAP, quantity=3)])

    after = await lookup.cart(str(checkout.id))
    assert before is not None and after is not None
    assert [i["name"] for i in before.items or []] == ["Linen shirt", "Cap"]
    assert [(i["name"], i["quantity"]) for i in after.items or []] == [("Cap", 3)]
    assert after.value == 45.0
    assert after.updated_at is not None and before.updated_at is not None
    assert after.updated_at >= before.updated_at


async def test_shopify_emptied_checkout_no_longer_exists(shop, http):
    checkout = shop.add_checkout([SHIRT])
    shop.set_items(checkout.id, [])
    state = await shopify_lookup(shop, http).cart(str(checkout.id))
    assert state is not None and state.exists is False and state.items == []


async def test_shopify_token_not_bought_yet(shop, http):
    """The preset's checkout_id is the token. Another customer's order must not count."""
    shop.add_order([CAP], checkout_token="someone-elses-checkout", cart_token="someone-elses-cart")
    checkout = shop.add_checkout([SHIRT])

    state = await shopify_lookup(shop, http).cart(checkout.token)
    assert state == CartState(completed=False)
    query = json.loads(shop.requests[-1].body)["variables"]["query"]
    assert query == f'checkout_token:"{checkout.token}" OR cart_token:"{checkout.token}"'


async def test_shopify_token_bought_meanwhile(shop, http):
    checkout = shop.add_checkout([SHIRT], currency="EUR")
    lookup = shopify_lookup(shop, http)
    assert (await lookup.cart(checkout.token)) == CartState(completed=False)
    shop.complete_checkout(checkout.token)

    state = await lookup.cart(checkout.token)
    assert state is not None and state.completed is True
    assert state.value == 99.0 and state.currency == "EUR" and state.updated_at is not None


async def test_shopify_cart_token_finds_the_order_too(shop, http):
    checkout = shop.add_checkout([SHIRT], cart_token="c1-cart-token")
    shop.complete_checkout(checkout.id)
    state = await shopify_lookup(shop, http).cart("c1-cart-token")
    assert state is not None and state.completed is True


async def test_shopify_token_with_search_syntax_in_it_matches_nothing_else(shop, http):
    shop.add_order([CAP], checkout_token="abc")
    state = await shopify_lookup(shop, http).cart('abc" OR name:"#1001')
    assert state == CartState(completed=False)


async def test_shopify_bad_token_is_unavailable_and_the_token_is_not_in_the_message(shop, http):
    checkout = shop.add_checkout([SHIRT])
    settings = shopify_settings(shop.url, access_token="shpat_wrong_token_value")
    lookup = cart_lookup("shop", settings, http)
    assert lookup is not None
    with pytest.raises(LookupUnavailable) as caught:
        await lookup.cart(str(checkout.id))
    assert caught.value.reason == "auth" and caught.value.status == 401
    assert "Invalid API key or access token" in str(caught.value)
    assert "shpat_wrong_token_value" not in str(caught.value)
    assert "shpat_wrong_token_value" not in repr(settings)


async def test_shopify_throttled_by_the_cost_bucket(shop, http):
    checkout = shop.add_checkout([SHIRT])
    shop.drain(1000)  # other apps' queries emptied the bucket
    with pytest.raises(LookupUnavailable) as caught:
        await shopify_lookup(shop, http).cart(str(checkout.id))
    assert caught.value.reason == "throttled" and caught.value.status == 200
    # The query asks for ~255 points at 100 points/s restore rate: about 3 s.
    assert caught.value.retry_after is not None and 2 <= caught.value.retry_after <= 4
    assert shop.throttled == 1


async def test_shopify_throttled_as_http_429_with_retry_after(http):
    with ShopifySimulator([SHOP_TOKEN], throttle_status=429).running() as sim:
        checkout = sim.add_checkout([SHIRT])
        sim.throttle_next()
        lookup = shopify_lookup(sim, http)
        with pytest.raises(LookupUnavailable) as caught:
            await lookup.cart(str(checkout.id))
        assert caught.value.reason == "throttled" and caught.value.status == 429
        assert caught.value.retry_after is not None and caught.value.retry_after >= 1
        # the bucket was full: the next call goes through
        state = await lookup.cart(str(checkout.id))
        assert state is not None and state.completed is False


async def test_shopify_missing_scope_is_unavailable(http):
    with ShopifySimulator([SHOP_TOKEN], scopes=["read_orders"]).running() as sim:
        checkout = sim.add_checkout([SHIRT])
        with pytest.raises(LookupUnavailable) as caught:
            await shopify_lookup(sim, http).cart(str(checkout.id))
        assert caught.value.reason == "auth" and "read_products" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_shopify_server_error_is_unavailable(shop, http, status):
    checkout = shop.add_checkout([SHIRT])
    shop.fail_next(status=status, headers={"Retry-After": "7"})
    with pytest.raises(LookupUnavailable) as caught:
        await shopify_lookup(shop, http).cart(str(checkout.id))
    assert caught.value.reason == "server" and caught.value.status == status
    assert caught.value.retry_after == 7.0


async def test_shopify_timeout_is_unavailable(shop, http):
    checkout = shop.add_checkout([SHIRT])
    shop.fail_next(status=200, delay=1.0)
    with pytest.raises(LookupUnavailable) as caught:
        await shopify_lookup(shop, http, timeout="200ms").cart(str(checkout.id))
    assert caught.value.reason == "timeout"


async def test_shopify_unserved_api_version_is_unavailable(shop, http):
    checkout = shop.add_checkout([SHIRT])
    with pytest.raises(LookupUnavailable) as caught:
        await shopify_lookup(shop, http, api_version="2024-01").cart(str(checkout.id))
    assert caught.value.status == 404


async def test_shopify_refuses_references_that_are_no_checkout(shop, http):
    lookup = shopify_lookup(shop, http)
    with pytest.raises(ValueError, match="empty"):
        await lookup.cart("  ")
    with pytest.raises(ValueError, match="AbandonedCheckout"):
        await lookup.cart("gid://shopify/Order/1")


async def test_shopify_simulator_answers_only_selected_fields_and_refuses_unknown_ones(shop, http):
    """The simulator is strict where Shopify is: a lookup asking for a wrong field would fail."""
    checkout = shop.add_checkout([SHIRT])
    query = "query($id: ID!) { node(id: $id) { ... on AbandonedCheckout { completedAt token } } }"
    gid = f"gid://shopify/AbandonedCheckout/{checkout.id}"
    answer = (
        await http.post(
            f"{shop.url}/admin/api/2025-07/graphql.json",
            json={"query": query, "variables": {"id": gid}},
            headers={"X-Shopify-Access-Token": SHOP_TOKEN},
        )
    ).json()
    assert answer["errors"][0]["extensions"]["code"] == "undefinedField"
    assert answer["errors"][0]["extensions"]["fieldName"] == "token"

    # A misspelt search filter is ignored, as Shopify ignores it: every order matches.
    shop.add_order([CAP], checkout_token="x")
    query = 'query { orders(first: 5, query: "checkout_tokn:nope") { nodes { id } } }'
    answer = (
        await http.post(
            f"{shop.url}/admin/api/2025-07/graphql.json",
            json={"query": query},
            headers={"X-Shopify-Access-Token": SHOP_TOKEN},
        )
    ).json()
    assert len(answer["data"]["orders"]["nodes"]) == 1
    assert answer["extensions"]["search"][0]["warnings"][0]["field"] == "checkout_tokn"
    assert answer["extensions"]["cost"]["throttleStatus"]["maximumAvailable"] == 1000.0


# --------------------------------------------------------------------------- Stripe


def stripe_settings(url: str, **lookup: Any) -> StripeSettings:
    block = {"api_key": STRIPE_KEY, "base_url": url, **lookup}
    return StripeSettings.model_validate({"kind": "stripe", "secrets": ["whsec_test"], "lookup": block})


@pytest.fixture
def stripe():
    with StripeSimulator([STRIPE_KEY]).running() as server:
        yield server


def stripe_lookup(
    sim: StripeSimulator, http: httpx.AsyncClient, clock: FakeClock | None = None, **lookup: Any
) -> CartLookup:
    found = cart_lookup("payments", stripe_settings(sim.url, **lookup), http, clock=clock)
    assert isinstance(found, StripeCartLookup)
    return found


MUG = {
    "name": "Mug",
    "unit_amount": 1250,
    "quantity": 2,
    "product": "prod_mug",
    "images": ["https://cdn.example/mug.png"],
    "url": "https://shop.example/mug",
}
TEA = {"name": "Tea", "unit_amount": 800, "quantity": 1, "product": "prod_tea"}


async def test_stripe_open_session_has_items_total_and_link(stripe, http):
    session = stripe.create_session([MUG, TEA], currency="eur", customer_email="ann@example.com")
    state = await stripe_lookup(stripe, http).cart(session["id"])

    assert state is not None
    assert state.completed is False and state.exists is True
    assert state.value == 33.0 and state.currency == "EUR"
    assert state.checkout_url == session["url"]
    first, second = state.items or []
    assert set(first) == set(ITEM_KEYS)
    assert first["product_id"] == "prod_mug" and first["name"] == "Mug"
    assert first["price"] == 12.5 and first["quantity"] == 2
    assert first["image_url"] == "https://cdn.example/mug.png" and first["url"] == "https://shop.example/mug"
    assert second["product_id"] == "prod_tea" and second["image_url"] is None
    # The key goes as a Bearer token; the products come expanded in the same call.
    retrieve, items = stripe.requests
    assert retrieve.headers["authorization"] == f"Bearer {STRIPE_KEY}"
    assert items.path.endswith("/line_items")


async def test_stripe_completed_session(stripe, http):
    session = stripe.create_session([MUG])
    lookup = stripe_lookup(stripe, http)
    stripe.complete(session["id"])
    state = await lookup.cart(session["id"])
    assert state == CartState(completed=True, value=25.0, currency="EUR")
    assert len(stripe.requests) == 1  # a bought cart needs no line items


async def test_stripe_delayed_payment_counts_as_bought(stripe, http):
    session = stripe.create_session([MUG])
    stripe.complete(session["id"], payment_status="unpaid")
    state = await stripe_lookup(stripe, http).cart(session["id"])
    assert state is not None and state.completed is True


async def test_stripe_unknown_session_is_none(stripe, http):
    assert await stripe_lookup(stripe, http).cart("cs_test_does_not_exist") is None


async def test_stripe_changed_items_are_the_current_ones(stripe, http):
    session = stripe.create_session([MUG, TEA])
    lookup = stripe_lookup(stripe, http)
    stripe.set_items(session["id"], [dict(TEA, quantity=4)])
    state = await lookup.cart(session["id"])
    assert state is not None
    assert [(i["name"], i["quantity"]) for i in state.items or []] == [("Tea", 4)]
    assert state.value == 32.0


async def test_stripe_zero_decimal_currency(stripe, http):
    session = stripe.create_session([{"name": "Bento", "unit_amount": 1500, "quantity": 1}], currency="jpy")
    state = await stripe_lookup(stripe, http).cart(session["id"])
    assert state is not None and state.value == 1500.0 and state.currency == "JPY"
    assert (state.items or [])[0]["price"] == 1500.0


async def test_stripe_expired_without_recovery_is_gone(stripe, http):
    session = stripe.create_session([MUG], customer_email="ann@example.com")
    stripe.expire(session["id"])
    state = await stripe_lookup(stripe, http).cart(session["id"])
    assert state is not None and state.completed is False and state.exists is False
    assert state.checkout_url is None and state.updated_at is not None


async def test_stripe_expired_with_recovery_links_to_the_recovery_url(stripe, http):
    session = stripe.create_session([MUG], customer_email="ann@example.com", recovery=True)
    stripe.expire(session["id"])
    recovery_url = session["after_expiration"]["recovery"]["url"]

    state = await stripe_lookup(stripe, http).cart(session["id"])
    assert state is not None and state.completed is False and state.exists is True
    assert state.checkout_url == recovery_url
    assert [i["name"] for i in state.items or []] == ["Mug"]


async def test_stripe_expired_then_recovered_and_paid_is_bought(stripe, http):
    other = stripe.create_session([TEA], customer_email="bob@example.com")
    stripe.complete(other["id"])  # someone else's purchase must not count
    session = stripe.create_session([MUG], customer_email="ann@example.com", recovery=True)
    stripe.expire(session["id"])
    lookup = stripe_lookup(stripe, http)
    assert (await lookup.cart(session["id"])).completed is False  # type: ignore[union-attr]

    recovered = stripe.recover(session["id"])
    assert (await lookup.cart(session["id"])).completed is False  # type: ignore[union-attr]
    stripe.complete(recovered["id"])
    state = await lookup.cart(session["id"])
    assert state == CartState(completed=True, value=25.0, currency="EUR")


async def test_stripe_expired_recovery_url_past_its_end_is_gone(stripe, http):
    session = stripe.create_session([MUG], customer_email="ann@example.com", recovery=True)
    stripe.expire(session["id"])
    ends = datetime.fromtimestamp(session["after_expiration"]["recovery"]["expires_at"], UTC)
    clock = FakeClock(ends + timedelta(seconds=1))
    state = await stripe_lookup(stripe, http, clock).cart(session["id"])
    assert state is not None and state.exists is False and state.checkout_url is None


async def test_stripe_bad_key_is_unavailable(stripe, http):
    session = stripe.create_session([MUG])
    lookup = cart_lookup("payments", stripe_settings(stripe.url, api_key="sk_test_not_this_one"), http)
    assert lookup is not None
    with pytest.raises(LookupUnavailable) as caught:
        await lookup.cart(session["id"])
    assert caught.value.reason == "auth" and caught.value.status == 401
    assert "sk_test_not_this_one" not in str(caught.value)


async def test_stripe_rate_limited_with_and_without_retry_after(stripe, http):
    session = stripe.create_session([MUG])
    lookup = stripe_lookup(stripe, http)
    stripe.throttle_next(retry_after=3)
    with pytest.raises(LookupUnavailable) as caught:
        await lookup.cart(session["id"])
    assert caught.value.reason == "throttled" and caught.value.status == 429
    assert caught.value.retry_after == 3.0

    stripe.throttle_next()
    with pytest.raises(LookupUnavailable) as caught:
        await lookup.cart(session["id"])
    assert caught.value.reason == "throttled" and caught.value.retry_after is None


async def test_stripe_rate_limit_on_the_second_call_is_unavailable_too(http):
    with StripeSimulator([STRIPE_KEY], rate=1).running() as sim:
        session = sim.create_session([MUG])
        with pytest.raises(LookupUnavailable) as caught:
            await stripe_lookup(sim, http).cart(session["id"])  # retrieve passes, line_items is refused
        assert caught.value.status == 429 and sim.rate_limited == 1


@pytest.mark.parametrize("status", [500, 503])
async def test_stripe_server_error_is_unavailable(stripe, http, status):
    session = stripe.create_session([MUG])
    stripe.fail_next(status=status, body={"error": {"type": "api_error", "message": "boom"}})
    with pytest.raises(LookupUnavailable) as caught:
        await stripe_lookup(stripe, http).cart(session["id"])
    assert caught.value.reason == "server" and caught.value.status == status and "boom" in str(caught.value)


async def test_stripe_404_that_is_not_stripes_is_unavailable_not_none(stripe, http):
    """A base_url pointing at the wrong place must not read as "no such session"."""
    lookup = stripe_lookup(stripe, http, base_url=f"{stripe.url}/wrong")
    with pytest.raises(LookupUnavailable):
        await lookup.cart("cs_test_abc")


async def test_stripe_timeout_is_unavailable(stripe, http):
    session = stripe.create_session([MUG])
    stripe.fail_next(status=200, delay=1.0)
    with pytest.raises(LookupUnavailable) as caught:
        await stripe_lookup(stripe, http, timeout="200ms").cart(session["id"])
    assert caught.value.reason == "timeout"


async def test_stripe_connection_refused_is_unavailable(http):
    lookup = stripe_lookup(StripeSimulator(), http, base_url="http://127.0.0.1:9")
    with pytest.raises(LookupUnavailable) as caught:
        await lookup.cart("cs_test_abc")
    assert caught.value.reason == "network"


async def test_stripe_sends_the_configured_version(stripe, http):
    session = stripe.create_session([MUG])
    stripe.complete(session["id"])
    await stripe_lookup(stripe, http, stripe_version="2025-07-30.basil").cart(session["id"])
    assert stripe.requests[0].headers["stripe-version"] == "2025-07-30.basil"


async def test_stripe_refuses_ids_that_are_no_session(stripe, http):
    with pytest.raises(ValueError, match="cs_live_ or cs_test_"):
        await stripe_lookup(stripe, http).cart("pi_123")


# --------------------------------------------------------------------------- registry and config


async def test_no_lookup_without_a_lookup_block_or_for_other_kinds(http):
    plain_shop = ShopifySettings.model_validate({"kind": "shopify", "secrets": ["shpss_x"]})
    plain_stripe = StripeSettings.model_validate({"kind": "stripe", "secrets": ["whsec_x"]})
    hubspot = HubSpotSettings.model_validate({"kind": "hubspot", "secrets": ["x"]})
    assert cart_lookup("a", plain_shop, http) is None
    assert cart_lookup("b", plain_stripe, http) is None
    assert cart_lookup("c", hubspot, http) is None


@pytest.mark.parametrize(
    ("lookup", "message"),
    [
        ({"shop": "https://example.myshopify.com"}, "without https://"),
        ({"shop": "shop.example.com"}, "myshopify.com domain"),
        ({"shop": "example"}, "did you mean example.myshopify.com"),
        ({"access_token": "shpss_abc"}, "client secret"),
        ({"access_token": ""}, "empty"),
        ({"api_version": "2025-06"}, "not a Shopify API version"),
        ({"base_url": "localhost:8080"}, "http:// or https://"),
        ({"timeout": "0s"}, "positive"),
    ],
)
def test_shopify_lookup_config_errors_name_the_problem(lookup, message):
    block = {"shop": "example.myshopify.com", "access_token": SHOP_TOKEN, **lookup}
    with pytest.raises(ValidationError, match=message):
        ShopifySettings.model_validate({"kind": "shopify", "secrets": ["shpss_x"], "lookup": block})


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("whsec_abc", "webhook signing secret"),
        ("pk_test_abc", "publishable key"),
        ("abc", "starts with sk_"),
        ("", "empty"),
    ],
)
def test_stripe_lookup_config_errors_name_the_problem(key, message):
    with pytest.raises(ValidationError, match=message):
        StripeSettings.model_validate({"kind": "stripe", "secrets": ["whsec_x"], "lookup": {"api_key": key}})


def test_shopify_lookup_settings_normalise_the_shop_and_hide_the_token():
    settings = ShopifySettings.model_validate(
        {
            "kind": "shopify",
            "secrets": ["shpss_x"],
            "lookup": {"shop": " Example.MyShopify.com ", "access_token": SHOP_TOKEN},
        }
    )
    assert settings.lookup is not None
    assert settings.lookup.shop == "example.myshopify.com"
    assert SHOP_TOKEN not in repr(settings) and SHOP_TOKEN not in str(settings.model_dump())
