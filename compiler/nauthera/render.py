"""Render stage: policies become data (parameters and a lookup index) and Rego modules from templates.

Policy values reach Rego only as data. Where a template must embed a value, `rego_literal` is the one
serializer allowed to do it: JSON is a subset of Rego's term syntax, so a JSON literal cannot escape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jinja2

from nauthera.model import Policy
from nauthera.patterns import PatternSet, literal_prefix
from nauthera.schema import client_json_schema

ANY_TYPE = "*"
OPA_LIB_PACKAGE = "nauthera.lib"


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


def _patterns(patterns: PatternSet) -> dict[str, Any]:
    return {
        "patterns": list(patterns.source),
        "exact": sorted(patterns.exact),
        "regexes": list(patterns.regexes),
    }


def _targets(policy: Policy) -> dict[str, Any]:
    t = policy.targets
    result: dict[str, Any] = {
        "match_labels": dict(t.match_labels),
        "match_expressions": [
            {"key": e.key, "operator": e.operator, "values": list(e.values)} for e in t.match_expressions
        ],
    }
    if t.application_types is not None:
        result["types"] = list(t.application_types)
    if t.namespaces is not None:
        result["namespaces"] = _patterns(t.namespaces)
    if t.excluded_namespaces is not None:
        result["excluded_namespaces"] = _patterns(t.excluded_namespaces)
    return result


def policy_parameters(policy: Policy) -> dict[str, Any]:
    """Everything the checks need about one policy; the OPA data and Gatekeeper parameters alike."""
    params: dict[str, Any] = {
        "id": policy.id,
        "action": policy.enforcement_action,
        "targets": _targets(policy),
        "token": {f"token.{t.field}": {"max_ns": t.max_ns, "max": t.max_text} for t in policy.token_limits},
        "enforce_pkce": policy.enforce_pkce,
        "redirects": {
            "require_https": policy.redirects.require_https,
            "allow_loopback": policy.redirects.allow_loopback,
            "forbid_wildcards": policy.redirects.forbid_wildcards,
        },
    }
    optional_lists = {
        "allowed_grant_types": policy.allowed_grant_types,
        "required_scopes": policy.required_scopes,
        "allowed_response_types": policy.allowed_response_types,
        "allowed_auth_methods": policy.allowed_auth_methods,
    }
    params.update({key: list(value) for key, value in optional_lists.items() if value is not None})
    if policy.allowed_scopes is not None:
        params["allowed_scopes"] = _patterns(policy.allowed_scopes)
    if policy.redirects.allowed_hosts is not None:
        params["redirects"]["allowed_hosts"] = _patterns(policy.redirects.allowed_hosts)
    return params


def _index_keys(policy: Policy) -> list[tuple[str, ...]]:
    """Where the decision looks this policy up: the most selective target dimension it sets."""
    t = policy.targets
    if t.namespaces is not None:
        return [("namespace_prefix", literal_prefix(p)) for p in t.namespaces.source]
    if t.match_labels:
        key, value = t.match_labels[0]
        return [("label", key, value)]
    for requirement in t.match_expressions:
        if requirement.operator == "In":
            return [("label", requirement.key, value) for value in requirement.values]
    return [("unindexed",)]


def build_index(policies: Sequence[Policy]) -> dict[str, Any]:
    """Buckets per application type ("*" for policies that target every type)."""
    index: dict[str, Any] = {}
    for policy in sorted(policies, key=lambda p: p.id):
        types = policy.targets.application_types
        for app_type in [ANY_TYPE] if types is None else types:
            bucket = index.setdefault(app_type, {"namespace_prefix": {}, "label": {}, "unindexed": []})
            for key in _index_keys(policy):
                if key[0] == "unindexed":
                    slot = bucket["unindexed"]
                elif key[0] == "label":
                    slot = bucket["label"].setdefault(key[1], {}).setdefault(key[2], [])
                else:
                    slot = bucket["namespace_prefix"].setdefault(key[1], [])
                if policy.id not in slot:
                    slot.append(policy.id)
    return index


@dataclass(frozen=True)
class RenderedOpa:
    """Files of the OPA target, by bundle path."""

    files: dict[str, bytes]


def render_opa(policies: Sequence[Policy], fail_closed: bool) -> RenderedOpa:
    data = {
        "policies": {p.id: policy_parameters(p) for p in policies},
        "index": build_index(policies),
        "schema": {"authclient": client_json_schema()},
        "settings": {"fail_closed": fail_closed},
    }
    context = {"lib_package": OPA_LIB_PACKAGE}
    files = {
        "nauthera/data.json": json.dumps(data, sort_keys=True, separators=(",", ":")).encode(),
        "nauthera/lib/checks.rego": render_template("checks.rego.j2", **context).encode(),
        "nauthera/authclient/decision.rego": render_template("authclient.rego.j2", **context).encode(),
        "nauthera/admission/review.rego": render_template("admission.rego.j2", **context).encode(),
    }
    return RenderedOpa(files)
