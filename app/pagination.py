"""Keyset pagination for every list: `?limit=&cursor=` in, `{items, next_cursor}` out.

The cursor is opaque to clients: base64url JSON of the sort key of the last item served. Keyset (not
OFFSET) pages stay fast deep into a long list and do not skip or repeat rows when new ones arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import Select, bindparam, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import unprocessable
from app.settings import get_settings

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: str | None


def page_params(
    limit: Annotated[int | None, Query(ge=1, description="items per page (capped by the server)")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> PageParams:
    settings = get_settings()
    return PageParams(limit=min(limit or settings.default_page_size, settings.max_page_size), cursor=cursor)


PageParamsDep = Annotated[PageParams, Depends(page_params)]


def encode_cursor(values: Sequence[Any]) -> str:
    encoded = [{"dt": value.isoformat()} if isinstance(value, datetime) else value for value in values]
    raw = json.dumps(encoded, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, width: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != width:
            raise ValueError("cursor shape")
        return [datetime.fromisoformat(v["dt"]) if isinstance(v, dict) else v for v in values]
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError) as exc:
        raise unprocessable("the cursor is not one this list handed out", "invalid-cursor") from exc


def paginate(
    session: Session,
    stmt: Select[Any],
    keys: Sequence[InstrumentedAttribute[Any]],
    params: PageParams,
    *,
    descending: bool = False,
) -> tuple[list[Any], str | None]:
    """One page of the entities selected by `stmt`, ordered by `keys` (unique together, all one direction).
    Answers the entities and the cursor of the next page (None on the last page)."""
    if params.cursor is not None:
        values = decode_cursor(params.cursor, len(keys))
        pairs = list(zip(keys, values, strict=True))
        if any(not isinstance(value, key.type.python_type) for key, value in pairs):
            raise unprocessable("the cursor is not one this list handed out", "invalid-cursor")
        bound = tuple_(*[bindparam(None, value, type_=key.type) for key, value in pairs])
        columns = tuple_(*keys)
        stmt = stmt.where(columns < bound if descending else columns > bound)
    ordering = [key.desc() if descending else key.asc() for key in keys]
    rows = list(session.scalars(stmt.order_by(*ordering).limit(params.limit + 1)))
    if len(rows) <= params.limit:
        return rows, None
    rows = rows[: params.limit]
    last = rows[-1]
    return rows, encode_cursor([getattr(last, key.key) for key in keys])
