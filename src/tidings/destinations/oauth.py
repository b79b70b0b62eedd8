"""OAuth 2.0 access tokens from a refresh token (RFC 6749 section 6), for vendors that offer OAuth.

The token request is built with Authlib's primitives (the `refresh_token` grant's form body, the
client's authentication: `client_secret_basic` by default) and sent through the destination's own
HTTP client, so timeouts and transport failures are classified like every other call. Authlib's
httpx client is not used: it would be a second connection pool, and Authlib 1.9 deprecates it on
plain httpx in favour of the `httpx2` package.

Renewal happens before a call when the access token expires within `early` (60 s), and once when
the vendor answers 401 to a token believed valid. Concurrent calls share one renewal. A refused
refresh (invalid_grant: the app was uninstalled or the refresh token revoked; invalid_client: the
client secret is wrong) is a DestinationAuthError, which pauses the destination; a token endpoint
that is down (429, 5xx, timeout) is retryable.

When the vendor answers with a new refresh token, it replaces the one in use in memory and is
handed to `on_refresh_token` (if the application wires one, to persist it). Without that, a
restart starts again from the configured refresh token, which must therefore stay valid.
Tokens and secrets are never logged nor put in error texts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from authlib.oauth2.auth import ClientAuth  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.parameters import prepare_token_request  # type: ignore[import-untyped]
from pydantic import Field, SecretStr

from tidings.configmodel import ConfigModel
from tidings.destinations.base import Destination, retry_after
from tidings.exceptions import DeliveryError, DestinationAuthError, RetryableDeliveryError

log = logging.getLogger(__name__)

EARLY = timedelta(seconds=60)


class OAuthSettings(ConfigModel):
    """An installed OAuth app's credentials: tidings only ever uses the refresh_token grant."""

    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    refresh_token: SecretStr
    token_url: str | None = None  # the vendor's token endpoint by default
    client_auth: str = Field(default="client_secret_basic", pattern="^client_secret_(basic|post)$")


class OAuthSession:
    """The access token of one destination, renewed from its refresh token when needed."""

    def __init__(
        self,
        destination: Destination[Any],
        settings: OAuthSettings,
        token_url: str,
        *,
        early: timedelta = EARLY,
        on_refresh_token: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.destination = destination
        self.token_url = token_url
        self.early = early
        self.on_refresh_token = on_refresh_token
        self.refreshes = 0  # successful renewals, for tests and metrics
        self._client = ClientAuth(
            settings.client_id, settings.client_secret.get_secret_value(), settings.client_auth
        )
        self._refresh_token = settings.refresh_token.get_secret_value()
        self._access: str | None = None
        self._expires: datetime | None = None  # None: the vendor gave no lifetime (renewed on 401)
        self._generation = 0  # counts renewal attempts, so waiters can tell one happened meanwhile
        self._failure: DeliveryError | None = None  # how the latest attempt failed, if it did
        self._lock = asyncio.Lock()

    @property
    def expires_at(self) -> datetime | None:
        return self._expires

    async def send(self, call: Callable[[str], Awaitable[httpx.Response]]) -> httpx.Response:
        """`call(access_token)`; on a 401, renew the token once and call again."""
        token, seen = await self._valid()
        response = await call(token)
        if response.status_code != 401:
            return response
        self._log("refused the access token; renewing it", reason="refused")
        token, _ = await self._renew(seen)
        return await call(token)

    async def _valid(self) -> tuple[str, int]:
        seen = self._generation
        if self._access is None or (
            self._expires is not None and self.destination.clock.now() >= self._expires - self.early
        ):
            return await self._renew(seen)
        return self._access, seen

    async def _renew(self, seen: int) -> tuple[str, int]:
        async with self._lock:
            if self._generation != seen:  # another call renewed (or tried) while this one waited
                if self._failure is not None:
                    raise self._failure
                if self._access is not None:
                    return self._access, self._generation
            try:
                await self._refresh()
            except DeliveryError as exc:
                self._failure = exc
                raise
            else:
                self._failure = None
            finally:
                self._generation += 1  # at the end: calls that started meanwhile see it changed
            assert self._access is not None
            return self._access, self._generation

    async def _refresh(self) -> None:
        kind = self.destination.kind
        body = prepare_token_request("refresh_token", refresh_token=self._refresh_token)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        url, headers, body = self._client.prepare("POST", self.token_url, headers, body)
        response = await self.destination.request("POST", url, content=body, headers=headers)
        status = response.status_code
        answer = _json(response)
        if status >= 300:
            text = _oauth_error(answer) or response.reason_phrase
            detail = f"{kind}: the OAuth token endpoint answered {status}: {text}"
            if status == 429 or status == 408 or status >= 500:
                raise RetryableDeliveryError(detail, status=status, retry_after=retry_after(response.headers))
            raise DestinationAuthError(f"{detail} (re-authorise the app: new refresh_token)", status=status)
        access = answer.get("access_token")
        kind_of_token = str(answer.get("token_type") or "bearer").lower()
        if not isinstance(access, str) or not access or kind_of_token != "bearer":
            raise DestinationAuthError(
                f"{kind}: the OAuth token endpoint answered {status} without a bearer access_token",
                status=status,
            )
        now = self.destination.clock.now()
        lifetime = answer.get("expires_in")
        try:
            seconds = float(lifetime) if lifetime is not None else None
        except (TypeError, ValueError):
            seconds = None
        self._access = access
        self._expires = now + timedelta(seconds=seconds) if seconds is not None else None
        self.refreshes += 1
        fresh = answer.get("refresh_token")
        rotated = isinstance(fresh, str) and bool(fresh) and fresh != self._refresh_token
        if rotated:
            self._refresh_token = str(fresh)
        self._log(
            "renewed the access token" + (" and received a new refresh token" if rotated else ""),
            reason="renewed",
            expires_in=seconds,
        )
        if rotated and self.on_refresh_token is not None:
            await self.on_refresh_token(self._refresh_token)

    def _log(self, message: str, **extra: Any) -> None:
        log.info(
            "%s %s",
            self.destination.kind,
            message,
            extra={"action": "oauth", "destination": self.destination.name, **extra},
        )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _oauth_error(answer: dict[str, Any]) -> str | None:
    """RFC 6749's `{error, error_description}` as one line (the description cut short)."""
    error = answer.get("error")
    if not isinstance(error, str) or not error:
        return None
    description = answer.get("error_description")
    if isinstance(description, str) and description:
        return f"{error}: {description[:200]}"
    return error
