"""The input rule of the whole API, checked once per request (`enforce_input_rule`) before the route's
own dependencies and handler run.

Refused, as a 422 problem naming the field:
- in every string (JSON bodies, NDJSON lines, path and query parameters, object keys included): control
  characters that mean nothing there (C0 but tab, line feed and carriage return; DEL; C1) and lone
  surrogates, which have no UTF-8 form. Path and query parameters (ids, names, filters) refuse tab,
  line feed and carriage return too. The database cannot store NUL at all, and the others are never data;
- numbers that are not finite (`NaN`, `Infinity`, or a literal such as `1e400` that overflows);
- integers outside int64, the widest integer column (path and query parameters declared as integers
  included). Fields stored in narrower columns say so with `Int32` below.

Bodies are first scanned as bytes for anything that could break the rule (escapes of control characters,
surrogates, NaN or Infinity, long digit runs, large exponents); only a body with such a hit is parsed and
walked to find the field, so a clean body costs a few substring searches (for a batch of samples, about
a third of what parsing it costs).
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import Field

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# An integer field stored in a 32-bit column (version numbers): past it, the database would refuse it.
Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
# A model's version numbers: 1, 2, ... per model (a 32-bit column).
VersionNumber = Annotated[int, Field(ge=1, le=INT32_MAX)]
JSON_MEDIA_TYPES = frozenset({"application/json", ""})  # FastAPI reads a body without a type as JSON
NDJSON_MEDIA_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})

# C0 controls but tab, LF, CR; DEL and the C1 controls; surrogate code points (only ever lone in a str).
_REFUSED_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_REFUSED_IN_PARAMETER = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# A parameter with 19 or more digits in a row may be an integer past int64.
_LONG_DIGIT_RUN = re.compile(r"\d{19}")
# What a body must contain, as bytes, for one of its values to break the rule. Each check is a substring
# search (a regular expression runs only where its first byte occurs): a hit only means "parse and
# look", but a body without one cannot break the rule.
# JSON strings carry control characters and surrogates only as escapes (raw C0 is not JSON), but DEL and
# the C1 controls may also come raw (UTF-8 C2 80-9F).
_SUSPECT_ESCAPE = re.compile(rb"\\(?:u00[01][0-9a-fA-F]|u00[7-9][0-9a-fA-F]|[bf]|u[dD][89a-fA-F])")
_RAW_C1 = re.compile(rb"\xc2[\x80-\x9f]")
# Literal patterns: the regular expression engine searches for them faster than `in` does.
_NAN, _INFINITY = re.compile(rb"NaN"), re.compile(rb"Infinity")
# Numbers: digits become "1", e/E "e", every other byte but "+" a ".", so that a long digit run (an
# integer past int64 has 19 or more) and a 3-digit positive exponent are substrings to look for.
_NUMBER_CLASSES = bytes(
    ord("1")
    if 0x30 <= byte <= 0x39
    else ord("e")
    if byte in b"eE"
    else byte
    if byte == ord("+")
    else ord(".")
    for byte in range(256)
)
_DIGIT_RUN = b"1" * 19
# With at most 18 digits before it (a longer run is suspect anyway), a literal overflows a double only
# when its exponent reaches 309 - 18.
_OVERFLOWING_EXPONENT = 290
# What may come right before a digit of a number literal: more of the literal, or a JSON delimiter.
_IN_LITERAL, _DELIMITER = 1, 2
_BEFORE_DIGIT = bytes(
    _IN_LITERAL if byte in b"0123456789.-" else _DELIMITER if byte in b":,[ \t\r\n" else 0
    for byte in range(256)
)


def _may_break_rule(body: bytes) -> bool:
    if b"\x00" in body:  # UTF-16 or UTF-32 JSON (which json.loads reads too): the scans below are UTF-8
        return True
    if b"\\" in body and _SUSPECT_ESCAPE.search(body):
        return True
    if (b"\xc2" in body and _RAW_C1.search(body)) or b"\x7f" in body:
        return True
    if _NAN.search(body) or _INFINITY.search(body):
        return True
    classes = body.translate(_NUMBER_CLASSES)
    if _DIGIT_RUN in classes or _overflowing_literal(body, classes, b"1e111"):
        return True
    return b"+" in body and _overflowing_literal(body, classes, b"1e+111")


def _overflowing_literal(body: bytes, classes: bytes, marker: bytes) -> bool:
    """Whether a number literal with a 3-digit exponent (`marker` in `classes`) is large enough to
    overflow; digits inside strings (hex ids) are passed over, as a literal follows a JSON delimiter."""
    at = classes.find(marker)
    while at != -1:
        start = at
        while start and _BEFORE_DIGIT[body[start - 1]] == _IN_LITERAL:
            start -= 1
        if not start or _BEFORE_DIGIT[body[start - 1]] == _DELIMITER:
            exponent_at = end = at + len(marker) - 3
            while end < len(classes) and classes[end] == ord("1"):
                end += 1
            if int(body[exponent_at:end]) >= _OVERFLOWING_EXPONENT:
                return True
        at = classes.find(marker, at + 1)
    return False


Problem = dict[str, Any]
Location = tuple[str | int, ...]


def _problem(loc: Location, msg: str, kind: str) -> Problem:
    return {"loc": list(loc), "msg": msg, "type": kind}


def _character_problem(loc: Location, found: str, what: str = "text") -> Problem:
    return _problem(
        loc,
        f"{what} must not contain control characters or lone surrogates (found U+{ord(found):04X})",
        "control_character",
    )


def json_problems(value: Any, loc: Location = ("body",), limit: int = 20) -> list[Problem]:
    """Where a parsed JSON value breaks the rule (at most `limit` places)."""
    problems: list[Problem] = []
    pending: list[tuple[Location, Any]] = [(loc, value)]  # iterative: any depth json.loads accepts
    while pending and len(problems) < limit:
        here, item = pending.pop()
        if isinstance(item, str):
            if found := _REFUSED_IN_TEXT.search(item):
                problems.append(_character_problem(here, found.group()))
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                problems.append(
                    _problem(here, "integers must lie between -2^63 and 2^63-1", "integer_out_of_range")
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append(
                    _problem(here, "numbers must be finite (no NaN or Infinity)", "finite_number")
                )
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if found := _REFUSED_IN_TEXT.search(key):
                    problems.append(_character_problem(here, found.group(), "object keys"))
                else:
                    pending.append(((*here, key), child))
        elif isinstance(item, list):
            pending.extend(((*here, index), child) for index, child in reversed(list(enumerate(item))))
    return problems


def _parsed(text: bytes) -> Any:
    """The JSON value, or None when it is not JSON (the handler answers that in its own words)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def body_problems(body: bytes, media_type: str) -> list[Problem]:
    """Where a JSON or NDJSON body breaks the rule; [] for other media types and clean bodies."""
    if media_type not in JSON_MEDIA_TYPES and media_type not in NDJSON_MEDIA_TYPES:
        return []
    if not _may_break_rule(body):
        return []
    if media_type in JSON_MEDIA_TYPES:
        return json_problems(_parsed(body))
    problems: list[Problem] = []
    for line_number, line in enumerate(body.splitlines()):  # numbered as the NDJSON parser numbers them
        if line.strip() and _may_break_rule(line):
            problems.extend(json_problems(_parsed(line), ("body", line_number)))
    return problems


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def parameter_problems(request: Request) -> list[Problem]:
    """Where the matched route's path parameters or the query string break the rule."""
    named = [("path", name, str(value)) for name, value in request.path_params.items()]
    named += [("query", name, value) for name, value in request.query_params.multi_items()]
    if not any(_REFUSED_IN_PARAMETER.search(value) or _LONG_DIGIT_RUN.search(value) for *_, value in named):
        return []
    route = request.scope.get("route")
    integers = _integer_parameters(route) if isinstance(route, APIRoute) else set()
    problems: list[Problem] = []
    for location, name, value in named:
        if found := _REFUSED_IN_PARAMETER.search(value):
            problems.append(_character_problem((location, name), found.group(), "parameters"))
        elif (location, name) in integers and _outside_int64(value):
            problems.append(
                _problem(
                    (location, name), "integers must lie between -2^63 and 2^63-1", "integer_out_of_range"
                )
            )
    return problems


