"""Rego source from templates: one Jinja2 environment (StrictUndefined) and one literal serializer.

Policy values reach Rego only as data. Where a template must embed a value, `rego_literal` is the one
serializer allowed to do it: JSON is a subset of Rego's term syntax, so a JSON literal cannot escape.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jinja2


def rego_literal(value: Any) -> str:
    """The only way a value may enter generated Rego source."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(", ", ": "))


@cache
def environment() -> jinja2.Environment:
    folder = resources.files("nauthera").joinpath("rego_templates")
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: folder.joinpath(name).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined,
        # Rego set comprehensions start with `{{`, so template variables are written ${ name }.
        variable_start_string="${",
        variable_end_string="}",
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["rego_literal"] = rego_literal
    return env


def render_template(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)
