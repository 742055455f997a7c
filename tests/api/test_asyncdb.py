"""app.asyncdb.Script: statements prepared once per connection, arguments written as SQL literals."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from app import asyncdb
from app.asyncdb import AsyncPool, Script, conninfo_of, sql_literal

AWKWARD_TEXTS = [
    "",
    "it's",
    "''",
    "\\",
    "\\'; DROP TABLE tenants; --",
    "E'\\x41'",
    "$$ dollar $$",
    "line\nbreak\ttab\r",
    "\u00e9\u2028\U0001f600",
    "%s %(name)s %%",
]


def run(database_url: str, body: Any) -> Any:
    async def scenario() -> Any:
        pool = AsyncPool(conninfo_of(database_url), 2)
        try:
            async with pool.connection() as conn:
                return await body(conn)
        finally:
            await pool.close()

    return asyncio.run(scenario())


def test_awkward_text_comes_back_unchanged(database_url: str) -> None:
    rows: list[Any] = []

    async def body(conn) -> None:
        for _ in range(2):  # prepared by the first script, executed again by the second
            script = Script(conn)
            for text in AWKWARD_TEXTS:
                script.add("SELECT %s::text, %s::varchar[]", (text, [text, None]), rows.append)
            await script.run()

    run(database_url, body)

    assert [row[0] for row in rows] == [(text, [text, None]) for text in AWKWARD_TEXTS] * 2


def test_numbers_booleans_and_lists_keep_their_type(database_url: str) -> None:
    rows: list[Any] = []

    async def body(conn) -> None:
        script = Script(conn)
        script.add(
            "SELECT %(big)s::bigint, %(negative)s::int, %(flag)s::bool, %(ids)s::bigint[], %(none)s::text[]",
            {"big": 2**62, "negative": -7, "flag": False, "ids": [1, 2**40], "none": []},
            rows.append,
        )
        await script.run()

    run(database_url, body)

    assert rows == [[(2**62, -7, False, [1, 2**40], [])]]


def test_a_failing_statement_fails_the_script_and_leaves_the_connection_usable(database_url: str) -> None:
    async def body(conn) -> Any:
        script = Script(conn)
        script.add("SELECT 1 / %s::int", (0,))
        with pytest.raises(psycopg.errors.DivisionByZero):
            await script.run()
        again: list[Any] = []
        script = Script(conn)
        script.add("SELECT 1 / %s::int", (1,), again.append)
        await script.run()
        return again

    assert run(database_url, body) == [[(1,)]]


@pytest.mark.parametrize("value", ["nul\x00byte", 1.5, {"a": 1}, b"bytes"])
def test_values_without_a_safe_literal_are_refused(value: Any) -> None:
    with pytest.raises((TypeError, psycopg.DataError)):
        sql_literal(value)


def test_placeholders_become_numbered_parameters() -> None:
    named = asyncdb.prepared_form("SELECT %(a)s, %(b)s, %(a)s, '100%%'")
    positional = asyncdb.prepared_form("SELECT %s, %s")

    assert named.prepare_sql.endswith("AS SELECT $1, $2, $1, '100%'")
    assert named.execute({"a": 1, "b": "x"}) == f"EXECUTE {named.name}(1, 'x')"
    assert positional.execute((None, [True])) == f"EXECUTE {positional.name}(NULL, ARRAY[true])"
    with pytest.raises(TypeError):
        positional.execute((1,))
