"""Overrides of a settings dataclass, as a model's policy stores them.

A policy keeps only the settings an operator changed, so a later change of a default reaches every model
that kept it; `overrides_model(Settings)` accepts any subset of the dataclass's fields with their types and
refuses any other key, and `apply_overrides` builds the dataclass from what was set. A dataclass field's
`metadata` holds its pydantic constraints and description (ge, le, description, ...): the bounds an
operator or a client may set live beside the setting.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

Settings = TypeVar("Settings")


def overrides_model(settings: type[Any]) -> type[BaseModel]:
    hints = get_type_hints(settings)
    fields: dict[str, Any] = {
        field.name: (hints[field.name], Field(_default(field), **dict(field.metadata)))
        for field in dataclasses.fields(settings)
    }
    return create_model(
        f"{settings.__name__}Overrides",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=f"Any of {settings.__name__}'s settings; unset ones keep their defaults.",
        __module__=settings.__module__,
        **fields,
    )


def apply_overrides(settings: type[Settings], overrides: BaseModel | None) -> Settings:
    return settings(**(overrides.model_dump(exclude_unset=True) if overrides is not None else {}))


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return ...  # required
