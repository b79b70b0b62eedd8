"""Mailchimp audience (list) webhooks: form-encoded POSTs, authenticated by a key in the URL.

Mailchimp signs nothing; its own advice is a secret in the webhook URL, checked on each call. So
the URL registered at Mailchimp is `https://<host>/hooks/<source>?key=<secret>` and `keys` lists
the accepted secrets (several while one is rotated in). Keys are compared as SHA-256 digests, so
neither timing nor length says how close a guess was. Mailchimp checks a URL with a GET when the
webhook is created; `validation` answers it (200 with the right key, 401 without), so a wrong key
shows up when the webhook is saved, not as lost events later.

The body (`type=...&fired_at=...&data[email]=...&data[merges][FNAME]=...`) is stored as the
request's bytes and each request becomes one item whose payload is the same fields as nested JSON,
so the mapping rules read `payload.data.email`. Mailchimp gives no event id: the dedupe key is a
hash of the body (a retry repeats the bytes, `fired_at` included).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr, field_validator

from tidings.configmodel import SecretList
from tidings.exceptions import AuthenticationFailed
from tidings.ingest import signing
from tidings.ingest.base import (
    InboundRequest,
    Item,
    Receiver,
    Reception,
    Reply,
    SourceSettings,
    compact,
    content_key,
)

FORM = "application/x-www-form-urlencoded"
_FIELD = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


class MailchimpWebhooksSettings(SourceSettings):
    """`keys`: the secret(s) put in the webhook URL as `?<key_param>=...`."""

    kind: Literal["mailchimp-webhooks"]
    keys: SecretList
    key_param: str = "key"

    @field_validator("keys")
    @classmethod
    def _usable(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if not keys:
            raise ValueError("at least one key is required (it goes in the webhook URL as ?key=...)")
        for key in keys:
            value = key.get_secret_value()
            if len(value) < 16:
                raise ValueError("a key must be at least 16 characters (it is the only authentication)")
            if value != value.strip() or any(c in value for c in "&#=?+% "):
                raise ValueError("a key must be URL-safe: no spaces and none of & # = ? + %")
        return keys

    @field_validator("key_param")
    @classmethod
    def _param(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError("key_param must be a plain query parameter name, e.g. key")
        return name


def form_to_json(pairs: list[tuple[str, str]]) -> dict[str, Any] | None:
    """PHP-style bracketed fields (`data[merges][FNAME]`) as nested objects; None if they clash."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        match = _FIELD.match(name)
        if match is None:
            return None
        path = [match.group(1), *_PART.findall(match.group(2))]
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                return None
            node = child
        if isinstance(node.get(path[-1]), dict):
            return None
        node[path[-1]] = value
    return out


class MailchimpWebhooksReceiver(Receiver[MailchimpWebhooksSettings]):
    kind = "mailchimp-webhooks"
    settings_model = MailchimpWebhooksSettings
    media_types = frozenset({FORM})
    kept_headers = ("content-type", "user-agent")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._digests = [_digest(s.get_secret_value()) for s in self.settings.keys]

    def authenticate(self, request: InboundRequest) -> None:
        """401 unless the URL's key parameter is one of the configured keys."""
        param = self.settings.key_param
        presented = [
            v for k, v in parse_qsl(urlsplit(request.url).query, keep_blank_values=True) if k == param
        ]
        if not presented or not presented[0]:
            raise AuthenticationFailed(
                f"missing ?{param}= in the URL (add it to the webhook URL at Mailchimp)", code="missing_key"
            )
        if not signing.any_match(self._digests, [_digest(presented[0])]):
            raise AuthenticationFailed(f"the URL's {param} matches no configured key", code="invalid_key")

    def validation(self, request: InboundRequest) -> Reply:
        """Mailchimp's GET when a webhook is saved: 200 if the URL's key is right (401 raised if not)."""
        self.authenticate(request)
        return Reply(status=200, body=json.dumps({"status": "ok"}).encode())

    def receive(self, request: InboundRequest) -> Reception:
        self.authenticate(request)
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            return self.flag(request, "body is not UTF-8")
        fields = form_to_json(parse_qsl(text, keep_blank_values=True))
        if fields is None:
            return self.flag(request, "form fields clash (a field is both a value and a group)")
        topic = fields.get("type")
        if not isinstance(topic, str) or not topic:
            return self.flag(request, "the form has no type field")
        if not isinstance(fields.get("data"), dict):
            return self.flag(request, "the form has no data[...] fields", topic=topic)
        return Reception(
            items=[Item(keys=(content_key(request.body),), topic=topic, payload=compact(fields))],
            headers=self.keep_headers(request),
            stored_url=self.redacted(request.url),
        )

    def redacted(self, url: str) -> str:
        """The URL as stored: the key in its query string is a credential, so it is masked."""
        parts = urlsplit(url)
        query = [(k, "***" if k == self.settings.key_param else v) for k, v in parse_qsl(parts.query, True)]
        return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
