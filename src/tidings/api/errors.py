"""Every error answer tidings gives over HTTP is `{"error": code, "detail": text}`; made here only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from tidings.exceptions import IngestError, Overloaded, StoreError

STORE_RETRY_AFTER = 5


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def ingest_error(error: IngestError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Overloaded) else None
    return error_response(error.status, error.code, error.detail, headers)


def store_error(error: StoreError) -> JSONResponse:
    return error_response(
        503,
        "store_unavailable",
        "the store is unavailable; retry shortly",
        {"Retry-After": str(STORE_RETRY_AFTER)},
    )


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid_request",
}


def install(app: FastAPI) -> None:
    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, detail, dict(exc.headers or {}))

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems: Sequence[Any] = exc.errors()
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in problems)
        return error_response(400, "invalid_request", detail)

    async def on_ingest(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, IngestError)
        return ingest_error(exc)

    async def on_store(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreError)
        return store_error(exc)

    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(IngestError, on_ingest)
    app.add_exception_handler(StoreError, on_store)
