"""SQL of the inbox: the group commit of received requests, listing, and dedupe-key expiry."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from tidings.ingest.base import InboundRequest, Outcome, Reception
from tidings.store.prepared import Prepared
from tidings.store.schema import dedupe_keys, inbox, requests


@dataclass(frozen=True, slots=True)
class Submission:
    request: InboundRequest
    reception: Reception


# Built once: at a steady trickle, each commit holds a few requests and building statements
# would cost more than running them.
_ADD_KEYS = {
    name: Prepared(
        dialect.insert(dedupe_keys)
        .on_conflict_do_nothing()
        .returning(dedupe_keys.c.source, dedupe_keys.c.key)
    )
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_INSERT = {table.name: Prepared(insert(table)) for table in (requests, inbox)}
_INSERT_RETURNING = {
    table.name: insert(table).returning(table.c.id, sort_by_parameter_order=True)
    for table in (requests, inbox)
}
_NEXT_ID = {
    table.name: Prepared(select(func.coalesce(func.max(table.c.id), 0) + 1)) for table in (requests, inbox)
}


def commit_batch(
    conn: Connection, batch: Sequence[Submission], now: datetime, dedupe_window: timedelta
) -> list[Outcome]:
    """Store every new item of every submission; report, per submission, what was new.

    An item is a duplicate when any of its keys is already known: from an earlier commit (the
    dedupe-key insert returns only the keys it added, which also settles races between
    processes on PostgreSQL) or from an earlier item in this same batch.
    """
    in_batch: set[tuple[str, str]] = set()
    candidates: list[tuple[int, int, list[tuple[str, str]]]] = []  # (submission, item, keys)
    for s_index, sub in enumerate(batch):
        for i_index, item in enumerate(sub.reception.items):
            keys = [(sub.request.source, _bounded(k)) for k in item.keys]
            if any(k in in_batch for k in keys):
                continue
            in_batch.update(keys)
            candidates.append((s_index, i_index, keys))

    added: set[tuple[str, str]] = set()
    if in_batch:
        expires = now + dedupe_window
        rows = [{"source": s, "key": k, "first_seen_at": now, "expires_at": expires} for s, k in in_batch]
        stmt = _ADD_KEYS["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
        added = {(r.source, r.key) for r in stmt.execute_many(conn, rows)}
    fresh = [(s, i, keys) for s, i, keys in candidates if all(k in added for k in keys)]

    with_news = sorted({s for s, _, _ in fresh})
    request_ids = dict(
        zip(with_news, _insert_all(conn, requests, [_request_row(batch[s]) for s in with_news]), strict=True)
    )
    rows = [_inbox_row(batch[s], i, keys[0][1], request_ids[s]) for s, i, keys in fresh]
    item_ids: dict[int, list[int]] = {}
    for (s, _, _), item_id in zip(fresh, _insert_all(conn, inbox, rows), strict=True):
        item_ids.setdefault(s, []).append(item_id)

    return [
        Outcome(
            accepted=len(item_ids.get(s, ())),
            duplicates=len(sub.reception.items) - len(item_ids.get(s, ())),
            flagged=sub.reception.flagged is not None,
            ids=tuple(item_ids.get(s, ())),
        )
        for s, sub in enumerate(batch)
    ]


def _insert_all(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows, returning their ids in order, in as few statements as the backend allows.

    SQLite cannot return ids from a multi-row insert in a guaranteed order, so SQLAlchemy would
    insert row by row; but the group commit holds SQLite's write lock (BEGIN IMMEDIATE), so the
    next ids are ours to assign and one executemany does it. PostgreSQL returns them batched.
    """
    if not rows:
        return []
    if conn.dialect.name == "sqlite":
        first = _NEXT_ID[table.name].execute(conn).scalar_one()
        ids = list(range(first, first + len(rows)))
        _INSERT[table.name].execute_many(conn, [{**row, "id": i} for row, i in zip(rows, ids, strict=True)])
        return ids
    return list(conn.execute(_INSERT_RETURNING[table.name], rows).scalars())


def _request_row(sub: Submission) -> dict[str, Any]:
    req = sub.request
    return {
        "source": req.source,
        "received_at": req.received_at,
        "method": req.method,
        "url": req.url if sub.reception.stored_url is None else sub.reception.stored_url,
        "headers": dict(sub.reception.headers),
        "body": req.body if sub.reception.stored_body is None else sub.reception.stored_body,
    }


def _inbox_row(sub: Submission, index: int, key: str, request_id: int) -> dict[str, Any]:
    item = sub.reception.items[index]
    topic = item.topic if item.topic is None or len(item.topic) <= TOPIC_MAX else item.topic[:TOPIC_MAX]
    return {
        "request_id": request_id,
        "source": sub.request.source,
        "item_index": index,
        "dedupe_key": key,
        "topic": topic,
        "payload": item.payload,
        "received_at": sub.request.received_at,
        "status": "flagged" if sub.reception.flagged else "pending",
        "error": sub.reception.flagged,
    }


KEY_MAX = 400  # the columns hold 512; ids from headers are not covered by any signature
TOPIC_MAX = 200


def _bounded(key: str) -> str:
    """A sender's id as a dedupe key; an absurdly long one is replaced by its hash."""
    return key if len(key) <= KEY_MAX else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def purge_dedupe_keys(conn: Connection, now: datetime) -> int:
    """Forget keys past their window; a sender retrying after that is treated as new."""
    return conn.execute(delete(dedupe_keys).where(dedupe_keys.c.expires_at < now)).rowcount


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxEntry:
    id: int
    request_id: int
    source: str
    topic: str | None
    dedupe_key: str
    received_at: datetime
    status: str
    error: str | None
    size: int
    headers: dict[str, str]
    payload: bytes | None = None


def list_entries(
    conn: Connection,
    *,
    source: str | None = None,
    status: str | None = None,
    after_id: int | None = None,
    before_id: int | None = None,
    limit: int = 50,
    with_payload: bool = False,
) -> list[InboxEntry]:
    """Newest first, unless `after_id` is given (then oldest first: tailing)."""
    body = func.coalesce(inbox.c.payload, requests.c.body)
    cols: list[Any] = [inbox, requests.c.headers, func.length(body).label("size")]
    if with_payload:
        cols.append(body.label("body"))
    stmt = select(*cols).join(requests, requests.c.id == inbox.c.request_id)
    if source is not None:
        stmt = stmt.where(inbox.c.source == source)
    if status is not None:
        stmt = stmt.where(inbox.c.status == status)
    if before_id is not None:
        stmt = stmt.where(inbox.c.id < before_id)
    if after_id is not None:
        stmt = stmt.where(inbox.c.id > after_id).order_by(inbox.c.id.asc())
    else:
        stmt = stmt.order_by(inbox.c.id.desc())
    return [
        InboxEntry(
            id=r.id,
            request_id=r.request_id,
            source=r.source,
            topic=r.topic,
            dedupe_key=r.dedupe_key,
            received_at=r.received_at,
            status=r.status,
            error=r.error,
            size=r.size,
            headers=r.headers,
            payload=r.body if with_payload else None,
        )
        for r in conn.execute(stmt.limit(limit))
    ]


def count_entries(conn: Connection) -> dict[str, int]:
    return {
        r.status: r.n
        for r in conn.execute(select(inbox.c.status, func.count().label("n")).group_by(inbox.c.status))
    }