async def enforce_input_rule(request: Request) -> None:
    """The rule as a dependency of every route (FastAPI(dependencies=...)): raises the 422 of a
    request whose path, query or JSON/NDJSON body breaks it, before the route's own dependencies and
    handler run. The body read here is the one the handler reads (Starlette keeps it on the request)."""
    problems = parameter_problems(request)
    if not problems:
        problems = body_problems(await request.body(), _media_type(request))
    if problems:
        raise RequestValidationError(problems)


def _outside_int64(value: str) -> bool:
    try:
        number = int(value.strip())
    except ValueError:
        return False  # not an integer at all: the parameter's own validation answers
    return not INT64_MIN <= number <= INT64_MAX


def _integer_parameters(route: APIRoute) -> set[tuple[str, str]]:
    """(location, name) of the route's path and query parameters declared as integers (or lists of
    them), its dependencies' included. Only asked when a value looks like a long number."""
    return {
        (location, field.alias)
        for dependant in _dependants(route.dependant)
        for location, fields in (("path", dependant.path_params), ("query", dependant.query_params))
        for field in fields
        if _declares_int(field.field_info.annotation)
    }


def _dependants(dependant: Any) -> Iterator[Any]:
    yield dependant
    for child in dependant.dependencies:
        yield from _dependants(child)


def _declares_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        return any(_declares_int(argument) for argument in typing.get_args(annotation))
    return False
