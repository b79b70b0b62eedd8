"""Signature checks shared by receivers: HMAC on raw bytes, compared in constant time.

Every candidate signature is compared with every configured secret's digest, without stopping at
the first match, so timing tells an attacker nothing about which secret or signature was close.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime, timedelta

from tidings.exceptions import AuthenticationFailed


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def any_match(expected: Iterable[bytes], received: Iterable[bytes]) -> bool:
    """True if any received signature equals any expected digest (constant time per pair)."""
    found = False
    received = list(received)
    for digest in expected:
        for candidate in received:
            found |= hmac.compare_digest(digest, candidate)
    return found


def require(header: str | None, name: str) -> str:
    """The header's value, or 401 naming the missing header."""
    if not header:
        raise AuthenticationFailed(f"missing {name} header", code="missing_signature")
    return header


def check_timestamp(sent_at: datetime, now: datetime, tolerance: timedelta, *, future: bool = True) -> None:
    """Refuse a signed timestamp outside the window (a replay, or a badly skewed clock)."""
    age = now - sent_at
    if age > tolerance:
        raise AuthenticationFailed(
            f"timestamp is {int(age.total_seconds())} s old; the limit is {int(tolerance.total_seconds())} s",
            code="timestamp_out_of_tolerance",
        )
    if future and -age > tolerance:
        raise AuthenticationFailed(
            f"timestamp is {int(-age.total_seconds())} s in the future; the limit is "
            f"{int(tolerance.total_seconds())} s",
            code="timestamp_out_of_tolerance",
        )
