"""Segment-compatible tracking API: `POST /v1/{track,identify,page,screen,group,alias,batch}`.

Any Segment library or hand-rolled HTTP call pointed at tidings works unchanged. A call is
authenticated by its write key: `Authorization: Basic base64("<writeKey>:")` (the no-colon
form too), or `writeKey` in the JSON body when no Basic header is sent (an OAuth `Bearer`
header cannot be checked here, so such callers are judged by the `writeKey` their body must
carry anyway). Keys are compared as SHA-256 digests, so neither timing nor length says how close
a guess was, against every key of every segment source without stopping at a match.

Each call becomes one item, a batch one item per call, always with a payload: the call as sent
with `type` set (from the path for single calls), `writeKey` removed (it is a secret), and for
batches the batch-level `context`, `integrations` and `sentAt` merged in (the call's own values
win). So later stages see one shape whatever endpoint a library used. The dedupe key is
`messageId` (libraries add one to every call); without it, a hash of the call without the
transport-only `sentAt` and `writeKey` (analytics-python re-stamps `sentAt` on every retry).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr, field_validator

from tidings.configmodel import SecretList
from tidings.exceptions import (
    AuthenticationFailed,
    MalformedPayload,
    PayloadTooLarge,
    UnknownSource,
    UnsupportedMediaType,
)
from tidings.ingest import signing
from tidings.ingest.base import (
    InboundRequest,
    Item,
    Outcome,
    Receiver,
    Reception,
    Reply,
    SourceSettings,
    compact,
    content_key,
    parse_json,
)

CALLS = ("track", "identify", "page", "screen", "group", "alias", "batch")
EVENT_TYPES = frozenset(CALLS) - {"batch"}
CALL_LIMIT = 32 * 1024  # per call, and per call inside a batch
BATCH_LIMIT = 500 * 1024  # per batch request
BATCH_MAX_CALLS = 2500
MESSAGE_ID_MAX = 99  # Segment: "fewer than 100 characters"
TOPIC_MAX = 200  # the inbox's topic column
_MERGED = ("context", "integrations")
_NOT_HASHED = frozenset({"writeKey", "sentAt"})


class SegmentSettings(SourceSettings):
    kind: Literal["segment"]
    write_keys: SecretList

    @field_validator("write_keys")
    @classmethod
    def _usable(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if not keys:
            raise ValueError("at least one write key is required")
        for key in keys:
            value = key.get_secret_value()
            if not value or value != value.strip():
                raise ValueError("a write key must be non-empty, without surrounding spaces")
            if ":" in value:
                raise ValueError("a write key cannot contain ':' (it is sent as a Basic auth user name)")
        return keys


def body_limit(call: str) -> int:
    """Segment's request limits: 500 KB for a batch, 32 KB for any other call."""
    return BATCH_LIMIT if call == "batch" else CALL_LIMIT


def select_source(receivers: Sequence[SegmentReceiver], request: InboundRequest) -> SegmentReceiver:
    """The segment source whose write key the request presents (401 if none).

    Every key of every source is compared before deciding, so the time taken does not say
    which source, if any, came close. Keys should be distinct across sources; if one is not,
    the first source in the file wins.
    """
    presented = _digest(_presented_key(request, _decoded_body(request, _call_of(request))))
    matches = [r for r in receivers if r.knows(presented)]  # a list, not any(): no short-circuit
    if not matches:
        raise AuthenticationFailed(
            "the write key matches no configured segment source", code="invalid_write_key"
        )
    return matches[0]


