"""Domain errors: a rule of the domain refused an operation.

The services raise them whoever calls (an endpoint, a worker); a worker catches the class it can act on
(e.g. `AliasMoved` at promotion) and never looks at HTTP. The API answers each as RFC 9457
problem+json with the status and type its class declares (app.errors installs the handler), so an
endpoint need not translate them.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """Base of the domain's refusals; a subclass names its problem type and HTTP status."""

    status: ClassVar[int] = 409
    title: ClassVar[str] = "Conflict"
    type_suffix: ClassVar[str] = "conflict"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions
