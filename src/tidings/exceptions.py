"""The errors tidings raises, one tree with one base.

    TidingsError                      base; the class docstring is the default message
    ├── ConfigurationError            tidings.yaml is wrong; carries every problem found
    ├── StoreError                    the database failed (the driver error is __cause__)
    ├── DeliveryError                 a destination did not take an effect; the dispatcher decides what next
    │   ├── RetryableDeliveryError    5xx, 429, timeouts, connection errors; .retry_after in seconds
    │   └── PermanentDeliveryError    400/404/422: to the dead letters with the vendor's own words
    │       └── DestinationAuthError  401/403: the destination is paused, loudly
    └── IngestError                   a request was refused; carries an HTTP status and an error code
        ├── UnknownSource             404
        ├── MethodNotAllowed          405
        ├── PayloadTooLarge           413
        ├── UnsupportedMediaType      415
        ├── AuthenticationFailed      401 (missing/wrong signature, stale timestamp, bad write key)
        ├── MalformedPayload          400
        └── Overloaded                503 with Retry-After

Ingest errors are turned into HTTP answers in exactly one place, ``tidings.api.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass


class TidingsError(Exception):
    """tidings failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in a config file, located as precisely as the file allows."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigurationError(TidingsError):
    """The configuration is invalid."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the configuration:\n{lines}")


class StoreError(TidingsError):
    """The store could not complete the operation."""


class DeliveryError(TidingsError):
    """The destination did not take the effect."""

    def __init__(self, detail: str | None = None, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


class RetryableDeliveryError(DeliveryError):
    """The destination failed for now; the effect is tried again later."""

    def __init__(
        self, detail: str | None = None, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, status=status)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """The destination refused the effect for good; it goes to the dead letters."""


class DestinationAuthError(PermanentDeliveryError):
    """The destination rejected tidings' credentials; it is paused until they work again."""


class IngestError(TidingsError):
    """The request was refused."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code

    @property
    def detail(self) -> str:
        return str(self)


class UnknownSource(IngestError):
    """No source with this name is configured."""

    status = 404
    code = "unknown_source"


class MethodNotAllowed(IngestError):
    """This source takes POST only."""

    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(IngestError):
    """The request body is larger than this source accepts."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(IngestError):
    """The request's content type is not one this source accepts."""

    status = 415
    code = "unsupported_media_type"


class AuthenticationFailed(IngestError):
    """The request could not be authenticated."""

    status = 401
    code = "invalid_signature"


class MalformedPayload(IngestError):
    """The request body could not be parsed."""

    status = 400
    code = "malformed_payload"


class Overloaded(IngestError):
    """tidings is at capacity; retry shortly."""

    status = 503
    code = "overloaded"
    retry_after = 1
