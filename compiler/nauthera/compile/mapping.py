"""How a client described elsewhere becomes an AuthClient: the vocabulary and rules mappers share (SPEC §9).

RFC 7591 client metadata is mapped in two languages: here (`metadata_spec`, used by the DCR importer
and by the generated fixtures) and in the bundle's registration decision (`registration.rego.j2`),
which receives every table below through `rego_literal`. A new member is one row that both follow; the
rules (application type, scopes, names) are written once per language and the tests feed the same
requests to both and compare the AuthClients they make. The Keycloak importer shares the
application-type rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from nauthera.compile.kubernetes import MAX_NAME, MAX_NAMESPACE

#: Where an imported AuthClient keeps the identifier its source knew it by.
SOURCE_ID_ANNOTATION = "auth.nauthera.io/source-client-id"
#: The namespace of DCR clients when none is given.
DEFAULT_NAMESPACE = "default"
#: The name of a registration request that has neither `client_name` nor `client_id`.
UNNAMED_CLIENT = "unnamed-client"
#: Hex digits of SHA-256 that tell apart names that sanitise alike, or stand in for names that sanitise
#: to nothing (`client-<hash>`, `ns-<hash>`).
HASH_LENGTH = 8
NAME_FALLBACK_PREFIX = "client"
NAMESPACE_FALLBACK_PREFIX = "ns"

DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

#: RFC 7591 / OpenID Connect registration members copied unchanged into the AuthClient spec field
#: they name; the AuthClient schema then judges their values (a wrong type fails closed).
COPIED_MEMBERS: dict[str, str] = {
    "client_name": "displayName",
    "grant_types": "grantTypes",
    "redirect_uris": "redirectUris",
    "response_types": "responseTypes",
    "token_endpoint_auth_method": "tokenEndpointAuthMethod",
    # SPEC §10: RFC 9449, RFC 8705, RFC 9126 and OpenID Connect registration members.
    "dpop_bound_access_tokens": "dpopBoundAccessTokens",
    "tls_client_certificate_bound_access_tokens": "tlsClientCertificateBoundAccessTokens",
    "require_pushed_authorization_requests": "requirePushedAuthorizationRequests",
    "token_endpoint_auth_signing_alg": "tokenEndpointAuthSigningAlg",
    "id_token_signed_response_alg": "idTokenSignedResponseAlg",
}
#: RFC 7591 section 2's defaults for members a request leaves out.
MEMBER_DEFAULTS: dict[str, Any] = {
    "grant_types": ["authorization_code"],
    "response_types": ["code"],
    "token_endpoint_auth_method": "client_secret_basic",
}
#: Extension members for PKCE (RFC 7591 has none): `require_pkce` (default false) and
#: `code_challenge_method` (default S256) become `pkce.required` and `pkce.method`.
PKCE_MEMBERS: dict[str, tuple[str, Any]] = {
    "require_pkce": ("required", False),
    "code_challenge_method": ("method", "S256"),
}
#: `scope` is one space-separated string; it becomes the `scopes` list.
SCOPE_MEMBER = "scope"
APPLICATION_TYPE_MEMBER = "application_type"
#: OpenID Connect's `application_type`: these values leave the type to be inferred (OIDC's "web"
#: covers browser apps too); any other value is the AuthClient applicationType as given.
INFERRED_APPLICATION_TYPES: tuple[str, ...] = ("web",)

#: A public client is `native` when a redirect URI leaves these schemes or points at a loopback host.
WEB_SCHEMES: tuple[str, ...] = ("http", "https")
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "[::1]")
#: Grants in which a user takes part; a confidential client with client_credentials and none of
#: these is a `service`.
USER_GRANTS: tuple[str, ...] = ("authorization_code", "implicit", "password", DEVICE_CODE)
SERVICE_GRANT = "client_credentials"
#: The token endpoint auth method of public clients.
PUBLIC_AUTH_METHOD = "none"


#: The URI grammar of the bundle's checks (`uri_pattern` in checks.rego.j2; a test holds them equal):
#: scheme, then an optional authority with the host in group 2.
URI_PATTERN = re.compile(
    r"^([A-Za-z][A-Za-z0-9+.\-]*):"
    r"(?://(?:[^/?#@]*@)?(\[[^\]/?#@]*\]|[^:/?#@\[\]]*)(?::([0-9]*))?)?"
    r"([/?#](?s:.*))?$"
)


#: Any URI's scheme, including those without an authority or path (`urn:ietf:wg:oauth:2.0:oob`).
SCHEME_PATTERN = r"^([A-Za-z][A-Za-z0-9+.\-]*):"


def native_redirect(uri: Any) -> bool:
    """A redirect URI only a native app uses: a scheme other than http(s), or a loopback host."""
    if not isinstance(uri, str):
        return False
    scheme = re.match(SCHEME_PATTERN, uri)
    if scheme is not None and scheme.group(1).lower() not in WEB_SCHEMES:
        return True
    parts = URI_PATTERN.fullmatch(uri)
    return parts is not None and (parts.group(2) or "").lower() in LOOPBACK_HOSTS


def application_type(public: bool, grants: Any, redirect_uris: Any) -> str:
    """SPEC §9's inference: public → native or spa by redirect URIs; machine-only grants → service."""
    uris = redirect_uris if isinstance(redirect_uris, list) else []
    if public:
        return "native" if any(native_redirect(uri) for uri in uris) else "spa"
    granted = grants if isinstance(grants, list) else []
    if SERVICE_GRANT in granted and not any(grant in USER_GRANTS for grant in granted):
        return "service"
    return "web"


