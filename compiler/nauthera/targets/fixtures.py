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
    app_type = t.application_types[0] if t.application_types else "web"
    scopes = list(policy.required_scopes or ())
    if policy.allowed_scopes is not None and not all(policy.allowed_scopes.matches(s) for s in scopes):
        return None
    auth_methods = policy.allowed_auth_methods
    if auth_methods == ():
        return None
    default_method = "none" if app_type in ("spa", "native") else "client_secret_basic"
    spec: dict[str, Any] = {
        "applicationType": app_type,
        "redirectUris": [f"https://{_host(policy)}/callback"],
        "grantTypes": _first(policy.allowed_grant_types, "authorization_code"),
        "responseTypes": _first(policy.allowed_response_types, "code"),
        "scopes": scopes,
        "tokenEndpointAuthMethod": _first(auth_methods, default_method)[0],
        "pkce": {"required": True, "method": "S256"},
        "token": {limit.field: limit.max_text for limit in policy.token_limits},
    }
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
    host = _host(policy)
    if policy.redirects.require_https:
        yield "redirectUris.requireHttps", {"redirectUris": [f"http://{host}/callback"]}
    if policy.redirects.forbid_wildcards:
        yield "redirectUris.allowWildcards", {"redirectUris": [f"https://{host}/*"]}
    hosts = policy.redirects.allowed_hosts
    if hosts is not None and not hosts.matches(_NOT_ALLOWED_HOST):
        yield "redirectUris.allowedHosts", {"redirectUris": [f"https://{_NOT_ALLOWED_HOST}/callback"]}


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
