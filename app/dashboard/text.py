"""Technical text as the dashboard shows it: server paths shortened, values written out plainly."""

from __future__ import annotations

import json
import re
from typing import Any

# An absolute path of two or more parts (optionally a file:// URL): shown as "…/<last part>".
SERVER_PATH = re.compile(r"(?:file://)?(?:/[\w.@+-]+){2,}/?")
VALUE_CHARS = 120


def redact(text: str) -> str:
    """Technical text without server paths (each shortened to its last part)."""
    return SERVER_PATH.sub(lambda match: "…/" + match.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def plain_value(value: Any) -> str:
    """A recorded value in words: lists joined by commas, objects as compact JSON, no server paths,
    long text cut at VALUE_CHARS."""
    if isinstance(value, list | tuple):
        text = ", ".join(plain_value(item) for item in value)
    elif isinstance(value, dict):
        text = json.dumps(value, separators=(", ", ": "), default=str)
    else:
        text = str(value)
    text = redact(text)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"
