"""`nauthera import keycloak`: Keycloak realm exports to AuthClients (SPEC §9), driven by tables.

Reads what Keycloak writes: a realm export (admin console Partial export, `kc.sh export`), the JSON list
of realms of the legacy single-file export, or one client (admin console Clients → Export). Each
`ClientRepresentation` maps through the tables below: flags and attributes → grant types, grant types →
response types, authenticator → auth method, attribute → spec field. A new Keycloak attribute is a row.
Absent booleans take the value Keycloak gives a new client; boolean attributes read as Keycloak reads
them (Java's `Boolean.parseBoolean`), with a note when a value is neither "true" nor "false".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nauthera.compile.diagnostics import Diagnostic, Level, Position
from nauthera.compile.loading import JsonPath
from nauthera.compile.mapping import DEVICE_CODE, PUBLIC_AUTH_METHOD, TOKEN_EXCHANGE, application_type, unique
from nauthera.importers.clients import ImportedClient, ImportResult, recognised
from nauthera.importers.jsoninput import JsonInput
from nauthera.importers.naming import namespace_for

OPENID_CONNECT = "openid-connect"
#: Clients every realm has (SPEC §9); `<realm>-realm` is added per realm.
BUILTIN_CLIENTS = (
    "account",
    "account-console",
    "admin-cli",
    "broker",
    "realm-management",
    "security-admin-console",
)
#: What Keycloak gives a new client for a boolean the representation leaves out.
FLAG_DEFAULTS: dict[str, bool] = {
    "bearerOnly": False,
    "publicClient": False,
    "standardFlowEnabled": True,
    "implicitFlowEnabled": False,
    "directAccessGrantsEnabled": False,
    "serviceAccountsEnabled": False,
}
#: Keycloak's SSO Session Max default, in seconds: how long an access token with lifespan -1 lives
#: when the export does not carry the realm's own `ssoSessionMaxLifespan`.
DEFAULT_SSO_SESSION_MAX = 36000


@dataclass(frozen=True)
class Switch:
    """What turns something on: a ClientRepresentation flag, or a boolean attribute with its default."""

    name: str
    attribute: bool = False
    default: bool = False


@dataclass(frozen=True)
class GrantRow:
    grant: str
    switch: Switch


#: Grant types in the order they are listed (SPEC §9, plus Keycloak 26.2's standard token exchange).
GRANT_ROWS: tuple[GrantRow, ...] = (
    GrantRow("authorization_code", Switch("standardFlowEnabled")),
    GrantRow("implicit", Switch("implicitFlowEnabled")),
    GrantRow("password", Switch("directAccessGrantsEnabled")),
    GrantRow("client_credentials", Switch("serviceAccountsEnabled")),
    GrantRow(DEVICE_CODE, Switch("oauth2.device.authorization.grant.enabled", attribute=True)),
    GrantRow(TOKEN_EXCHANGE, Switch("standard.token.exchange.enabled", attribute=True)),
)
#: refresh_token is added when one of these grants is on and this attribute reads true.
REFRESH_TOKEN_GRANTS = ("authorization_code", "password")
REFRESH_TOKEN_SWITCH = Switch("use.refresh.tokens", attribute=True, default=True)
#: Response types each combination of front-channel grants allows (OIDC Core 3: code, implicit, hybrid).
RESPONSE_TYPE_ROWS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("authorization_code",), ("code",)),
    (("implicit",), ("id_token", "id_token token")),
    (("authorization_code", "implicit"), ("code id_token", "code id_token token", "code token")),
)
#: clientAuthenticatorType → tokenEndpointAuthMethod for confidential clients (public ones use none).
AUTHENTICATORS: dict[str, str] = {
    "client-secret": "client_secret_basic",
    "client-jwt": "private_key_jwt",
    "client-secret-jwt": "client_secret_jwt",
    "client-x509": "tls_client_auth",
}
DEFAULT_AUTHENTICATOR = "client-secret"

#: Attributes Keycloak writes that no AuthClient field describes; read silently. (`saml.*`/`saml_*`
#: attributes are SAML settings.)
IGNORED_ATTRIBUTES = frozenset(
    {
        "access.token.header.type.rfc9068",
        "access.token.signed.response.alg",
        "acr.loa.map",
        "authorization.encrypted.response.alg",
        "authorization.encrypted.response.enc",
        "authorization.signed.response.alg",
        "backchannel.logout.revoke.offline.tokens",
        "backchannel.logout.session.required",
        "backchannel.logout.url",
        "ciba.backchannel.auth.request.signing.alg",
        "ciba.backchannel.client.notification.endpoint",
        "ciba.backchannel.token.delivery.mode",
        "client.introspection.response.allow.jwt.claim.enabled",
        "client.offline.session.idle.timeout",
        "client.offline.session.max.lifespan",
        "client.secret.creation.time",
        "client.secret.expiration.time",
        "client.secret.rotated",
        "client.secret.rotated.creation.time",
        "client.secret.rotated.expiration.time",
        "client.session.idle.timeout",
        "client.session.max.lifespan",
        "client.use.lightweight.access.token.enabled",
        "consent.screen.text",
        "default.acr.values",
        "display.on.consent.screen",
        "exclude.issuer.from.auth.response",
        "exclude.session.state.from.auth.response",
        "frontchannel.logout.session.required",
        "frontchannel.logout.url",
        "id.token.as.detached.signature",
        "id.token.encrypted.response.alg",
        "id.token.encrypted.response.enc",
        "jwks.string",
        "jwks.url",
        "jwt.credential.certificate",
        "login_theme",
        "logoUri",
        "minimum.acr.value",
        "oauth2.device.code.lifespan",
        "oauth2.device.polling.interval",
        "policyUri",
        "post.logout.redirect.uris",
        "realm_client",
        "request.object.encryption.alg",
        "request.object.encryption.enc",
        "request.object.required",
        "request.object.signature.alg",
        "request.uris",
        "token.response.type.bearer.lower-case",
        "tosUri",
        "use.jwks.string",
        "use.jwks.url",
        "user.info.encrypted.response.alg",
        "user.info.encrypted.response.enc",
        "user.info.response.signature.alg",
        "x509.allow.regex.pattern.comparison",
        "x509.subjectdn",
    }
)
IGNORED_ATTRIBUTE_PREFIXES = ("saml.", "saml_")
#: Boolean attributes that, when true, grant something the AuthClient cannot express: a note says so.
UNAUDITED_WHEN_TRUE: dict[str, str] = {
    "oidc.ciba.grant.enabled": "the CIBA grant is not an AuthClient grant type",
    "client_credentials.use_refresh_token": (
        "refresh tokens for client_credentials are not mapped (SPEC §9 adds refresh_token for the "
        "standard flow and the password grant only)"
    ),
}

_ABSOLUTE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]")


@dataclass(frozen=True)
class Realm:
    """What the mapping needs from the realm around a client."""

    name: str | None
    namespace: str
    sso_session_max: int
    default_scopes: tuple[str, ...]


class _Client:
    """One ClientRepresentation being mapped; collects its findings as it goes."""

    def __init__(self, doc: JsonInput, path: JsonPath, raw: dict[str, Any], realm: Realm) -> None:
        self.doc, self.path, self.raw, self.realm = doc, path, raw, realm
        self.client_id: str = raw["clientId"]
        self.findings: list[Diagnostic] = []

    @property
    def position(self) -> Position:
        return self.doc.value_position(self.path)

    def finding(self, level: Level, code: str, message: str, at: Sequence[str | int] = ()) -> None:
        where = self.doc.key_position((*self.path, *at)) if at else self.position
        self.findings.append(Diagnostic(level, where, code, f"client {self.client_id!r}: {message}"))

    @property
    def failed(self) -> bool:
        return any(d.level is Level.ERROR for d in self.findings)

    @functools.cached_property
    def attributes(self) -> dict[str, str]:
        """Attribute values as Keycloak stores them (strings); JSON booleans and numbers are spelled out."""
        raw = self.raw.get("attributes")
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.finding(Level.ERROR, "wrong-shape", "attributes must be a JSON object", ("attributes",))
            return {}
        attributes = {}
        for key, value in raw.items():
            if value is None:
                continue
            if isinstance(value, bool):
                attributes[key] = "true" if value else "false"
            elif isinstance(value, int | float):
                attributes[key] = str(value)
            elif isinstance(value, str):
                attributes[key] = value
            else:
                self.finding(
                    Level.ERROR,
                    "wrong-shape",
                    f"attribute {key!r} must be a string, not {type(value).__name__}",
                    ("attributes", key),
                )
        return attributes

    def flag(self, name: str) -> bool:
        value = self.raw.get(name)
        if value is None:
            return FLAG_DEFAULTS[name]
        if isinstance(value, bool):
            return value
        self.finding(Level.ERROR, "wrong-shape", f"{name} must be true or false, not {value!r}", (name,))
        return FLAG_DEFAULTS[name]

    def attribute(self, name: str) -> str | None:
        """The attribute's value; an empty one is unset, as the admin console writes a cleared field."""
        value = self.attributes.get(name)
        return value if value else None

    def boolean_attribute(self, name: str, default: bool) -> bool:
        value = self.attribute(name)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            self.finding(
                Level.NOTE,
                "attribute-value",
                f"attribute {name} is {value!r}, which Keycloak reads as false",
                ("attributes", name),
            )
        return value.lower() == "true"

    def switch(self, switch: Switch) -> bool:
        if switch.attribute:
            return self.boolean_attribute(switch.name, switch.default)
        return self.flag(switch.name)

    def strings(self, name: str) -> list[str]:
        value = self.raw.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.finding(Level.ERROR, "wrong-shape", f"{name} must be a list of strings", (name,))
            return []
        return list(value)