class SegmentReceiver(Receiver[SegmentSettings]):
    """Limits: the request limits are enforced while reading (see `body_limit`). A call inside a
    batch over 32 KB, or a batch of more than 2,500 calls, is refused whole with 413 and nothing
    is stored, the same answer as for an oversized request: Segment says 400 (or 200 and drops
    the calls, for the count), but one status for "too large" whichever limit tripped is easier to
    act on, and Segment's own clients treat 400 and 413 alike (not retried, reported to the
    app). Libraries keep below these limits themselves, so only hand-rolled senders meet them.

    Invalid calls (no userId/anonymousId, track without event, batch call without a known type,
    a messageId of 100+ characters) come with a valid write key, so they are authentic: they
    are stored flagged and answered 200, as Segment answers 200. Dropping them, as Segment does,
    loses data silently; answering 400 would make the client drop the whole batch. One invalid
    call holds its whole request flagged (a flag is per request), each call still its own item
    under its own key, so a retry of the batch is recognised as a duplicate.
    """

    kind = "segment"
    settings_model = SegmentSettings
    kept_headers = ("content-type", "content-encoding", "user-agent", "x-retry-count")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._digests = [_digest(k.get_secret_value()) for k in self.settings.write_keys]

    def knows(self, digest: bytes) -> bool:
        return signing.any_match(self._digests, [digest])

    def receive(self, request: InboundRequest) -> Reception:
        call = _call_of(request)
        body = _decoded_body(request, call)
        if not self.knows(_digest(_presented_key(request, body))):
            raise AuthenticationFailed("the write key is not one of this source's", code="invalid_write_key")
        try:
            data = parse_json(body)
        except MalformedPayload as exc:
            return self.flag(request, str(exc), topic=call)
        if not isinstance(data, dict):
            return self.flag(request, f"a {call} call must be a JSON object", topic=call)
        if call != "batch":
            problem = _problem(data, call)
            item = _item({**data, "type": call})
            return self._reception(request, data, [item], [f"{call} call {problem}"] if problem else [])
        calls = data.get("batch")
        if not isinstance(calls, list):
            return self.flag(request, "a batch call needs a `batch` array", topic=call)
        _check_batch_limits(calls)
        shared = {k: data[k] for k in (*_MERGED, "sentAt") if k in data}
        items, problems = [], []
        for index, event in enumerate(calls):
            items.append(_item(_merged(event, shared) if isinstance(event, dict) else event))
            if problem := _problem(event, None):
                problems.append(f"#{index} {problem}")
        return self._reception(request, data, items, problems)

    def reply(self, reception: Reception, outcome: Outcome) -> Reply:
        """Segment clients read only the status; `success` is what Segment's own API answers."""
        body = {
            "success": True,
            "status": "flagged" if outcome.flagged else "accepted",
            "accepted": outcome.accepted,
            "duplicates": outcome.duplicates,
        }
        return Reply(status=200, body=json.dumps(body).encode())

    def _reception(
        self, request: InboundRequest, data: dict[str, Any], items: list[Item], problems: list[str]
    ) -> Reception:
        flagged = None
        if problems:
            shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
            flagged = f"{len(problems)} of {len(items)} call(s) invalid, request held: {shown}"
        # The raw body is kept for audit, but not the write key in it: that is a credential.
        stored = compact({k: v for k, v in data.items() if k != "writeKey"}) if "writeKey" in data else None
        return Reception(items=items, headers=self.keep_headers(request), flagged=flagged, stored_body=stored)


# ---------------------------------------------------------------------------------- helpers


def _call_of(request: InboundRequest) -> str:
    """The call named by the path; a segment source reached any other way (e.g. /hooks/) is 404."""
    head, _, call = urlsplit(request.url).path.rstrip("/").rpartition("/")
    if head.endswith("/v1") and call in CALLS:
        return call
    raise UnknownSource(
        f"a segment source takes tracking calls at /v1/<call>, one of {', '.join(CALLS)}",
        code="unknown_call",
    )


