"""Model stage: validated AuthPolicy documents become frozen, normalised policies.

Durations are nanoseconds, globs are compiled pattern sets, response types are order-insensitive, and
defaults are explicit, so later stages never re-interpret user text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nauthera.compile.baselines import (
    Constraint,
    effective_constraints,
    effective_spec,
    normalise_response_type,
)
from nauthera.compile.diagnostics import Position
from nauthera.compile.durations import parse_duration_ns
from nauthera.compile.loading import SourceDocument
from nauthera.compile.patterns import PatternSet, host_globs, scheme_globs, text_globs

TTL_FIELDS = ("accessTokenTTL", "refreshTokenTTL", "idTokenTTL")
ENFORCEMENT_ACTIONS = ("deny", "warn", "dryrun")


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
    allow_private_use_schemes: bool
    allowed_schemes: PatternSet | None
    forbid_fragments: bool


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
    sender_constrained_tokens: tuple[str, ...] | None
    require_par: bool
    allowed_signing_algorithms: tuple[str, ...] | None
    baselines: tuple[str, ...]
    #: Every constraint set, after baselines, with where it came from (SPEC order).
    constraints: tuple[Constraint, ...]

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def baseline_labels(self) -> dict[str, str]:
        """Per constraint path that a baseline decides, how its findings name the baseline."""
        return {c.path: c.baseline_label for c in self.constraints if c.baseline_label is not None}


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
    """Normalise one AuthPolicy that passed validation, its baselines merged into its constraints."""
    metadata, written = doc.content["metadata"], doc.content.get("spec") or {}
    baselines = tuple(written.get("baselines") or ())
    constraints = effective_constraints(written, baselines)
    spec = effective_spec(written, constraints)
    token = spec.get("token") or {}
    redirects = spec.get("redirectUris") or {}
    scopes = _strings(spec.get("allowedScopes"))
    hosts = _strings(redirects.get("allowedHosts"))
    schemes = _strings(redirects.get("allowedSchemes"))
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
            allow_private_use_schemes=bool(redirects.get("allowPrivateUseSchemes", False)),
            allowed_schemes=None if schemes is None else scheme_globs(schemes),
            forbid_fragments=bool(redirects.get("forbidFragments", False)),
        ),
        sender_constrained_tokens=_strings(spec.get("senderConstrainedTokens")),
        require_par=bool(spec.get("requirePushedAuthorizationRequests", False)),
        allowed_signing_algorithms=_strings(spec.get("allowedSigningAlgorithms")),
        baselines=baselines,
        constraints=constraints,
    )
