"""Hot statements, compiled once and run on the SQLite driver's cursor.

A webhook takes about 35 statements on its way from ingest to delivery. Through SQLAlchemy Core
each costs ~0.1 ms of Python (cache key, execution context, parameter and result handling) where
SQLite's own work is ~0.02 ms, so Core's execution path was most of the writer thread's time
(bench/README-e2e.md, session 7).

A `Prepared` statement stays a Core construct: one definition, the dialect's SQL, the columns'
types. It is compiled once for each set of parameter names, and run on the cursor of the
connection's own transaction, with the bind and result processors SQLAlchemy would apply. Errors
are SQLAlchemy's (`DBAPIError.instance`), and `before_cursor_execute` listeners still see each
statement, so whatever counts statements (tests, benchmarks) counts these too.

Only on SQLite, whose driver runs in-process. On PostgreSQL a round trip to the server outweighs
the Python, and `conn.execute` keeps psycopg's type adaptation exactly as SQLAlchemy does it; the
answer comes back as the same `Rows`, so callers do not know which path ran.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter

Params = Mapping[str, Any]
_Processor = Callable[[Any], Any]
_REQUIRED = object()


class Rows:
    """A statement's answer, read at once: the part of SQLAlchemy's `Result` the hot paths use.

    Rows are named tuples: `row.id`, `row[0]` and unpacking work as on SQLAlchemy's rows."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def all(self) -> list[Any]:
        return self.rows

    def first(self) -> Any | None:
        return self.rows[0] if self.rows else None

    def one_or_none(self) -> Any | None:
        if len(self.rows) > 1:
            raise MultipleResultsFound("more than one row where at most one was expected")
        return self.first()

    def one(self) -> Any:
        row = self.one_or_none()
        if row is None:
            raise NoResultFound("no row where one was expected")
        return row

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]


class Prepared:
    """A Core statement run without Core's per-call machinery (see the module's docstring).

    Parameters are given by name as to `conn.execute`; `bindparam(..., expanding=True)` takes a
    sequence. A statement with an empty expanding sequence goes through `conn.execute`, which
    renders SQLAlchemy's empty-set expression."""

    __slots__ = ("_plans", "statement")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, ...], _Plan] = {}

    def __repr__(self) -> str:
        return f"Prepared({self.statement})"

    def execute(self, conn: Connection, params: Params | None = None) -> Rows:
        params = params or {}
        plan = self._plan(conn, params)
        prepared = None if plan is None else plan.arguments(params)
        if plan is None or prepared is None:
            return self._through_core(conn, params)
        return plan.run(conn, *prepared)

    def execute_many(self, conn: Connection, params: Sequence[Params]) -> Rows:
        """The statement once per parameter set, as `conn.execute(statement, [...])` does; the
        rows of a RETURNING statement come back in the order of `params`."""
        if not params:
            return Rows([], 0)
        plan = self._plan(conn, params[0])
        if plan is None:
            return self._through_core(conn, list(params))
        if plan.expanding_any:
            raise ArgumentError(f"execute_many takes no expanding parameters: {self}")
        argsets = [prepared[1] for one in params if (prepared := plan.arguments(one)) is not None]
        if not plan.returns_rows:
            return Rows([], plan.run_many(conn, argsets))
        rows: list[Any] = []
        for args in argsets:  # SQLite's executemany returns no rows: one statement each
            rows.extend(plan.run(conn, plan.sql, args).rows)
        return Rows(rows, len(rows))

    def _plan(self, conn: Connection, params: Params) -> _Plan | None:
        """The compiled shape for these parameter names; None where Core runs the statement."""
        if conn.dialect.name != "sqlite" or not conn.in_transaction():
            return None
        keys = tuple(params)
        plan = self._plans.get(keys)
        if plan is None:
            plan = self._plans[keys] = _Plan(self.statement, conn, keys)
        return plan

    def _through_core(self, conn: Connection, params: Params | list[Params]) -> Rows:
        result = conn.execute(self.statement, params)  # type: ignore[call-overload]
        if not result.returns_rows:
            return Rows([], result.rowcount)
        if not getattr(self.statement, "exported_columns", None):
            # An INSERT that SQLAlchemy gave a RETURNING of its own (PostgreSQL's primary keys):
            # no rowcount, and the rows went to SQLAlchemy.
            return Rows([], len(result.inserted_primary_key_rows))
        rows = list(result.all())
        return Rows(rows, len(rows))


