"""The bare baseline: a raw ASGI app that reads the whole body and answers 200 with a small JSON.

It runs on the same server stack as `tidings serve` (uvicorn, uvloop, httptools, one worker), so
the ratio tidings/bare says what verifying, storing and answering cost on top of HTTP itself:

    .venv/bin/uvicorn bench.baseline_app:app --loop uvloop --http httptools --workers 1 \
        --backlog 4096 --log-level warning --no-access-log --port 8099
"""

from __future__ import annotations

from typing import Any

_BODY = b'{"status":"accepted","accepted":1,"duplicates":0}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    # Read the body in full, as a receiver must before it can verify a signature.
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
