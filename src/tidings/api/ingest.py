"""`POST /hooks/{source}` and the Segment-compatible `POST /v1/{call}`."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tidings.api.errors import ingest_error, store_error
from tidings.exceptions import IngestError, MethodNotAllowed, StoreError, UnknownSource
from tidings.ingest import segment
from tidings.ingest.base import InboundRequest, media_type_of
from tidings.ingest.service import Ingest, read_body

router = APIRouter()

_SIGNED_WEBHOOK = {
    "description": "Stored (or recognised as a re-delivery). The body depends on the sender kind.",
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong signature, stale timestamp, or unknown write key"},
    404: {"description": "no such source"},
    413: {"description": "body over the source's limit"},
    415: {"description": "content type this sender never uses"},
    400: {"description": "malformed JSON or XML from a sender that could not be authenticated"},
    503: {"description": "overloaded or store unavailable; retry after Retry-After seconds"},
}


def _ingest(request: Request) -> Ingest:
    ingest: Ingest = request.app.state.ingest
    return ingest


async def _inbound(ingest: Ingest, request: Request, source: str, limit: int) -> InboundRequest:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
    body = await read_body(headers, request.stream(), limit)
    return InboundRequest(
        source=source,
        method=request.method,
        url=str(request.url),
        headers=headers,
        body=body,
        received_at=ingest.tidings.clock.now(),
    )


async def handle_webhook(ingest: Ingest, request: Request, source: str) -> Response:
    """POST /hooks/{source}: the checks in order, then the sender's answer."""
    started = time.perf_counter()
    try:
        receiver = ingest.receiver(source)
        receiver.check_media_type(media_type_of(request.headers))
        inbound = await _inbound(ingest, request, receiver.name, ingest.body_limit(receiver))
        reply = await ingest.accept(receiver, inbound, started)
    except IngestError as exc:
        ingest.refused(source, exc)
        return ingest_error(exc)
    except StoreError as exc:
        ingest.refused(source, IngestError(str(exc), code="store_unavailable"))
        return store_error(exc)
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type)


async def handle_tracking_call(ingest: Ingest, request: Request, call: str) -> Response:
    """POST /v1/{call}: the source is the one whose write key the call carries."""
    started = time.perf_counter()
    try:
        ingest.check_enabled()
        if call not in segment.CALLS:
            raise UnknownSource(
                f"/v1/{call} is not a tracking call; use one of {', '.join(segment.CALLS)}",
                code="unknown_call",
            )
        receivers = [r for r in ingest.tidings.receivers.values() if isinstance(r, segment.SegmentReceiver)]
        if not receivers:
            raise UnknownSource("no source of kind segment is configured")
        receivers[0].check_media_type(media_type_of(request.headers))
        inbound = await _inbound(ingest, request, "", segment.body_limit(call))
        receiver = segment.select_source(receivers, inbound)
        reply = await ingest.accept(receiver, replace(inbound, source=receiver.name), started)
    except IngestError as exc:
        ingest.refused("segment", exc)
        return ingest_error(exc)
    except StoreError as exc:
        ingest.refused("segment", IngestError(str(exc), code="store_unavailable"))
        return store_error(exc)
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type)


@router.post(
    "/hooks/{source}",
    tags=["ingest"],
    responses={200: _SIGNED_WEBHOOK, **_ERRORS},
    summary="Receive a webhook from a configured source",
)
async def receive_webhook(source: str, request: Request) -> Response:
    """Verify the sender's signature on the raw body, store durably, deduplicate, then answer 2xx."""
    return await handle_webhook(_ingest(request), request, source)


@router.post(
    "/v1/{call}",
    tags=["ingest"],
    responses={200: {"description": "stored"}, **_ERRORS},
    summary="Segment-compatible tracking API (track, identify, page, screen, group, alias, batch)",
)
async def receive_tracking_call(call: str, request: Request) -> Response:
    """Authenticated by write key (Basic auth or `writeKey` in the body); Segment's size limits apply."""
    return await handle_tracking_call(_ingest(request), request, call)


@router.get(
    "/hooks/{source}",
    tags=["ingest"],
    summary="A sender's check of its webhook URL",
    responses={200: {"description": "the URL and its key are right"}, **_ERRORS},
)
async def validate_webhook(source: str, request: Request) -> Response:
    """Some senders (Mailchimp) GET the URL when the webhook is saved: answered by the receiver."""
    ingest = _ingest(request)
    try:
        receiver = ingest.receiver(source)
        validation = getattr(receiver, "validation", None)
        if validation is None:
            raise MethodNotAllowed(f"source {source!r} takes POST only")
        reply = validation(await _inbound(ingest, request, receiver.name, 0))
    except IngestError as exc:
        ingest.refused(source, exc)
        return ingest_error(exc)
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type)