class _Plan:
    """One compiled shape of a statement: its SQL, where each argument comes from and how each
    value goes in and comes back."""

    def __init__(self, statement: ClauseElement, conn: Connection, keys: tuple[str, ...]) -> None:
        dialect = conn.dialect
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=list(keys)))
        if dialect.paramstyle != "qmark" or compiled.positiontup is None:
            raise ArgumentError(f"prepared statements need the qmark style: {dialect.paramstyle}")
        self.sql = compiled.string
        self.dbapi_error = dialect.loaded_dbapi.Error
        self.dialect = dialect
        names, defaults, processors, expanding = [], [], [], []
        for name in compiled.positiontup:
            bind: BindParameter[Any] = compiled.binds[name]
            names.append(name)
            defaults.append(_REQUIRED if bind.required else bind.effective_value)
            processors.append(bind.type.dialect_impl(dialect).bind_processor(dialect))
            expanding.append(bind.expanding)
        self.arguments_of = tuple(zip(names, defaults, processors, expanding, strict=True))
        self.expanding_any = any(expanding)
        self._sqls: dict[tuple[int, ...], str] = {}
        columns = list(getattr(statement, "exported_columns", ()))
        self.returns_rows = bool(columns)
        self.results = [
            (i, p)
            for i, column in enumerate(columns)
            if (p := column.type.dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]
        self.row: Any = None  # a named tuple class, from the first answer's column names

    def arguments(self, params: Params) -> tuple[str, list[Any]] | None:
        """The SQL and its positional arguments; None if an expanding parameter is empty."""
        args: list[Any] = []
        lengths: list[int] = []
        for name, default, process, expanding in self.arguments_of:
            value = params.get(name, default)
            if value is _REQUIRED:
                raise ArgumentError(f"a value is required for parameter {name!r} of {self.sql!r}")
            if expanding:
                values = list(value)
                if not values:
                    return None
                lengths.append(len(values))
                args.extend(map(process, values) if process else values)
            else:
                args.append(process(value) if process else value)
        if not lengths:
            return self.sql, args
        sql = self._sqls.get(key := tuple(lengths))
        if sql is None:
            sql = self._sqls[key] = self._expand(lengths)
        return sql, args

    def _expand(self, lengths: list[int]) -> str:
        sql = self.sql
        sizes = iter(lengths)
        for name, _, _, expanding in self.arguments_of:
            if expanding:
                marker = f"__[POSTCOMPILE_{name}]"
                sql = sql.replace(marker, ", ".join("?" * next(sizes)), 1)
        return sql

    def run(self, conn: Connection, sql: str, args: list[Any]) -> Rows:
        cursor = self._cursor(conn, sql, args, many=False)
        try:
            cursor.execute(sql, args)
            if not self.returns_rows:
                return Rows([], cursor.rowcount)
            raw = cursor.fetchall()
            if self.row is None:
                names = [d[0] for d in cursor.description]
                self.row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
            make = self.row._make
            if self.results:
                rows = []
                for values in raw:
                    values = list(values)
                    for i, process in self.results:
                        values[i] = process(values[i])
                    rows.append(make(values))
            else:
                rows = [make(values) for values in raw]
            return Rows(rows, cursor.rowcount)
        except self.dbapi_error as exc:
            raise self._error(sql, args, exc) from exc
        finally:
            cursor.close()

    def run_many(self, conn: Connection, argsets: list[list[Any]]) -> int:
        cursor = self._cursor(conn, self.sql, argsets, many=True)
        try:
            cursor.executemany(self.sql, argsets)
            return int(cursor.rowcount)
        except self.dbapi_error as exc:
            raise self._error(self.sql, argsets, exc) from exc
        finally:
            cursor.close()

    def _cursor(self, conn: Connection, sql: str, args: Any, *, many: bool) -> Any:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        if conn.dispatch.before_cursor_execute:
            for listener in conn.dispatch.before_cursor_execute:
                listener(conn, cursor, sql, args, None, many)
        return cursor

    def _error(self, sql: str, args: Any, exc: Exception) -> DBAPIError:
        return cast(
            DBAPIError,
            DBAPIError.instance(sql, args, exc, self.dbapi_error, dialect=self.dialect),
        )
