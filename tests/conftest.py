"""Shared fixtures: a throwaway Postgres database built by the real migrations, an API client, tenants
and API keys.

The database `lethe_test_<random>` is created on LETHE_TEST_ADMIN_URL's server when a test first needs
it and dropped at the end of the session, so parallel runs (and CI) never collide. Tests isolate
themselves by working in fresh tenants rather than by truncating tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.db import get_session_factory, reset_engine, session_scope
from app.security.keys import create_api_key
from app.security.scopes import ALL_SCOPES
from app.settings import get_settings
from app.tenancy.service import create_tenant

# The session client runs the app's lifespan: its outbox dispatcher would hand test tasks to the shared
# broker (where real workers may listen). Tests that need a dispatcher start their own.
os.environ.setdefault("LETHE_OUTBOX_DISPATCH_IN_API", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = REPO_ROOT / "alembic.ini"

AuthHeaders = dict[str, str]


def run_migrations(database_url: str, target: str = "head", *, down: bool = False) -> None:
    """Run the real Alembic migrations on `database_url` (upgrade, or downgrade with down=True)."""
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            config = Config(str(ALEMBIC_INI))
            config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
            config.attributes["connection"] = connection
            if down:
                command.downgrade(config, target)
            else:
                command.upgrade(config, target)
    finally:
        engine.dispose()


def create_scratch_database(prefix: str = "lethe_test") -> str:
    """Create an empty database on the admin server; answer its URL."""
    admin_url = make_url(get_settings().test_admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return admin_url.set(database=name).render_as_string(hide_password=False)


def drop_scratch_database(database_url: str) -> None:
    name = make_url(database_url).database
    admin = create_engine(get_settings().test_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated scratch database; the app's settings and engine point at it for the session."""
    url = create_scratch_database()
    previous = os.environ.get("LETHE_DATABASE_URL")
    os.environ["LETHE_DATABASE_URL"] = url
    get_settings.cache_clear()
    reset_engine()
    try:
        run_migrations(url)
        yield url
    finally:
        reset_engine()
        if previous is None:
            os.environ.pop("LETHE_DATABASE_URL", None)
        else:
            os.environ["LETHE_DATABASE_URL"] = previous
        get_settings.cache_clear()
        drop_scratch_database(url)


@pytest.fixture(scope="session")
def api_app(database_url: str) -> FastAPI:
    from app.main import create_app  # builds middleware from settings: import once they point here

    return create_app(get_settings())


@pytest.fixture(scope="session")
def client(api_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(api_app) as test_client:
        yield test_client


@pytest.fixture
def db_session(database_url: str) -> Iterator[Session]:
    """A session on the test database for arranging and checking rows directly."""
    session = get_session_factory()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@pytest.fixture
def make_tenant(database_url: str) -> Callable[[], str]:
    """Create a fresh tenant (unique name) and answer its id."""

    def factory(name: str | None = None) -> str:
        with session_scope() as session:
            return create_tenant(session, name or f"tenant-{uuid.uuid4().hex[:10]}").id

    return factory


@pytest.fixture
def tenant_a(make_tenant) -> str:
    return make_tenant()


@pytest.fixture
def tenant_b(make_tenant) -> str:
    return make_tenant()


@pytest.fixture
def make_key(database_url: str) -> Callable[..., AuthHeaders]:
    """`make_key(tenant_id, scopes)` -> {"Authorization": "Bearer <new key>"}; every scope by default."""

    def factory(tenant_id: str, scopes: list[str] | tuple[str, ...] = ALL_SCOPES) -> AuthHeaders:
        with session_scope() as session:
            _, plaintext = create_api_key(session, tenant_id, scopes, name="test")
        return {"Authorization": f"Bearer {plaintext}"}

    return factory


@pytest.fixture
def auth_a(make_key, tenant_a: str) -> AuthHeaders:
    """Every scope on tenant A."""
    return make_key(tenant_a)


@pytest.fixture
def auth_b(make_key, tenant_b: str) -> AuthHeaders:
    """Every scope on tenant B."""
    return make_key(tenant_b)