def unique(values: Iterable[Any]) -> list[Any]:
    """The values in their first order, each once (AuthClient lists are sets)."""
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _scopes(value: Any) -> list[Any]:
    """`scope` is one space-separated string; anything else fails the schema as a one-item list."""
    if not isinstance(value, str):
        return [value]
    return unique(part for part in value.split(" ") if part)


def _application_type(metadata: dict[str, Any]) -> Any:
    declared = metadata.get(APPLICATION_TYPE_MEMBER)
    if APPLICATION_TYPE_MEMBER in metadata and declared not in INFERRED_APPLICATION_TYPES:
        return declared
    public = metadata["token_endpoint_auth_method"] == PUBLIC_AUTH_METHOD
    return application_type(public, metadata["grant_types"], metadata.get("redirect_uris"))


def metadata_spec(request: dict[str, Any]) -> dict[str, Any]:
    """The AuthClient spec for one metadata object: null members are absent, RFC defaults apply."""
    metadata = {**MEMBER_DEFAULTS, **{k: v for k, v in request.items() if v is not None}}
    spec = {field: metadata[member] for member, field in COPIED_MEMBERS.items() if member in metadata}
    spec["applicationType"] = _application_type(metadata)
    if SCOPE_MEMBER in metadata:
        spec["scopes"] = _scopes(metadata[SCOPE_MEMBER])
    spec["pkce"] = {field: metadata.get(member, default) for member, (field, default) in PKCE_MEMBERS.items()}
    return spec


def registration_vocabulary() -> dict[str, Any]:
    """Every table above, by the name the registration template uses for it."""
    return {
        "source_id_annotation": SOURCE_ID_ANNOTATION,
        "default_namespace": DEFAULT_NAMESPACE,
        "unnamed_client": UNNAMED_CLIENT,
        "hash_length": HASH_LENGTH,
        "max_name": MAX_NAME,
        "max_namespace": MAX_NAMESPACE,
        "name_fallback_prefix": NAME_FALLBACK_PREFIX,
        "namespace_fallback_prefix": NAMESPACE_FALLBACK_PREFIX,
        "copied_members": COPIED_MEMBERS,
        "member_defaults": MEMBER_DEFAULTS,
        "pkce_members": {member: list(row) for member, row in PKCE_MEMBERS.items()},
        "scope_member": SCOPE_MEMBER,
        "inferred_application_types": list(INFERRED_APPLICATION_TYPES),
        "scheme_pattern": SCHEME_PATTERN,
        "web_schemes": list(WEB_SCHEMES),
        "loopback_hosts": list(LOOPBACK_HOSTS),
        "user_grants": list(USER_GRANTS),
        "service_grant": SERVICE_GRANT,
        "public_auth_method": PUBLIC_AUTH_METHOD,
    }
