"""
Griffe extensions for the API reference, so that the package's Sphinx-style docstrings read well in MkDocs.

- ``PydanticInit``: a pydantic model's fields become its ``__init__`` signature. Pydantic generates
  ``__init__`` at run time, so static analysis sees no parameters, and every ``:param:`` of a model's docstring
  (models.py documents each field that way) is an "unknown parameter" in a strict build.
- ``SphinxMarkup``: the reST a Markdown renderer does not know, ``.. code-block:: python`` blocks and roles
  such as ``:meth:`close```, become a fenced block and a code span.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|exc|data|obj):`(~?)([^`]+)`")
CODE_BLOCK = re.compile(
    r"^(?P<indent>[ ]*)\.\. code-block:: (?P<lang>\w+)\n\n(?P<body>(?:(?P=indent)[ ]+.*\n|\n)+)", re.MULTILINE
)


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


def _role(match: re.Match[str]) -> str:
    target = match[2]
    return f"`{target.rsplit('.', 1)[-1] if match[1] else target}`"


def _code_block(match: re.Match[str]) -> str:
    indent = match["indent"]
    body = textwrap.dedent(match["body"]).strip("\n")
    return f"{indent}```{match['lang']}\n" + textwrap.indent(body, indent) + f"\n{indent}```\n\n"


class SphinxMarkup(griffe.Extension):
    """Turn reST code blocks and cross-reference roles into Markdown, in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the object's docstring text before it is parsed."""
        if obj.docstring is not None:
            value = CODE_BLOCK.sub(_code_block, obj.docstring.value + "\n")
            obj.docstring.value = ROLE.sub(_role, value).rstrip("\n")
