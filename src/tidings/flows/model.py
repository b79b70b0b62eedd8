"""A flow as written under `flows:` in tidings.yaml: trigger, run key, exits, guards, steps.

Conditions are JMESPath (like mappings), evaluated against the run's context:

    {"event": <the triggering event>, "profile": {...}, "run": {...}, "matched": <event>|null,
     "cart": {...}|null, "now": <ISO time>}

Values a send carries are templates (Jinja2 in its sandbox): `{{ cart.items }}` alone keeps its
type, text around it makes a string.

Steps form a list, run top to bottom; `next`, `then`/`else` and `on_event`/`on_timeout` jump to a
step by its `id`, or to `exit`. Checks that need more than one model (a step that names an
unknown destination, an unreachable step, a loop without a wait) are in `tidings.flows.check`.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import time, timedelta
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from tidings.configmodel import ConfigModel, Duration
from tidings.mapping.rules import Expression
from tidings.templating import DataTemplate, TemplateProblem

EXIT = "exit"  # a jump target: end the run here
NEXT = "next"  # a jump target: the step below

_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
StepId = str


def _time_of_day(value: object) -> object:
    if isinstance(value, str):
        match = _CLOCK.match(value.strip())
        if not match:
            raise ValueError(f"not a time of day: {value!r} (use HH:MM, 24-hour)")
        return time(int(match.group(1)), int(match.group(2)))
    return value


class EventMatch(ConfigModel):
    """An event by name (one or several), and optionally a condition on it and the run."""

    event: str | list[str]
    when: Expression | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.event,) if isinstance(self.event, str) else tuple(self.event)


class Trigger(EventMatch):
    # An event older than this when it reaches tidings starts nothing: a replay of history or a
    # webhook retried for days must not email a customer about last week's cart.
    max_age: Duration = timedelta(days=1)


class FrequencyCap(ConfigModel):
    max: int = Field(gt=0)
    per: Duration


class QuietHours(ConfigModel):
    """Sends due in this local time span (in the customer's time zone) wait until it ends."""

    start: time
    end: time

    _parse = field_validator("start", "end", mode="before")(_time_of_day)


class Guards(ConfigModel):
    """Checked right before every send of the flow."""

    consent: Literal["subscribed", "not_unsubscribed", "none"] = "subscribed"
    frequency_cap: FrequencyCap | None = None  # sends of this flow per customer
    quiet_hours: QuietHours | None = None  # None: the top-level `guards.quiet_hours`


class Freshness(ConfigModel):
    """Ask the source's API about the cart right before a send (see tidings.lookups)."""

    lookup: str  # a source with a `lookup:` block
    cart_id: Expression = "run.key"
    # When the source cannot answer: try again later this many times, then send on what the
    # profile says (recorded as such).
    attempts: int = Field(default=3, ge=1)
    retry_after: Duration = timedelta(minutes=1)


# --------------------------------------------------------------------------- steps


class WaitFor(EventMatch):
    timeout: Duration


class Wait(ConfigModel):
    """A duration, or until a local time of day in the customer's time zone (or both: at least
    `for`, then the next `until`)."""

    for_: Duration | None = Field(default=None, alias="for")
    until: time | None = None

    _parse = field_validator("until", mode="before")(_time_of_day)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"for": value} if isinstance(value, str | int | float) else value

    @model_validator(mode="after")
    def _something(self) -> Wait:
        if self.for_ is None and self.until is None:
            raise ValueError("a wait needs `for` (a duration) or `until` (a time of day), or both")
        return self


class Branch(ConfigModel):
    when: Expression
    then: StepId = NEXT
    else_: StepId = Field(default=NEXT, alias="else")


class Send(ConfigModel):
    """A destination action; every other key is payload, rendered as templates at send time."""

    model_config = {**ConfigModel.model_config, "extra": "allow"}
    destination: str
    action: str
    channel: str = "email"  # whose consent the guard checks

    _payload: DataTemplate = PrivateAttr()

    @property
    def payload(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def render(self, values: dict[str, Any]) -> dict[str, Any]:
        """The payload for one firing; TemplateProblem if a template needs a value it lacks."""
        payload: dict[str, Any] = self._payload.render(values)
        return payload

    @model_validator(mode="after")
    def _templates_parse(self) -> Send:
        self._payload = _compile(self.payload)
        return self


class UpdateProfile(ConfigModel):
    traits: dict[str, Any]
    _traits: DataTemplate = PrivateAttr()

    def render(self, values: dict[str, Any]) -> dict[str, Any]:
        traits: dict[str, Any] = self._traits.render(values)
        return traits

    @model_validator(mode="after")
    def _templates_parse(self) -> UpdateProfile:
        self._traits = _compile(self.traits)
        return self


def _compile(data: dict[str, Any]) -> DataTemplate:
    try:
        return DataTemplate(data)
    except TemplateProblem as exc:
        raise ValueError(str(exc)) from exc


KINDS = ("wait", "wait_for", "branch", "send", "update_profile", "exit")


class Step(ConfigModel):
    """One step: exactly one of the kinds, an optional `id`, and where to go after it."""

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    wait: Wait | None = None
    wait_for: WaitFor | None = None
    branch: Branch | None = None
    send: Send | None = None
    update_profile: UpdateProfile | None = None
    exit: str | None = None  # the reason recorded
    next: StepId = NEXT
    on_event: StepId = NEXT  # wait_for: the event came
    on_timeout: StepId = EXIT  # wait_for: it did not

    @model_validator(mode="before")
    @classmethod
    def _bare_exit(cls, value: Any) -> Any:
        if value == "exit":
            return {"exit": "exit step"}
        if isinstance(value, dict) and "exit" in value and value["exit"] in (None, True):
            return {**value, "exit": "exit step"}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) or "none"
            raise ValueError(f"a step needs exactly one of {', '.join(KINDS)} (found: {found})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)


class Flow(ConfigModel):
    trigger: Trigger
    # Which runs are the same run: one active run per key. The default, one per customer.
    run_key: Expression = "to_string(profile.id)"
    reentry: Literal["after_exit", "never"] = "after_exit"
    exit_on: list[EventMatch] = []
    guards: Guards = Guards()
    freshness: Freshness | None = None
    in_flight: Literal["keep", "migrate"] = "keep"
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _ids(self) -> Flow:
        seen: set[str] = set()
        for step in self.steps:
            if step.id in (EXIT, NEXT):
                raise ValueError(f"{step.id!r} is a reserved step target, not a step id")
            if step.id is not None:
                if step.id in seen:
                    raise ValueError(f"two steps have the id {step.id!r}")
                seen.add(step.id)
        return self

    def step_ids(self) -> list[str]:
        """Every step's id: its own, or its position (`1`, `2`, ...) when it has none."""
        return [step.id or str(index + 1) for index, step in enumerate(self.steps)]

    def step(self, step_id: str | None) -> Step | None:
        """The step with this id (see `step_ids`), or None."""
        ids = self.step_ids()
        return self.steps[ids.index(step_id)] if step_id in ids else None

    def version(self) -> str:
        """A changed definition is a new version."""
        text = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class GlobalGuards(ConfigModel):
    """Applied to the sends of every flow."""

    frequency_cap: FrequencyCap | None = None  # sends across all flows, per customer
    quiet_hours: QuietHours | None = None
    default_timezone: str = "UTC"  # for customers without a valid `timezone` trait

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from tidings.flows.clock import zone

        zone(value)  # raises for an unknown zone
        return value
