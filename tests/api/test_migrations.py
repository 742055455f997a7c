"""The migrations build exactly the schema the models declare, and tear it down again, on Postgres and
on the SQLite file of the demo."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.db import Base, import_all_models
from tests.conftest import create_scratch_database, drop_scratch_database, run_migrations

import_all_models()
EXPECTED_TABLES = set(Base.metadata.tables)


def schema_differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def scratch_postgres() -> Iterator[str]:
    url = create_scratch_database("lethe_migr")
    try:
        yield url
    finally:
        drop_scratch_database(url)


def assert_round_trip(url: str) -> None:
    run_migrations(url)
    assert table_names(url) == EXPECTED_TABLES | {"alembic_version"}
    assert schema_differences(url) == []

    run_migrations(url, "base", down=True)
    assert table_names(url) == {"alembic_version"}

    # Up again after a full downgrade: nothing was left behind to collide with.
    run_migrations(url)
    assert schema_differences(url) == []


def test_migrations_up_down_up_on_postgres(scratch_postgres: str) -> None:
    assert_round_trip(scratch_postgres)


def test_migrations_up_down_up_on_sqlite(tmp_path: Path) -> None:
    assert_round_trip(f"sqlite:///{tmp_path / 'lethe.db'}")