@dataclass(frozen=True)
class AttributeField:
    """One attribute that becomes one spec field; `convert` sees the value (None when unset)."""

    attribute: str
    path: tuple[str, ...]
    convert: Callable[[_Client, str | None], Any]


_OMIT = object()


def _pkce(client: _Client, value: str | None) -> Any:
    if value in ("S256", "plain"):
        return {"required": True, "method": value}
    if value is not None:
        client.finding(
            Level.NOTE,
            "attribute-value",
            f"attribute pkce.code.challenge.method is {value!r}, not S256 or plain; Keycloak does not "
            "require PKCE with it, so neither does the AuthClient",
            ("attributes", "pkce.code.challenge.method"),
        )
    return {"required": False}


def go_duration(seconds: int) -> str:
    """Whole seconds (> 0) as the shortest Go duration: 3600 → 1h, 5400 → 1h30m, 90 → 1m30s."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = ((hours, "h"), (minutes, "m"), (secs, "s"))
    return "".join(f"{amount}{unit}" for amount, unit in parts if amount)


def _access_token_lifespan(client: _Client, value: str | None) -> Any:
    if value is None:
        return _OMIT
    at = ("attributes", "access.token.lifespan")
    try:
        seconds = int(value.strip())
    except ValueError:
        seconds = 0
    if seconds == -1:
        session_max = client.realm.sso_session_max
        client.finding(
            Level.NOTE,
            "attribute-value",
            "access.token.lifespan -1 makes access tokens live as long as the SSO session; counted as "
            f"the realm's ssoSessionMaxLifespan ({go_duration(session_max)})",
            at,
        )
        return go_duration(session_max)
    if seconds <= 0:
        client.finding(
            Level.ERROR,
            "attribute-value",
            f"attribute access.token.lifespan is {value!r}; Keycloak expects seconds (> 0) or -1",
            at,
        )
        return _OMIT
    return go_duration(seconds)


def _switched_on(name: str) -> Callable[[_Client, str | None], Any]:
    """A boolean attribute read as Keycloak reads it; only `true` is written (false is the default)."""
    return lambda client, value: (
        True if value is not None and client.boolean_attribute(name, False) else _OMIT
    )


def _as_written(_client: _Client, value: str | None) -> Any:
    """Copied unchanged, so the AuthClient schema judges it (an algorithm it does not know fails)."""
    return _OMIT if value is None else value


def _boolean_field(attribute: str, field: str) -> AttributeField:
    return AttributeField(attribute, (field,), _switched_on(attribute))


#: Attributes that become spec fields.
ATTRIBUTE_FIELDS: tuple[AttributeField, ...] = (
    AttributeField("pkce.code.challenge.method", ("pkce",), _pkce),
    AttributeField("access.token.lifespan", ("token", "accessTokenTTL"), _access_token_lifespan),
    _boolean_field("dpop.bound.access.tokens", "dpopBoundAccessTokens"),
    _boolean_field("tls.client.certificate.bound.access.tokens", "tlsClientCertificateBoundAccessTokens"),
    _boolean_field("require.pushed.authorization.requests", "requirePushedAuthorizationRequests"),
    AttributeField("token.endpoint.auth.signing.alg", ("tokenEndpointAuthSigningAlg",), _as_written),
    AttributeField("id.token.signed.response.alg", ("idTokenSignedResponseAlg",), _as_written),
)
_READ_ATTRIBUTES = frozenset(
    {
        *(row.switch.name for row in GRANT_ROWS if row.switch.attribute),
        REFRESH_TOKEN_SWITCH.name,
        *(row.attribute for row in ATTRIBUTE_FIELDS),
        *UNAUDITED_WHEN_TRUE,
    }
)


def _unknown_attributes(client: _Client) -> None:
    for name in sorted(client.attributes):
        known = name in _READ_ATTRIBUTES or name in IGNORED_ATTRIBUTES
        if not known and not name.startswith(IGNORED_ATTRIBUTE_PREFIXES):
            client.finding(
                Level.NOTE,
                "unknown-attribute",
                f"attribute {name!r} is not one nauthera knows; it was not imported",
                ("attributes", name),
            )
    for name, why in UNAUDITED_WHEN_TRUE.items():
        if client.attribute(name) is not None and client.boolean_attribute(name, False):
            client.finding(
                Level.NOTE, "not-audited", f"attribute {name} is true, but {why}", ("attributes", name)
            )


def _grant_types(client: _Client) -> list[str]:
    grants = [row.grant for row in GRANT_ROWS if client.switch(row.switch)]
    if any(grant in REFRESH_TOKEN_GRANTS for grant in grants) and client.switch(REFRESH_TOKEN_SWITCH):
        grants.append("refresh_token")
    return grants


def _response_types(grants: Sequence[str]) -> list[str]:
    found: list[str] = []
    for needed, response_types in RESPONSE_TYPE_ROWS:
        if all(grant in grants for grant in needed):
            found.extend(response_types)
    return found


def _redirect_uris(client: _Client) -> list[str]:
    """As listed, relative ones (`/path`) prefixed with an absolute rootUrl, as Keycloak resolves them."""
    root = client.raw.get("rootUrl")
    absolute_root = root if isinstance(root, str) and _ABSOLUTE_URL.match(root) else None
    resolved = []
    for index, listed in enumerate(client.strings("redirectUris")):
        uri = absolute_root + listed if listed.startswith("/") and absolute_root else listed
        if uri.startswith("/"):
            client.finding(
                Level.NOTE,
                "relative-redirect",
                f"redirect URI {uri!r} is relative and rootUrl {root!r} is not an absolute URL (Keycloak "
                "resolves it against its own address); kept as is, so policies on https and hosts refuse it",
                ("redirectUris", index),
            )
        resolved.append(uri)
    return unique(resolved)


def _auth_method(client: _Client, public: bool) -> str | None:
    if public:
        return PUBLIC_AUTH_METHOD
    authenticator = client.raw.get("clientAuthenticatorType") or DEFAULT_AUTHENTICATOR
    method = AUTHENTICATORS.get(authenticator) if isinstance(authenticator, str) else None
    if method is None:
        client.finding(
            Level.ERROR,
            "attribute-value",
            f"clientAuthenticatorType {authenticator!r} has no token endpoint auth method "
            f"(known: {', '.join(sorted(AUTHENTICATORS))})",
            ("clientAuthenticatorType",),
        )
    return method


def _scopes(client: _Client) -> list[str]:
    listed = "defaultClientScopes" in client.raw or "optionalClientScopes" in client.raw
    if not listed:
        return list(client.realm.default_scopes)
    return unique([*client.strings("defaultClientScopes"), *client.strings("optionalClientScopes")])


def _set(spec: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        spec = spec.setdefault(key, {})
    spec[path[-1]] = value


def map_client(client: _Client) -> dict[str, Any]:
    """The AuthClient spec of one OIDC ClientRepresentation."""
    public = client.flag("publicClient")
    grants = _grant_types(client)
    redirect_uris = _redirect_uris(client)
    spec: dict[str, Any] = {}
    name = client.raw.get("name")
    if isinstance(name, str) and name:
        spec["displayName"] = name
    spec["applicationType"] = application_type(public, grants, redirect_uris)
    if redirect_uris:
        spec["redirectUris"] = redirect_uris
    spec["grantTypes"] = grants
    spec["responseTypes"] = _response_types(grants)
    scopes = _scopes(client)
    if scopes:
        spec["scopes"] = scopes
    method = _auth_method(client, public)
    if method is not None:
        spec["tokenEndpointAuthMethod"] = method
    for row in ATTRIBUTE_FIELDS:
        value = row.convert(client, client.attribute(row.attribute))
        if value is not _OMIT:
            _set(spec, row.path, value)
    _unknown_attributes(client)
    return spec


def _skip_reason(client: _Client, realm: Realm, include_builtin: bool) -> str | None:
    protocol = client.raw.get("protocol") or OPENID_CONNECT
    if protocol != OPENID_CONNECT:
        return f"protocol {protocol!r} is not OpenID Connect"
    builtin = (*BUILTIN_CLIENTS, f"{realm.name}-realm") if realm.name else BUILTIN_CLIENTS
    if client.client_id in builtin and not include_builtin:
        return "it is built into every Keycloak realm (--include-builtin imports it)"
    if client.flag("bearerOnly"):
        return "it is bearer-only: it never requests tokens, it only accepts them"
    return None


@dataclass(frozen=True)
class KeycloakOptions:
    namespace: str | None
    labels: dict[str, str]
    include_builtin: bool


def _realm(raw: dict[str, Any], options: KeycloakOptions) -> Realm:
    name = raw.get("realm") if isinstance(raw.get("realm"), str) else None
    session_max = raw.get("ssoSessionMaxLifespan")
    scopes = [
        scope
        for key in ("defaultDefaultClientScopes", "defaultOptionalClientScopes")
        if isinstance(raw.get(key), list)
        for scope in raw[key]
        if isinstance(scope, str)
    ]
    return Realm(
        name,
        namespace_for(options.namespace or name or "default"),
        session_max if isinstance(session_max, int) and session_max > 0 else DEFAULT_SSO_SESSION_MAX,
        tuple(unique(scopes)),
    )


_SHAPE_HINT = (
    'expected a Keycloak realm export (an object with "realm" and "clients": admin console Realm '
    "settings → Action → Partial export, or `kc.sh export`), a JSON list of realms (legacy single-file "
    "export) or one client (Clients → Export)"
)


def _shape_problem(value: Any) -> str:
    if isinstance(value, dict) and any(
        key in value for key in ("redirect_uris", "client_name", "grant_types")
    ):
        return f"this looks like RFC 7591 client metadata; use `nauthera import dcr` ({_SHAPE_HINT})"
    if isinstance(value, dict) and "apiVersion" in value:
        return f"this looks like a Kubernetes object, not a Keycloak export ({_SHAPE_HINT})"
    return f"not a Keycloak export: {_SHAPE_HINT}"


@dataclass(frozen=True)
class _Source:
    """A realm of an export, or one exported client (which has no realm around it)."""

    path: JsonPath
    realm: dict[str, Any] | None


def _sources(doc: JsonInput) -> list[_Source] | None:
    """The realms of an export, or the one exported client; None when the JSON is neither."""
    value = doc.value
    if isinstance(value, dict) and isinstance(value.get("realm"), str):
        return [_Source((), value)]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(r, dict) and isinstance(r.get("realm"), str) for r in value)
    ):
        return [_Source((index,), realm) for index, realm in enumerate(value)]
    if isinstance(value, dict) and isinstance(value.get("clientId"), str):
        return [_Source((), None)]
    return None


def _clients_of(doc: JsonInput, source: _Source, result: ImportResult) -> list[tuple[JsonPath, Any]]:
    """The client entries of a source, with their paths; a realm without clients is an error."""
    raw = source.realm
    if raw is None:
        return [(source.path, doc.value)]
    clients = raw.get("clients")
    if not clients:
        hint = (
            "this is the users file of a directory export; import the <realm>-realm.json file"
            if "users" in raw
            else "export the realm with its clients (Partial export → Include clients)"
        )
        result.diagnostics.append(
            Diagnostic(
                Level.ERROR,
                doc.value_position(source.path),
                "no-clients",
                f"realm {raw['realm']!r} has no clients; {hint}",
            )
        )
        return []
    if not isinstance(clients, list):
        result.unreadable.append(
            Diagnostic(
                Level.ERROR,
                doc.value_position((*source.path, "clients")),
                "wrong-shape",
                f"realm {raw['realm']!r}: clients must be a JSON list of client objects",
            )
        )
        return []
    return [((*source.path, "clients", index), client) for index, client in enumerate(clients)]


def import_keycloak(docs: Sequence[JsonInput], options: KeycloakOptions, result: ImportResult) -> None:
    """Add the clients of every realm export in `docs` to `result`."""
    for doc, sources in recognised(docs, result, _sources, _shape_problem):
        for source in sources:
            _import_source(doc, source, options, result)


def _import_source(doc: JsonInput, source: _Source, options: KeycloakOptions, result: ImportResult) -> None:
    realm = _realm(source.realm or {}, options)
    builtins: list[str] = []
    for client_path, entry in _clients_of(doc, source, result):
        client_id = entry.get("clientId") if isinstance(entry, dict) else None
        if not isinstance(client_id, str) or not client_id:
            what = "has no clientId" if isinstance(entry, dict) else "is not a JSON object"
            result.diagnostics.append(
                Diagnostic(
                    Level.ERROR,
                    doc.value_position(client_path),
                    "missing-client-id",
                    f"client {what}, so it cannot be named; add its clientId",
                )
            )
            continue
        client = _Client(doc, client_path, entry, realm)
        reason = _skip_reason(client, realm, options.include_builtin)
        if reason is not None and reason.startswith("it is built into"):
            builtins.append(client_id)
        elif reason is not None:
            client.finding(Level.NOTE, "skipped", f"skipped: {reason}")
        if reason is not None:
            result.skipped += 1
            result.diagnostics.extend(client.findings)
            continue
        spec = map_client(client)
        result.diagnostics.extend(client.findings)
        if client.failed:
            continue
        result.clients.append(
            ImportedClient(
                realm.namespace, client_id, client_id, client_id, options.labels, spec, client.position
            )
        )
    if builtins:
        result.diagnostics.append(
            Diagnostic(
                Level.NOTE,
                doc.value_position(source.path),
                "skipped",
                f"skipped {len(builtins)} built-in client{'s' * (len(builtins) != 1)} of realm "
                f"{realm.name!r} ({', '.join(sorted(builtins))}); --include-builtin imports them",
            )
        )
