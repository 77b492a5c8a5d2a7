"""Generated test fixtures: per policy, one compliant AuthClient and one violating client per constraint.

Fixtures only assert what the policy itself decides (its own findings), so they stay true whatever
other policies in the bundle also govern the client. Every target turns the same fixtures into its own
tests: data-driven Rego tests for OPA, gator suites for Gatekeeper.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from nauthera.compile.mapping import COPIED_MEMBERS, PKCE_MEMBERS, SCOPE_MEMBER, metadata_spec
from nauthera.compile.model import Policy
from nauthera.compile.schema import API_VERSION, load_schemas

COMPLIANT = "compliant"
SCHEMA = "schema"
_NOT_ALLOWED_SCOPE = "nauthera-fixture-not-allowed"
_NOT_ALLOWED_HOST = "nauthera-fixture.invalid"
_NOT_ALLOWED_SCHEME = "nauthera-fixture.invalid"
_PRIVATE_USE_SCHEME = "com.example.app"
_DEFAULT_ID_TOKEN_ALG = "RS256"
#: The AuthClient field that binds access tokens with each senderConstrainedTokens method.
_BINDING_FIELDS = {"dpop": "dpopBoundAccessTokens", "mtls": "tlsClientCertificateBoundAccessTokens"}


@dataclass(frozen=True)
class Fixture:
    name: str
    policy: str | None
    expect: str
    client: dict[str, Any]


@dataclass(frozen=True)
class PolicyFixtures:
    """One policy's fixtures compactly: its compliant client, and per constraint the `spec` members a
    violating client replaces (whole values: a change never mutates the compliant client's)."""

    policy: str
    compliant: dict[str, Any]
    violations: tuple[tuple[str, dict[str, Any]], ...]

    def violating_client(self, change: dict[str, Any]) -> dict[str, Any]:
        base = self.compliant
        name = violating_name(base["metadata"]["name"])
        return {**base, "metadata": {**base["metadata"], "name": name}, "spec": {**base["spec"], **change}}

    def fixtures(self) -> list[Fixture]:
        compliant = Fixture(f"{self.policy}: compliant client", self.policy, COMPLIANT, self.compliant)
        return [
            compliant,
            *(
                Fixture(f"{self.policy}: violates {field}", self.policy, field, self.violating_client(change))
                for field, change in self.violations
            ),
        ]


def violating_name(compliant_name: str) -> str:
    return f"{compliant_name}-bad"[:253]


def registration_request(fixture: Fixture) -> dict[str, Any] | None:
    """The fixture as an RFC 7591 registration request for `data.nauthera.registration.decision`.

    None when RFC 7591 metadata cannot say what the fixture's client says: token lifetimes (a compliant
    client may leave them out, which the maxima then allow), or a spec that the registration mapping
    would not give back exactly. The malformed fixture stays malformed as metadata.
    """
    if fixture.expect.startswith("token."):
        return None
    spec, metadata = fixture.client["spec"], fixture.client["metadata"]
    fields = {field: member for member, field in COPIED_MEMBERS.items()}
    client_metadata: dict[str, Any] = {"client_id": metadata["name"]}
    client_metadata.update({fields[key]: value for key, value in spec.items() if key in fields})
    if "applicationType" in spec:
        client_metadata["application_type"] = spec["applicationType"]
    if "scopes" in spec:
        client_metadata[SCOPE_MEMBER] = " ".join(spec["scopes"])
    for member, (field, _default) in PKCE_MEMBERS.items():
        if field in spec.get("pkce", {}):
            client_metadata[member] = spec["pkce"][field]
    expected = {key: value for key, value in spec.items() if key != "token"}
    if fixture.expect != SCHEMA and metadata_spec(client_metadata) != expected:
        return None
    request: dict[str, Any] = {"namespace": metadata["namespace"], "client_metadata": client_metadata}
    if metadata.get("labels"):
        request["labels"] = metadata["labels"]
    return request


def _client_enum(*path: str) -> list[str]:
    node: Any = load_schemas()["AuthClient"].openapi
    for key in path:
        node = node["properties"][key] if key != "[]" else node["items"]
    return list(node["enum"])


def _namespace(policy: Policy) -> str | None:
    t = policy.targets
    candidates = [p.replace("*", "x") for p in t.namespaces.source] if t.namespaces else ["nauthera-fixture"]
    for namespace in candidates:
        if t.excluded_namespaces is None or not t.excluded_namespaces.matches(namespace):
            return namespace
    return None


def _labels(policy: Policy) -> dict[str, str] | None:
    labels = dict(policy.targets.match_labels)
    for requirement in policy.targets.match_expressions:
        present = labels.get(requirement.key)
        if requirement.operator == "In" and present is None:
            labels[requirement.key] = requirement.values[0]
        elif requirement.operator == "Exists" and present is None:
            labels[requirement.key] = "fixture"
    for requirement in policy.targets.match_expressions:
        present = labels.get(requirement.key)
        holds = {
            "In": present in requirement.values,
            "NotIn": present not in requirement.values,
            "Exists": present is not None,
            "DoesNotExist": present is None,
        }[requirement.operator]
        if not holds:
            return None
    return labels


def _host(policy: Policy) -> str:
    hosts = policy.redirects.allowed_hosts
    return hosts.source[0].replace("*", "app") if hosts else "app.example.com"


def _private_use_scheme(policy: Policy) -> str | None:
    """A private-use scheme the policy's allowedSchemes accept (RFC 8252 7.1), or None if none is found."""
    schemes = policy.redirects.allowed_schemes
    candidates = [s.replace("*", "app") for s in schemes.source] if schemes else [_PRIVATE_USE_SCHEME]
    return next((s for s in candidates if "." in s and s not in ("http", "https")), None)


def _exempt_uris(policy: Policy, app_type: str) -> list[str]:
    """A private-use redirect URI for a native client the policy exempts, so the compliant client shows
    the exemption holds (it would otherwise break requireHttps or allowedHosts)."""
    scheme = _private_use_scheme(policy)
    if app_type != "native" or not policy.redirects.allow_private_use_schemes or scheme is None:
        return []
    return [f"{scheme}:/callback"]


def _app_type(policy: Policy) -> str:
    """The targeted type; native where the policy relaxes anything for native clients and allows it."""
    types = policy.targets.application_types
    if policy.redirects.allow_private_use_schemes and (types is None or "native" in types):
        return "native"
    return types[0] if types else "web"


def _first(values: Sequence[str] | None, preferred: str) -> list[str]:
    if values is None or preferred in values:
        return [preferred]
    return list(values[:1])


def compliant_client(policy: Policy) -> dict[str, Any] | None:
    """A client this policy targets and accepts, or None when the policy can't be satisfied."""
    t = policy.targets
    namespace, labels = _namespace(policy), _labels(policy)
    if namespace is None or labels is None or t.application_types == ():
        return None
    app_type = _app_type(policy)
    scopes = list(policy.required_scopes or ())
    if policy.allowed_scopes is not None and not all(policy.allowed_scopes.matches(s) for s in scopes):
        return None
    auth_methods = policy.allowed_auth_methods
    if auth_methods == ():
        return None
    algorithms = policy.allowed_signing_algorithms
    if algorithms == ():
        return None
    default_method = "none" if app_type in ("spa", "native") else "client_secret_basic"
    spec: dict[str, Any] = {
        "applicationType": app_type,
        "redirectUris": [f"https://{_host(policy)}/callback", *_exempt_uris(policy, app_type)],
        "grantTypes": _first(policy.allowed_grant_types, "authorization_code"),
        "responseTypes": _first(policy.allowed_response_types, "code"),
        "scopes": scopes,
        "tokenEndpointAuthMethod": _first(auth_methods, default_method)[0],
        "pkce": {"required": True, "method": "S256"},
        "token": {limit.field: limit.max_text for limit in policy.token_limits},
    }
    if policy.sender_constrained_tokens:
        binding = "dpop" if "dpop" in policy.sender_constrained_tokens else "mtls"
        spec[_BINDING_FIELDS[binding]] = True
    if policy.require_par:
        spec["requirePushedAuthorizationRequests"] = True
    if algorithms is not None and _DEFAULT_ID_TOKEN_ALG not in algorithms:
        spec["idTokenSignedResponseAlg"] = algorithms[0]
    metadata: dict[str, Any] = {"name": f"fixture-{policy.name}"[:253], "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": API_VERSION, "kind": "AuthClient", "metadata": metadata, "spec": spec}


def _first_missing(candidates: Sequence[str], present: Sequence[str]) -> str | None:
    return next((c for c in candidates if c not in present), None)


def _violations(policy: Policy, base: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field, spec change) pairs, one per constraint the policy sets and a client can break."""
    spec = base["spec"]
    for limit in policy.token_limits:
        yield f"token.{limit.field}", {"token": {**spec["token"], limit.field: f"{limit.max_ns + 1}ns"}}
    if policy.allowed_grant_types is not None:
        grant = _first_missing(_client_enum("spec", "grantTypes", "[]"), policy.allowed_grant_types)
        if grant:
            yield "allowedGrantTypes", {"grantTypes": [*spec["grantTypes"], grant]}
    if policy.enforce_pkce:
        yield (
            "enforcePKCE",
            {"grantTypes": ["authorization_code"], "pkce": {"required": False, "method": "S256"}},
        )
    if policy.allowed_scopes is not None and not policy.allowed_scopes.matches(_NOT_ALLOWED_SCOPE):
        yield "allowedScopes", {"scopes": [*spec["scopes"], _NOT_ALLOWED_SCOPE]}
    if policy.required_scopes:
        yield "requiredScopes", {"scopes": [s for s in spec["scopes"] if s != policy.required_scopes[0]]}
    if policy.allowed_response_types is not None:
        response = _first_missing(
            ["code", "token", "id_token", "none", "code id_token"], policy.allowed_response_types
        )
        if response:
            yield "allowedResponseTypes", {"responseTypes": [response]}
    if policy.allowed_auth_methods is not None:
        method = _first_missing(_client_enum("spec", "tokenEndpointAuthMethod"), policy.allowed_auth_methods)
        if method:
            yield "allowedTokenEndpointAuthMethods", {"tokenEndpointAuthMethod": method}
    yield from _redirect_violations(policy)
    yield from _binding_violations(policy)


def _redirect_violations(policy: Policy) -> Iterator[tuple[str, dict[str, Any]]]:
    host = _host(policy)
    if policy.redirects.require_https:
        yield "redirectUris.requireHttps", {"redirectUris": [f"http://{host}/callback"]}
    if policy.redirects.forbid_wildcards:
        yield "redirectUris.allowWildcards", {"redirectUris": [f"https://{host}/*"]}
    hosts = policy.redirects.allowed_hosts
    if hosts is not None and not hosts.matches(_NOT_ALLOWED_HOST):
        yield "redirectUris.allowedHosts", {"redirectUris": [f"https://{_NOT_ALLOWED_HOST}/callback"]}
    schemes = policy.redirects.allowed_schemes
    if schemes is not None and not schemes.matches(_NOT_ALLOWED_SCHEME):
        yield "redirectUris.allowedSchemes", {"redirectUris": [f"{_NOT_ALLOWED_SCHEME}:/callback"]}
    if policy.redirects.forbid_fragments:
        yield "redirectUris.forbidFragments", {"redirectUris": [f"https://{host}/callback#fixture"]}


def _binding_violations(policy: Policy) -> Iterator[tuple[str, dict[str, Any]]]:
    """SPEC section 10's token binding, PAR and signing algorithm constraints."""
    if policy.sender_constrained_tokens:
        yield "senderConstrainedTokens", dict.fromkeys(_BINDING_FIELDS.values(), False)
    if policy.require_par:
        yield (
            "requirePushedAuthorizationRequests",
            {"grantTypes": ["authorization_code"], "requirePushedAuthorizationRequests": False},
        )
    if policy.allowed_signing_algorithms is not None:
        algorithm = _first_missing(
            _client_enum("spec", "idTokenSignedResponseAlg"), policy.allowed_signing_algorithms
        )
        if algorithm:
            yield "allowedSigningAlgorithms", {"idTokenSignedResponseAlg": algorithm}


def policy_fixture_set(policy: Policy) -> PolicyFixtures | None:
    """The policy's fixtures, or None when no client can satisfy it."""
    base = compliant_client(policy)
    if base is None:
        return None
    return PolicyFixtures(policy.id, base, tuple(_violations(policy, base)))


def policy_fixtures(policy: Policy) -> list[Fixture]:
    found = policy_fixture_set(policy)
    return [] if found is None else found.fixtures()


def schema_fixture() -> Fixture:
    client = {
        "apiVersion": API_VERSION,
        "kind": "AuthClient",
        "metadata": {"name": "fixture-malformed", "namespace": "nauthera-fixture"},
        "spec": {"grantTypes": "authorization_code"},
    }
    return Fixture("malformed client fails closed", None, SCHEMA, client)
