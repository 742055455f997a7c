"""Database plumbing: declarative base, engine and sessions from settings, the `SessionDep` dependency.

Outages surface as SQLAlchemy `OperationalError`/`DBAPIError`; app.errors maps those to 503 problem+json,
so nothing here swallows them. A short connect timeout makes an unreachable database fail fast instead of
holding a worker thread.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Select,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.settings import get_settings

# Stable constraint names: migrations (and their downgrades) can refer to them on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Every module that declares tables; Alembic and the tests import them all through `import_all_models`.
MODEL_MODULES = (
    "app.tenancy.models",
    "app.security.models",
    "app.provenance.models",
    "app.registry.models",
    "app.requests.models",
    "app.jobs.models",
    "app.audit.models",
    "app.idempotency.models",
    "app.webhooks.models",
    "app.outbox.models",
    "app.certificates.models",
)

CONNECT_TIMEOUT_SECONDS = 5

# JSONB on Postgres (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY; Postgres gets a 64-bit sequence.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite drops the offset when storing)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        # A naive value (e.g. a query parameter without offset) is taken as UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        list[str]: JSONType,
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def import_all_models() -> None:
    for module_name in MODEL_MODULES:
        importlib.import_module(module_name)


def make_engine(url: str) -> Engine:
    settings = get_settings()
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        # Error messages name the statement, not its parameters (rows, ids, subject HMACs).
        hide_parameters=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=settings.db_pool_pre_ping,
        pool_timeout=CONNECT_TIMEOUT_SECONDS,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def get_session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def reset_engine() -> None:
    """Forget the cached engine (after the database URL changed, e.g. in tests)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_session_factory.cache_clear()


def get_session() -> Iterator[Session]:
    """One session per request; the domain services commit, anything left open is rolled back."""
    session = get_session_factory()()
    try:
        yield session
    except BaseException:
        # The connection may be gone (outage): a failed rollback must not hide the original error.
        with suppress(Exception):
            session.rollback()
        raise
    finally:
        with suppress(Exception):
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]


@contextmanager
def session_scope() -> Iterator[Session]:
    """A transaction outside HTTP (CLI, workers): commit on success, roll back on error."""
    session = get_session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        with suppress(Exception):
            session.rollback()
        raise
    finally:
        session.close()


def one_of(column: str, values: Iterable[str]) -> CheckConstraint:
    """A named CHECK that `column` holds one of `values` (portable, unlike native enums)."""
    allowed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_allowed")


def for_update(stmt: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
    """The row lock of every state change (requests, jobs, models): FOR NO KEY UPDATE. It serializes
    writers like FOR UPDATE but lets others insert rows referring to the locked one (their foreign-key
    check takes KEY SHARE, which FOR UPDATE blocks: planning a request into a job being claimed
    deadlocked that way)."""
    return stmt.with_for_update(key_share=True, skip_locked=skip_locked)
