"""The writer thread: every write transaction of the process, with one commit for all that queued.

Every stage writes through here (ingest's group commits, the processor's batches, the flow
runner's rounds, the dispatcher's settle-and-claim). Under load they queue behind each other, and
each used to pay for its own BEGIN and its own commit, which on SQLite with `synchronous=FULL` is a
sync of the WAL: at 500 webhooks/s the commits were half of the writer's time
(bench/README-e2e.md). Here the writes that queued while one ran share the next transaction, each
in a savepoint of its own: a write that fails is rolled back alone and its caller gets its error,
the others commit together, and no caller hears of success before that commit. A write alone in
the queue runs in a plain transaction, as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from tidings.store.prepared import Prepared

log = logging.getLogger("tidings.store")

MAX_GROUP = 64  # writes sharing one commit at most

Write = Callable[[Connection], Any]
_Job = tuple[Write, "Future[Any]"]


class Writer:
    def __init__(
        self,
        connect: Callable[[], AbstractContextManager[Connection]],
        failed: Callable[[SQLAlchemyError], Exception],
        *,
        hold: bool = False,
    ) -> None:
        self._connect = connect  # a connection whose transactions take the write lock
        self._failed = failed  # what a caller gets for a database error
        # Keep one connection for every transaction (SQLite): checking one out of the pool and
        # back in (with its reset) cost more than a small transaction's statements. Not on
        # PostgreSQL, where the pool's check at checkout notices a server that restarted.
        self._hold = hold
        self._held: tuple[Connection, ExitStack] | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tidings-store-write", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, fn: Write) -> Future[Any]:
        if self._closed:
            raise RuntimeError("the store is closed")
        done: Future[Any] = Future()
        self._jobs.put((fn, done))
        return done

    def close(self) -> None:
        """Finish what is queued, then stop."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            self._thread.join()

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._release()

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        if not self._hold:
            with self._connect() as conn:
                yield conn
            return
        if self._held is None:
            stack = ExitStack()
            self._held = (stack.enter_context(self._connect()), stack)
        conn = self._held[0]
        try:
            yield conn
        except SQLAlchemyError:
            if conn.invalidated:  # the connection is unusable: the next write gets a new one
                self._release()
            raise

    def _release(self) -> None:
        if self._held is not None:
            self._held[1].close()
            self._held = None

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            group = [job]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            group = [(fn, done) for fn, done in group if done.set_running_or_notify_cancel()]
            if len(group) == 1:
                self._alone(*group[0])
            elif group:
                self._together(group)
            if stop:
                return

    def _alone(self, fn: Write, done: Future[Any]) -> None:
        try:
            with self._connection() as conn, conn.begin():
                result = fn(conn)
        except SQLAlchemyError as exc:
            done.set_exception(self._failed(exc))
        except BaseException as exc:  # the caller's own error, raised where it awaits
            done.set_exception(exc)
        else:
            done.set_result(result)

    def _together(self, group: list[_Job]) -> None:
        outcomes: list[tuple[Future[Any], bool, Any]] = []
        try:
            with self._connection() as conn, conn.begin():
                for fn, done in group:
                    try:
                        outcomes.append((done, True, _in_savepoint(conn, fn)))
                    except SQLAlchemyError as exc:
                        outcomes.append((done, False, self._failed(exc)))
                    except BaseException as exc:  # the caller's own error, as in `_alone`
                        outcomes.append((done, False, exc))
        except SQLAlchemyError as exc:  # BEGIN or the commit failed: nothing of the group holds
            error = self._failed(exc)
            for _, done in group:
                done.set_exception(error)
            return
        for done, ok, value in outcomes:
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)


class Savepoint:
    """A named savepoint as three prepared statements: `with SAVEPOINT(conn):` undoes what the
    block wrote if it raises, and the rest of the transaction stands.

    Plain statements rather than `conn.begin_nested()`: SQLAlchemy compiles a new statement for
    each of its (uniquely named) savepoints, which cost more than a small write itself (a sixth of
    the writer's time at 100 webhooks/s). One name serves where savepoints follow one another;
    one nested in another takes a name of its own."""

    def __init__(self, name: str) -> None:
        self._begin = Prepared(text(f"SAVEPOINT {name}"))
        self._release = Prepared(text(f"RELEASE SAVEPOINT {name}"))
        self._rollback = Prepared(text(f"ROLLBACK TO SAVEPOINT {name}"))

    @contextmanager
    def __call__(self, conn: Connection) -> Iterator[None]:
        self._begin.execute(conn)
        try:
            yield
        except BaseException:
            self._rollback.execute(conn)
            self._release.execute(conn)
            raise
        self._release.execute(conn)


_WRITE = Savepoint("tidings_write")


def _in_savepoint(conn: Connection, fn: Write) -> Any:
    """`fn(conn)` in a savepoint: if it raises, what it wrote is undone and the rest stands."""
    with _WRITE(conn):
        return fn(conn)
