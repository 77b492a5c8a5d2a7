"""The data every target decides on: one policy's parameters, identical in the OPA bundle's data and in
the Gatekeeper Constraints, so both targets decide alike by construction.
"""

from __future__ import annotations

from typing import Any

from nauthera.compile.model import Policy
from nauthera.compile.patterns import PatternSet


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
        "require_par": policy.require_par,
        "redirects": {
            "require_https": policy.redirects.require_https,
            "allow_loopback": policy.redirects.allow_loopback,
            "forbid_wildcards": policy.redirects.forbid_wildcards,
            "allow_private_use_schemes": policy.redirects.allow_private_use_schemes,
            "forbid_fragments": policy.redirects.forbid_fragments,
        },
    }
    optional_lists = {
        "allowed_grant_types": policy.allowed_grant_types,
        "required_scopes": policy.required_scopes,
        "allowed_response_types": policy.allowed_response_types,
        "allowed_auth_methods": policy.allowed_auth_methods,
        "sender_constrained_tokens": policy.sender_constrained_tokens,
        "allowed_signing_algorithms": policy.allowed_signing_algorithms,
    }
    params.update({key: list(value) for key, value in optional_lists.items() if value is not None})
    if policy.allowed_scopes is not None:
        params["allowed_scopes"] = _patterns(policy.allowed_scopes)
    if policy.redirects.allowed_hosts is not None:
        params["redirects"]["allowed_hosts"] = _patterns(policy.redirects.allowed_hosts)
    if policy.redirects.allowed_schemes is not None:
        params["redirects"]["allowed_schemes"] = _patterns(policy.redirects.allowed_schemes)
    if labels := policy.baseline_labels():
        # How findings name the baseline behind a constraint ("baseline oauth2.1"), by SPEC path.
        params["baselines"] = labels
    return params
