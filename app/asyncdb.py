"""Asynchronous Postgres access for the hot paths (deletion-request intake and status polling).

Next to the SQLAlchemy engine that serves everything else, each event loop gets a small pool of psycopg
AsyncConnections (autocommit; a writer opens its own transaction). Statements are written once as
SQLAlchemy Core against the mapped tables and compiled once to psycopg's SQL (`compiled_sql`); rows are
inserted from one JSON document per table (`json_insert_sql`), so a hundred rows cost one parameter.

Why not the ORM here: on this path the ORM's per-statement work and a worker-thread hop per sync
dependency cost several milliseconds of CPU per request, ten times the framework's own cost.

Only for Postgres: `pool()` answers None for another database (the embedded SQLite demo), whose callers
use the engine's sessions. Database errors surface as SQLAlchemy's exceptions, so app.errors answers a 503
problem for an outage exactly as it does for the engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.adapt import Transformer
from psycopg.conninfo import make_conninfo
from psycopg.errors import error_from_result
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult
from psycopg.types.json import set_json_loads
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.sql import ClauseElement

from app.db import CONNECT_TIMEOUT_SECONDS
from app.settings import get_settings

_DIALECT = postgresql_psycopg.dialect()
# Timestamps come back in UTC, as the engine's UTCDateTime columns give them; Script sends UTF-8 and
# sql_literal's quoting needs standard strings; Script's prepared statements are planned once (generic
# plans), not per use.
_SESSION_OPTIONS = (
    "-c TimeZone=UTC -c client_encoding=UTF8 -c standard_conforming_strings=on "
    "-c plan_cache_mode=force_generic_plan"
)
_FAILED = (ExecStatus.FATAL_ERROR, ExecStatus.BAD_RESPONSE)


@lru_cache(maxsize=8)
def conninfo_of(database_url: str) -> str | None:
    """psycopg's connection string for a SQLAlchemy URL; None when it is not a Postgres database."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    parts: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
    }
    parts.update({key: value for key, value in url.query.items() if isinstance(value, str)})
    return make_conninfo(**{key: value for key, value in parts.items() if value is not None})


def translated(exc: psycopg.Error) -> DBAPIError:
    """The SQLAlchemy exception the engine would have raised for this driver error."""
    if isinstance(exc, psycopg.OperationalError):
        return OperationalError(None, None, exc)
    return DBAPIError(None, None, exc)


class AsyncPool:
    """At most `size` connections of one event loop; idle ones are kept for reuse."""

    def __init__(self, conninfo: str, size: int) -> None:
        self.conninfo = conninfo
        self._idle: list[AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)
        # What the hot paths build once per pool (app.requests.intake keeps its batcher here).
        self.state: dict[str, Any] = {}

    async def _take_slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once: no task, no timer
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), CONNECT_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            raise PoolTimeoutError("no database connection became free in time") from exc

    async def _connect(self) -> AsyncConnection[Any]:
        # prepare_threshold=None: psycopg's own preparing keeps a count of every distinct query text,
        # and a Script's texts (literals bound in) are all distinct; Script prepares by itself.
        conn = await AsyncConnection.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            options=_SESSION_OPTIONS,
            prepare_threshold=None,
        )
        set_json_loads(orjson.loads, conn)
        return conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        await self._take_slot()
        conn: AsyncConnection[Any] | None = None
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
            yield conn
        except psycopg.Error as exc:
            raise translated(exc) from exc
        finally:
            if conn is not None:
                await self._give_back(conn)
            self._slots.release()

    async def _give_back(self, conn: AsyncConnection[Any]) -> None:
        # A connection that broke (or was left inside a transaction) is not handed out again.
        if not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE:
            self._idle.append(conn)
            return
        with suppress(Exception):
            await conn.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with suppress(Exception):
                await conn.close()


# One pool per event loop and database: connections belong to the loop that opened them (test clients
# run several loops), and a test that repoints the database gets a pool of the new one.
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncPool]] = (
    weakref.WeakKeyDictionary()
)


# The pool pool() answered last, with its loop: every request asks, and a weak-keyed lookup costs
# more than the rest of pool() together.
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], str, AsyncPool] | None = None


