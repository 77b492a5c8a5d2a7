"""Model stage: validated AuthPolicy documents become frozen, normalised policies.

Durations are nanoseconds, globs are compiled pattern sets, response types are order-insensitive, and
defaults are explicit, so later stages never re-interpret user text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nauthera.compile.diagnostics import Position
from nauthera.compile.durations import parse_duration_ns
from nauthera.compile.loading import SourceDocument
from nauthera.compile.patterns import PatternSet, host_globs, text_globs

TTL_FIELDS = ("accessTokenTTL", "refreshTokenTTL", "idTokenTTL")
ENFORCEMENT_ACTIONS = ("deny", "warn", "dryrun")


def normalise_response_type(value: str) -> str:
    """`id_token code` and `code id_token` are the same OAuth response type."""
    return " ".join(sorted(set(value.split())))


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Targets:
    application_types: tuple[str, ...] | None
    namespaces: PatternSet | None
    excluded_namespaces: PatternSet | None
    match_labels: tuple[tuple[str, str], ...]
    match_expressions: tuple[LabelRequirement, ...]


@dataclass(frozen=True)
class TokenLimit:
    field: str
    max_ns: int
    max_text: str


@dataclass(frozen=True)
class RedirectRules:
    require_https: bool
    allow_loopback: bool
    forbid_wildcards: bool
    allowed_hosts: PatternSet | None


@dataclass(frozen=True)
class Policy:
    """One AuthPolicy, normalised. `None` means the constraint is not set and constrains nothing."""

    namespace: str
    name: str
    position: Position
    enforcement_action: str
    targets: Targets
    token_limits: tuple[TokenLimit, ...]
    allowed_grant_types: tuple[str, ...] | None
    enforce_pkce: bool
    allowed_scopes: PatternSet | None
    required_scopes: tuple[str, ...] | None
    allowed_response_types: tuple[str, ...] | None
    allowed_auth_methods: tuple[str, ...] | None
    redirects: RedirectRules

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


def _strings(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _targets(spec: Mapping[str, Any]) -> Targets:
    targets = spec.get("targets") or {}
    selector = targets.get("clientSelector") or {}
    namespaces = _strings(targets.get("namespaces"))
    excluded = _strings(targets.get("excludedNamespaces"))
    return Targets(
        application_types=_strings(targets.get("applicationTypes")),
        namespaces=None if namespaces is None else text_globs(namespaces),
        excluded_namespaces=None if excluded is None else text_globs(excluded),
        match_labels=tuple(sorted((selector.get("matchLabels") or {}).items())),
        match_expressions=tuple(
            LabelRequirement(e["key"], e["operator"], tuple(e.get("values") or ()))
            for e in selector.get("matchExpressions") or ()
        ),
    )


def build_policy(doc: SourceDocument) -> Policy:
    """Normalise one AuthPolicy that passed validation."""
    metadata, spec = doc.content["metadata"], doc.content.get("spec") or {}
    token = spec.get("token") or {}
    redirects = spec.get("redirectUris") or {}
    scopes = _strings(spec.get("allowedScopes"))
    hosts = _strings(redirects.get("allowedHosts"))
    response_types = _strings(spec.get("allowedResponseTypes"))
    return Policy(
        namespace=metadata["namespace"],
        name=metadata["name"],
        position=doc.start,
        enforcement_action=spec.get("enforcementAction", "deny"),
        targets=_targets(spec),
        token_limits=tuple(
            TokenLimit(field, parse_duration_ns(token[field]), token[field])
            for field in TTL_FIELDS
            if field in token
        ),
        allowed_grant_types=_strings(spec.get("allowedGrantTypes")),
        enforce_pkce=bool(spec.get("enforcePKCE", False)),
        allowed_scopes=None if scopes is None else text_globs(scopes),
        required_scopes=_strings(spec.get("requiredScopes")),
        allowed_response_types=None
        if response_types is None
        else tuple(dict.fromkeys(normalise_response_type(r) for r in response_types)),
        allowed_auth_methods=_strings(spec.get("allowedTokenEndpointAuthMethods")),
        redirects=RedirectRules(
            require_https=bool(redirects.get("requireHttps", False)),
            allow_loopback=bool(redirects.get("allowLoopback", False)),
            forbid_wildcards=redirects.get("allowWildcards") is False,
            allowed_hosts=None if hosts is None else host_globs(hosts),
        ),
    )
