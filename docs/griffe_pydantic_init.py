"""
A griffe extension for the API reference: a pydantic model's fields become its ``__init__`` signature.

Pydantic generates ``__init__`` at run time, so static analysis sees no parameters, and every ``:param:`` of
a model's docstring (models.py documents each field that way) is an "unknown parameter" in a strict build.
"""

from __future__ import annotations

from typing import Any

import griffe


class PydanticInit(griffe.Extension):
    """Give each pydantic model without an ``__init__`` one whose keyword parameters are its fields."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        """Add the synthesized ``__init__`` once the class's members are known."""
        if "__init__" in cls.members or not any(str(base).endswith("BaseModel") for base in cls.bases):
            return
        parameters = griffe.Parameters(griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword))
        for name, member in cls.members.items():
            if name.startswith("_") or name == "model_config" or not member.is_attribute:
                continue
            if member.annotation is None:
                continue
            parameters.add(
                griffe.Parameter(
                    name, annotation=member.annotation, kind=griffe.ParameterKind.keyword_only, default=member.value
                )
            )
        cls.set_member("__init__", griffe.Function("__init__", parameters=parameters, parent=cls))