def pool() -> AsyncPool | None:
    """The running loop's pool for the configured database; None when it is not Postgres."""
    global _last
    settings = get_settings()
    conninfo = conninfo_of(settings.database_url)
    if conninfo is None:
        return None
    loop = asyncio.get_running_loop()
    if _last is not None and _last[0]() is loop and _last[1] == conninfo:
        return _last[2]
    pools = _pools.setdefault(loop, {})
    found = pools.get(conninfo)
    if found is None:
        found = pools[conninfo] = AsyncPool(conninfo, settings.db_pool_size)
    _last = (weakref.ref(loop), conninfo, found)
    return found


async def close_pools() -> None:
    """Close the running loop's idle connections (application shutdown)."""
    for found in _pools.pop(asyncio.get_running_loop(), {}).values():
        await found.close()


class Script:
    """Statements sent together in one round trip: their parameters are bound client-side and the
    script goes out in the simple query protocol, so a transaction's worth of statements costs one
    network exchange (psycopg's pipeline mode costs several event-loop waits per statement).

    A statement with parameters runs as EXECUTE of a statement prepared on the connection the first
    time it is used there (one extra round trip, once): the hot paths' statements are large, and
    planning them afresh cost Postgres more CPU than running them. The EXECUTE's arguments are written
    by `sql_literal` (the few types these statements take), which costs a tenth of psycopg's general
    adaptation."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn
        self._statements: list[str] = []
        self._readers: list[Callable[[list[Any]], None] | None] = []
        self._to_prepare: dict[str, Prepared] = {}

    def add(self, sql: str, params: Any = None, read: Callable[[list[Any]], None] | None = None) -> None:
        """Add a statement; `read` receives its rows (tuples) once the script has run."""
        if params is None:
            self._statements.append(sql)
        else:
            prepared = prepared_form(sql)
            if prepared.name not in _prepared_on(self._conn):
                self._to_prepare[prepared.name] = prepared
            self._statements.append(prepared.execute(params))
        self._readers.append(read)

    async def run(self) -> None:
        """Send the script; raises the first statement's error (the later ones do not run)."""
        if self._to_prepare:
            # PREPARE is not transactional: a statement prepared here stays prepared whatever
            # becomes of the transaction the script runs in.
            await _round_trip(self._conn, ";\n".join(p.prepare_sql for p in self._to_prepare.values()))
            _prepared_on(self._conn).update(self._to_prepare)
            self._to_prepare = {}
        results = await _round_trip(self._conn, ";\n".join(self._statements))
        loader = Transformer(self._conn)
        for read, result in zip(self._readers, results, strict=True):
            if read is not None:
                loader.set_pgresult(result)
                read(loader.load_rows(0, result.ntuples, tuple))


async def _round_trip(conn: AsyncConnection[Any], query: str) -> list[PGresult]:
    """Send `query` (simple protocol) and collect its results, one per statement; raises the error of
    the statement that failed. libpq directly, waiting on the socket: psycopg's cursor machinery cost
    more than the exchange itself on the hot paths."""
    pgconn = conn.pgconn
    loop = asyncio.get_running_loop()
    pgconn.send_query(query.encode())
    while pgconn.flush():
        await _socket_ready(loop, pgconn.socket, writable=True)
    results: list[PGresult] = []
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                for done in results:
                    if done.status in _FAILED:
                        raise error_from_result(done, encoding=conn.info.encoding)
                return results
            results.append(result)
        await _socket_ready(loop, pgconn.socket)


