"""The handler table and the key ring every destination shares (destinations/base.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, Literal

import httpx
import pytest
from pydantic import SecretStr

from tidings.delivery.effects import ACTIONS, DELETE_CONTACT, TRACK_EVENT, UPSERT_CONTACT, Effect, Receipt
from tidings.destinations.base import Destination, DestinationSettings, KeyRing, handles
from tidings.destinations.registry import DESTINATIONS
from tidings.exceptions import PermanentDeliveryError


class ToySettings(DestinationSettings):
    kind: Literal["toy"]


class Toy(Destination[ToySettings]):
    kind: ClassVar[str] = "toy"
    settings_model = ToySettings
    idempotent_actions = frozenset({UPSERT_CONTACT})

    @handles(UPSERT_CONTACT)
    async def upsert(self, effect: Effect) -> Receipt:
        return Receipt(detail={"did": "upsert", "email": effect.payload["email"]})

    @handles(TRACK_EVENT, DELETE_CONTACT)
    async def other(self, effect: Effect) -> Receipt:
        return Receipt(detail={"did": effect.action})


def effect(action: str, **payload: Any) -> Effect:
    return Effect(id=1, destination="toy", action=action, idempotency_key="k", payload=payload, attempt=1)


async def test_actions_come_from_the_marked_handlers_and_deliver_dispatches_on_them() -> None:
    assert Toy.actions == {UPSERT_CONTACT, TRACK_EVENT, DELETE_CONTACT}
    assert dict(Toy.handlers) == {UPSERT_CONTACT: "upsert", TRACK_EVENT: "other", DELETE_CONTACT: "other"}
    async with httpx.AsyncClient() as http:
        toy = Toy("toy", ToySettings(kind="toy"), http)
        assert (await toy.deliver(effect(UPSERT_CONTACT, email="a@example.com"))).detail == {
            "did": "upsert",
            "email": "a@example.com",
        }
        assert (await toy.deliver(effect(DELETE_CONTACT))).detail == {"did": DELETE_CONTACT}
        with pytest.raises(
            PermanentDeliveryError, match=r"toy does not support 'send_template' \(it supports"
        ):
            await toy.deliver(effect("send_template"))


def test_a_subclass_replaces_a_handler_and_keeps_the_others() -> None:
    class Louder(Toy):
        @handles(TRACK_EVENT)
        async def shout(self, effect: Effect) -> Receipt:
            return Receipt()

    assert Louder.handlers[TRACK_EVENT] == "shout" and Louder.handlers[DELETE_CONTACT] == "other"
    assert Toy.handlers[TRACK_EVENT] == "other"


def test_mistakes_in_the_table_are_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="handles"):
        handles("send_sms")
    with pytest.raises(TypeError, match="one and two handle track_event"):

        class Twice(Destination[ToySettings]):
            @handles(TRACK_EVENT)
            async def one(self, effect: Effect) -> Receipt:
                return Receipt()

            @handles(TRACK_EVENT)
            async def two(self, effect: Effect) -> Receipt:
                return Receipt()

    with pytest.raises(TypeError, match="idempotent_actions"):

        class Promises(Destination[ToySettings]):
            idempotent_actions = frozenset({DELETE_CONTACT})

            @handles(TRACK_EVENT)
            async def one(self, effect: Effect) -> Receipt:
                return Receipt()


def test_every_destination_declares_its_actions_through_the_table() -> None:
    expected = {
        "webhook": set(ACTIONS),
        "klaviyo": {UPSERT_CONTACT, TRACK_EVENT, DELETE_CONTACT},
        "mailchimp": {UPSERT_CONTACT, TRACK_EVENT, "trigger_journey", DELETE_CONTACT},
        "mailchimp-transactional": {"send_template"},
        "sendgrid": {UPSERT_CONTACT, "send_template", DELETE_CONTACT},
        "activecampaign": {UPSERT_CONTACT, TRACK_EVENT, DELETE_CONTACT},
        "smtp": {"send_template"},
    }
    assert {kind: set(cls.actions) for kind, cls in DESTINATIONS.items()} == expected
    for cls in DESTINATIONS.values():
        assert set(cls.handlers) == set(cls.actions)
        assert cls.idempotent_actions <= cls.actions
        assert "deliver" not in vars(cls), f"{cls.__name__} dispatches by hand"


# ---------------------------------------------------------------------------- KeyRing


class Vendor:
    """Answers 200 to the keys it accepts and 401 to the others; records what it was sent."""

    def __init__(self, *valid: str) -> None:
        self.valid = set(valid)
        self.seen: list[str] = []

    async def call(self, key: str) -> httpx.Response:
        self.seen.append(key)
        await asyncio.sleep(0)
        if key not in self.valid:
            return httpx.Response(401)
        return httpx.Response(self.status)

    status = 200


def ring(next_key: str | None = "new-secret") -> KeyRing:
    return KeyRing(
        "esp",
        "toy",
        [("api_key", SecretStr("old-secret")), ("next_api_key", SecretStr(next_key) if next_key else None)],
    )


def refused(response: httpx.Response) -> bool:
    return response.status_code in (401, 403)


async def statuses(keys: KeyRing, vendor: Vendor, times: int = 1) -> list[int]:
    return [(await keys.send(vendor.call, refused)).status_code for _ in range(times)]


async def test_the_key_in_use_is_kept_while_it_works() -> None:
    keys, vendor = ring(), Vendor("old-secret", "new-secret")
    assert await statuses(keys, vendor, 3) == [200, 200, 200]
    assert vendor.seen == ["old-secret"] * 3 and keys.in_use == "api_key"


async def test_a_refused_key_hands_over_to_the_other_at_once_and_for_good(caplog) -> None:
    caplog.set_level(logging.INFO, logger="tidings.destinations.base")
    keys, vendor = ring(), Vendor("new-secret")
    assert await statuses(keys, vendor, 2) == [200, 200]
    assert vendor.seen == ["old-secret", "new-secret", "new-secret"]
    assert keys.in_use == "next_api_key" and keys.key == "new-secret"
    assert "toy refused api_key; trying next_api_key" in caplog.text
    assert "toy accepted next_api_key" in caplog.text
    assert "secret" not in caplog.text  # names only, never values
    assert all(getattr(r, "destination", None) == "esp" for r in caplog.records)


async def test_when_every_key_is_refused_the_refusal_is_returned_after_one_try_each() -> None:
    keys, vendor = ring(), Vendor()
    assert await statuses(keys, vendor) == [401]
    assert vendor.seen == ["old-secret", "new-secret"]
    single = ring(next_key=None)
    assert await statuses(single, vendor) == [401]
    assert vendor.seen[2:] == ["old-secret"]


async def test_the_ring_can_rotate_back_to_api_key_once_it_is_replaced() -> None:
    keys, vendor = ring(), Vendor("new-secret")
    await keys.send(vendor.call, refused)
    vendor.valid = {"old-secret"}  # e.g. the vendor restored it: the other key is tried
    assert await statuses(keys, vendor) == [200] and keys.in_use == "api_key"


async def test_a_key_is_not_adopted_on_an_answer_that_does_not_prove_it() -> None:
    keys, vendor = ring(), Vendor("new-secret")
    vendor.status = 503  # the vendor is down: whether the new key is good is not known yet
    assert await statuses(keys, vendor) == [503] and keys.in_use == "api_key"
    vendor.status = 400  # a refused body: the key passed authentication
    assert await statuses(keys, vendor) == [400] and keys.in_use == "next_api_key"


async def test_concurrent_refusals_settle_on_the_working_key_without_flapping() -> None:
    keys, vendor = ring(), Vendor("new-secret")
    answers = await asyncio.gather(*(keys.send(vendor.call, refused) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert keys.in_use == "next_api_key"
    assert vendor.seen.count("old-secret") <= 20 and vendor.seen.count("new-secret") == 20
    vendor.seen.clear()
    await keys.send(vendor.call, refused)
    assert vendor.seen == ["new-secret"]


def test_a_ring_needs_a_key() -> None:
    with pytest.raises(ValueError, match="no API key"):
        KeyRing("esp", "toy", [("api_key", None)])