def _decoded_body(request: InboundRequest, call: str) -> bytes:
    """The body, gunzipped if analytics-python's `gzip=True` sent it so; never past the limit."""
    encoding = (request.header("content-encoding") or "identity").strip().lower()
    if encoding == "identity":
        return request.body
    if encoding != "gzip":
        raise UnsupportedMediaType(f"content encoding {encoding} is not accepted here; use gzip or none")
    limit = body_limit(call)
    inflater = zlib.decompressobj(wbits=31)
    try:
        body = inflater.decompress(request.body, limit + 1)
    except zlib.error as exc:
        raise MalformedPayload(f"gzip body is corrupt: {exc}", code="malformed_gzip") from exc
    if len(body) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    return body


def _presented_key(request: InboundRequest, body: bytes) -> str:
    """The write key from Basic auth or, failing that, the body (which is then parsed unverified)."""
    header = request.header("authorization") or ""
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, ValueError) as exc:
            raise AuthenticationFailed(
                "Authorization is not base64 Basic credentials", code="invalid_write_key"
            ) from exc
        if not user:
            raise AuthenticationFailed("Basic credentials hold no write key", code="invalid_write_key")
        return user
    data = parse_json(body)  # unauthenticated and malformed: 400, nothing stored
    key = data.get("writeKey") if isinstance(data, dict) else None
    if not isinstance(key, str) or not key:
        raise AuthenticationFailed(
            'no write key: send Authorization: Basic base64("<writeKey>:") or "writeKey" in the body',
            code="missing_write_key",
        )
    return key


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _check_batch_limits(calls: list[Any]) -> None:
    if len(calls) > BATCH_MAX_CALLS:
        raise PayloadTooLarge(f"batch holds {len(calls)} calls; the limit is {BATCH_MAX_CALLS}")
    for index, event in enumerate(calls):
        if (size := len(compact(event))) > CALL_LIMIT:
            raise PayloadTooLarge(f"batch call #{index} is {size} bytes; the limit is {CALL_LIMIT} per call")


def _merged(event: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    merged = dict(event)
    for key, value in shared.items():
        mine = merged.get(key)
        if isinstance(mine, dict) and isinstance(value, dict):
            merged[key] = {**value, **mine}
        elif key not in merged:
            merged[key] = value
    return merged


def _item(event: Any) -> Item:
    """One call as an item: keyed on messageId, else on a hash of what identifies the call."""
    if not isinstance(event, dict):
        return Item(keys=(content_key(compact(event)),), payload=compact(event))
    event = {k: v for k, v in event.items() if k != "writeKey"}
    message_id = event.get("messageId")
    if isinstance(message_id, str) and 0 < len(message_id) <= MESSAGE_ID_MAX:
        key = message_id
    else:
        hashed = {k: v for k, v in event.items() if k not in _NOT_HASHED}
        key = content_key(json.dumps(hashed, sort_keys=True, separators=(",", ":")).encode())
    return Item(keys=(key,), topic=_topic(event), payload=compact(event))


def _topic(event: dict[str, Any]) -> str | None:
    """`track:<event>` for track calls, so flows can route on the event name; else the call type."""
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        return None
    name = event.get("event")
    if kind == "track" and isinstance(name, str):
        return f"track:{name}"[:TOPIC_MAX]
    return str(kind)


def _has_id(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


def _problem(event: Any, call: str | None) -> str | None:
    """Why Segment would reject this call, or None. `call` is None inside a batch."""
    if not isinstance(event, dict):
        return "is not a JSON object"
    kind = call or event.get("type")
    if kind not in EVENT_TYPES:
        return f"has no valid type (one of {', '.join(sorted(EVENT_TYPES))})"
    if not (_has_id(event.get("userId")) or _has_id(event.get("anonymousId"))):
        return "has neither userId nor anonymousId"
    if kind == "track" and not (isinstance(event.get("event"), str) and event["event"]):
        return "is a track call without event"
    message_id = event.get("messageId")
    if message_id is not None and not (isinstance(message_id, str) and 0 < len(message_id) <= MESSAGE_ID_MAX):
        return f"has a messageId that is not a string of 1 to {MESSAGE_ID_MAX} characters"
    return None
