"""Asynchronous Postgres access for the hot paths (deletion-request intake and status polling).

Next to the SQLAlchemy engine that serves everything else, each event loop gets a small pool of psycopg
AsyncConnections (autocommit; a writer opens its own transaction). Statements are written once as
SQLAlchemy Core against the mapped tables and compiled once to psycopg's SQL (`compiled_sql`); rows are
inserted from one JSON document per table (`json_insert_sql`), so a hundred rows cost one parameter.

Why not the ORM here: on this path the ORM's per-statement work and a worker-thread hop per sync
dependency cost several milliseconds of CPU per request, ten times the framework's own cost.

Only for Postgres: `pool()` answers None for another database (the embedded SQLite demo), whose callers
take the ORM path. Database errors surface as SQLAlchemy's exceptions, so app.errors answers a 503
problem for an outage exactly as it does for the engine.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.sql import ClauseElement

from app.db import CONNECT_TIMEOUT_SECONDS
from app.settings import get_settings

_DIALECT = postgresql_psycopg.dialect()
# Timestamps come back in UTC, as the engine's UTCDateTime columns give them.
_SESSION_OPTIONS = "-c TimeZone=UTC"


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

    async def _take_slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once: no task, no timer
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), CONNECT_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            raise PoolTimeoutError("no database connection became free in time") from exc

    async def _connect(self) -> AsyncConnection[Any]:
        return await AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, options=_SESSION_OPTIONS
        )

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


def pool() -> AsyncPool | None:
    """The running loop's pool for the configured database; None when it is not Postgres."""
    settings = get_settings()
    conninfo = conninfo_of(settings.database_url)
    if conninfo is None:
        return None
    pools = _pools.setdefault(asyncio.get_running_loop(), {})
    found = pools.get(conninfo)
    if found is None:
        found = pools[conninfo] = AsyncPool(conninfo, settings.db_pool_size)
    return found


async def close_pools() -> None:
    """Close the running loop's idle connections (application shutdown)."""
    for found in _pools.pop(asyncio.get_running_loop(), {}).values():
        await found.close()


def compiled_sql(statement: ClauseElement) -> str:
    """A Core statement as psycopg SQL with %(name)s parameters (compile once, keep the string)."""
    return str(statement.compile(dialect=_DIALECT))


def json_insert_sql(table: Table, columns: Sequence[str]) -> str:
    """INSERT of `columns` into `table` from one parameter: a JSON array of objects keyed by column name
    (orjson-encoded by the caller). Postgres unpacks it, so a batch of rows costs one bound value."""
    typed = ", ".join(f"{name} {table.c[name].type.compile(dialect=_DIALECT)}" for name in columns)
    names = ", ".join(columns)
    return (
        f"INSERT INTO {table.name} ({names}) SELECT {names} "
        f"FROM jsonb_to_recordset(%s::jsonb) AS incoming({typed})"
    )
