"""`NumbersNotBooleans`: config and rule models in which `true` is not a number.

JSON and YAML booleans are ints to Python and to pydantic's lax mode, so `check_every_s: true` was read as 1.0 and
`frames: true` as 1. A number field given a boolean is refused here, naming the key; strings that spell numbers
(environment overrides, quoted YAML) are still read as before.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

__all__ = ["NumbersNotBooleans", "Section", "is_number_type"]

_NUMBERS = (int, float)


def is_number_type(annotation: Any) -> bool:
    """True for int, float and their optional forms (`float | None`); bool itself is not a number type here."""
    if annotation in _NUMBERS:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(arg in _NUMBERS for arg in typing.get_args(annotation))
    return False


class NumbersNotBooleans(BaseModel):
    """Base of the config sections and of `RuleConfig`: a boolean given for a number field is a validation error."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and is_number_type(field.annotation):
                raise ValueError("must be a number, not a boolean")
        return value


class Section(NumbersNotBooleans):
    """Base of a config section: unknown keys refused, each field's docstring its documentation, assignments checked."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)
