"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from tidings.exceptions import StoreError

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", summary="The store is reachable", responses={503: {"description": "store unreachable"}}
)
async def readyz(request: Request) -> Response:
    try:
        await request.app.state.tidings.store.ping()
    except StoreError:
        return JSONResponse({"error": "store_unavailable", "detail": "the store did not answer"}, 503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.tidings.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