async def _socket_ready(loop: asyncio.AbstractEventLoop, fileno: int, writable: bool = False) -> None:
    ready = loop.create_future()
    watch, unwatch = (
        (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    )
    watch(fileno, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        unwatch(fileno)


@dataclass(frozen=True)
class Prepared:
    """A statement in psycopg's %s / %(name)s style as a named prepared statement."""

    name: str
    prepare_sql: str
    count: int  # of parameters ($1 ... $count)
    names: tuple[str, ...] | None  # the parameter names of $1, $2, ...; None for positional %s

    def execute(self, params: Any) -> str:
        """The EXECUTE statement running it with `params` (a sequence, or a mapping by name)."""
        arguments = params if self.names is None else [params[name] for name in self.names]
        if len(arguments) != self.count:
            raise TypeError(f"{self.name} takes {self.count} parameters, not {len(arguments)}")
        if not arguments:
            return f"EXECUTE {self.name}"
        return f"EXECUTE {self.name}({', '.join(map(sql_literal, arguments))})"


def sql_literal(value: Any) -> str:
    """`value` as an SQL literal: None, bool, int, str, or a list of those (an ARRAY). Strings are
    quoted by doubling their quotes, which is exact under standard_conforming_strings (set for every
    connection of the pool: backslashes are plain characters)."""
    if value is None:
        return "NULL"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        if "\x00" in value:
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list | tuple):
        # '{}' takes its type from the parameter; a non-empty ARRAY[...] is cast to it.
        return f"ARRAY[{', '.join(map(sql_literal, value))}]" if value else "'{}'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


_PLACEHOLDER = re.compile(r"%(?:\((\w+)\))?([s%])")


@lru_cache(maxsize=256)
def prepared_form(sql: str) -> Prepared:
    names: list[str] = []
    positional = 0

    def number(match: re.Match[str]) -> str:
        nonlocal positional
        name, kind = match.groups()
        if kind == "%":
            return "%"
        if name is None:
            positional += 1
            return f"${positional}"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    text = _PLACEHOLDER.sub(number, sql)
    if names and positional:
        raise ValueError("a statement takes either %s or %(name)s parameters, not both")
    name = "lethe_" + hashlib.blake2b(sql.encode(), digest_size=10).hexdigest()
    return Prepared(
        name=name,
        prepare_sql=f"PREPARE {name} AS {text}",
        count=positional or len(names),
        names=tuple(names) if names else None,
    )


_prepared: weakref.WeakKeyDictionary[AsyncConnection[Any], set[str]] = weakref.WeakKeyDictionary()


def _prepared_on(conn: AsyncConnection[Any]) -> set[str]:
    return _prepared.setdefault(conn, set())


async def end_transaction(conn: AsyncConnection[Any]) -> None:
    """Roll back what a failed script left open, so the connection can serve again."""
    if conn.info.transaction_status != TransactionStatus.IDLE and not conn.broken:
        with suppress(psycopg.Error):
            await conn.rollback()


def compiled_sql(statement: ClauseElement) -> str:
    """A Core statement as psycopg SQL with %(name)s parameters (compile once, keep the string). Every
    parameter must be a named bindparam without a value: the caller passes them all (constants belong
    in the SQL, e.g. `.limit(literal_column("1"))`)."""
    compiled = statement.compile(dialect=_DIALECT)
    fixed = sorted(name for name, value in compiled.params.items() if value is not None)
    if fixed:
        raise ValueError(f"parameters with values would not be passed: {', '.join(fixed)}")
    return str(compiled)


def json_rows_sql(sql: str, width: int) -> str:
    """A scalar subquery answering the rows of the `width`-column query `sql` as one JSON array of
    arrays (several result sets in one statement, one round trip)."""
    columns = [f"c{index}" for index in range(width)]
    values = ", ".join(f"q.{column}" for column in columns)
    aliases = ", ".join(columns)
    return f"(SELECT coalesce(json_agg(json_build_array({values})), '[]') FROM ({sql}) AS q({aliases}))"


def json_insert_sql(table: Table, columns: Sequence[str], source: str = "%s::jsonb") -> str:
    """INSERT of `columns` into `table` from a JSON array of objects keyed by column name (by default
    the statement's one parameter, orjson-encoded by the caller): Postgres unpacks it, so a batch of
    rows costs one bound value."""
    typed = ", ".join(f"{name} {table.c[name].type.compile(dialect=_DIALECT)}" for name in columns)
    names = ", ".join(columns)
    return (
        f"INSERT INTO {table.name} ({names}) SELECT {names} "
        f"FROM jsonb_to_recordset({source}) AS incoming({typed})"
    )


def _member_of_batch(name: str) -> str:
    return f"(SELECT doc FROM batch) -> '{name}'"


def json_inserts_sql(parts: Sequence[tuple[str, Table, Sequence[str]]]) -> str:
    """One statement inserting into several tables from one parameter: a JSON object whose member
    `name` holds the rows of each (name, table, columns) part. Foreign keys are checked when the whole
    statement has run, so parents and children may come in one document."""
    inserts = ", ".join(
        f"insert_{name} AS ({json_insert_sql(table, columns, _member_of_batch(name))})"
        for name, table, columns in parts
    )
    return f"WITH batch AS (SELECT %s::jsonb AS doc), {inserts} SELECT 1"
