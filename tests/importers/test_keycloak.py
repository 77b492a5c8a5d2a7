"""`nauthera import keycloak` (SPEC §9) on exports of Keycloak 4.8, 15.1, 21.1 and 26.2.

The corpus under data/ was constructed from Keycloak's documented RealmRepresentation and
ClientRepresentation in the layout each version's exporter writes (Jackson's pretty printer): the
built-in clients and client scopes each version creates, attributes as strings, masked or clear
secrets, users in the same file (`kc.sh export --users same_file`), and the legacy single-file
export's JSON list of realms. Every imported client is compared with its whole expected spec.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from nauthera.compile.diagnostics import Level
from nauthera.compile.mapping import DEVICE_CODE, SOURCE_ID_ANNOTATION, TOKEN_EXCHANGE
from nauthera.importers.clients import ImportOutput, import_files
from nauthera.importers.keycloak import KeycloakOptions, import_keycloak

from ..conftest import Cli

DATA = Path(__file__).parent / "data"
KC48 = DATA / "keycloak-4.8-single-file-export.json"
KC15 = DATA / "keycloak-15.1-partial-export.json"
KC21 = DATA / "keycloak-21.1-kc-export.json"
KC26 = DATA / "keycloak-26.2-partial-export.json"
KC26_CLIENT = DATA / "keycloak-26.2-client-export.json"

NO_PKCE = {"required": False}
S256 = {"required": True, "method": "S256"}
CODE_REFRESH = ["authorization_code", "refresh_token"]
SCOPES_48 = ["web-origins", "roles", "profile", "email", "offline_access", "address", "phone"]
SCOPES_15 = [*SCOPES_48, "microprofile-jwt"]
SCOPES_21 = [
    "web-origins",
    "acr",
    "roles",
    "profile",
    "email",
    "offline_access",
    "address",
    "phone",
    "microprofile-jwt",
]
SCOPES_26 = [
    "web-origins",
    "acr",
    "roles",
    "profile",
    "email",
    "basic",
    "offline_access",
    "address",
    "phone",
    "microprofile-jwt",
    "organization",
]


def _spec(
    app_type: str, grants: list[str], responses: list[str], method: str, **fields: Any
) -> dict[str, Any]:
    spec = {
        "applicationType": app_type,
        "grantTypes": grants,
        "responseTypes": responses,
        "tokenEndpointAuthMethod": method,
        "pkce": fields.pop("pkce", NO_PKCE),
    }
    spec.update(fields)
    return spec


#: file → {"namespace/name": (source client id, spec)}
EXPECTED: dict[Path, dict[str, tuple[str, dict[str, Any]]]] = {
    KC48: {
        "acme/dashboard": (
            "dashboard",
            _spec(
                "spa",
                ["implicit"],
                ["id_token", "id_token token"],
                "none",
                redirectUris=["https://dashboard.acme.example.com/*"],
                scopes=SCOPES_48,
            ),
        ),
        "acme/field-app": (
            "field-app",
            _spec(
                "native",
                CODE_REFRESH,
                ["code"],
                "none",
                redirectUris=["com.acme.field:/oauth2redirect", "http://127.0.0.1:8765/callback"],
                scopes=SCOPES_48,
            ),
        ),
        "acme/legacy-portal": (
            "legacy-portal",
            _spec(
                "web",
                ["authorization_code", "password", "refresh_token"],
                ["code"],
                "client_secret_basic",
                displayName="Legacy Portal",
                redirectUris=["https://portal.acme.example.com/*"],
                scopes=SCOPES_48,
                token={"accessTokenTTL": "1h"},
            ),
        ),
        "acme/nightly-export": (
            "nightly-export",
            _spec("service", ["client_credentials"], [], "client_secret_basic", scopes=SCOPES_48),
        ),
    },
    KC15: {
        "acme/hr-legacy": (
            "hr-legacy",
            _spec(
                "web",
                ["authorization_code", "password"],
                ["code"],
                "client_secret_basic",
                redirectUris=["https://hr.acme.example.com/*"],
                scopes=SCOPES_15,
            ),
        ),
        "acme/legacy-reports": (
            "Legacy_Reports",
            _spec(
                "web",
                CODE_REFRESH,
                ["code"],
                "client_secret_basic",
                redirectUris=["http://reports.acme.example.com/*"],
                scopes=SCOPES_15,
            ),
        ),
        "acme/partner-gateway": (
            "partner-gateway",
            _spec(
                "service",
                ["client_credentials"],
                [],
                "tls_client_auth",
                scopes=["roles"],
                tlsClientCertificateBoundAccessTokens=True,
            ),
        ),
        "acme/shop-spa": (
            "shop-spa",
            _spec(
                "spa",
                CODE_REFRESH,
                ["code"],
                "none",
                displayName="Shop (browser app)",
                pkce=S256,
                redirectUris=["https://shop.acme.example.com/app/*"],
                scopes=SCOPES_15,
            ),
        ),
        "acme/shop-web": (
            "shop-web",
            _spec(
                "web",
                CODE_REFRESH,
                ["code"],
                "private_key_jwt",
                displayName="Shop",
                pkce=S256,
                redirectUris=[
                    "https://shop.acme.example.com/callback",
                    "https://shop.acme.example.com/silent-renew.html",
                ],
                scopes=["web-origins", "roles", "profile", "email", "offline_access"],
                token={"accessTokenTTL": "10m"},
            ),
        ),
        # A public client with only the device grant and no redirect URI: SPEC §9 makes it a spa.
        "acme/tv-app": ("tv-app", _spec("spa", [DEVICE_CODE], [], "none", scopes=SCOPES_15)),
    },
    KC21: {
        "retail/inventory-sync": (
            "inventory-sync",
            _spec(
                "service",
                ["client_credentials"],
                [],
                "client_secret_jwt",
                scopes=["roles"],
                token={"accessTokenTTL": "8h"},
            ),
        ),
        "retail/kiosk": (
            "kiosk",
            _spec(
                "native",
                ["authorization_code", DEVICE_CODE, "refresh_token"],
                ["code"],
                "none",
                pkce=S256,
                redirectUris=["http://127.0.0.1/callback"],
                scopes=SCOPES_21,
            ),
        ),
        "retail/storefront": (
            "storefront",
            _spec(
                "web",
                CODE_REFRESH,
                ["code"],
                "client_secret_basic",
                displayName="Storefront",
                pkce=S256,
                redirectUris=["https://www.retail.example.com/auth/callback"],
                scopes=SCOPES_21,
                token={"accessTokenTTL": "15m"},
            ),
        ),
        "retail/storefront-mobile": (
            "storefront-mobile",
            _spec(
                "native",
                CODE_REFRESH,
                ["code"],
                "none",
                displayName="Storefront app",
                pkce=S256,
                redirectUris=["com.retail.app://callback", "http://localhost:4200/*"],
                scopes=SCOPES_21,
            ),
        ),
    },
    KC26: {
        "payments/checkout-spa": (
            "checkout-spa",
            _spec(
                "spa",
                ["authorization_code"],
                ["code"],
                "none",
                pkce=S256,
                redirectUris=["https://checkout.payments.example.com/*"],
                scopes=SCOPES_26,
            ),
        ),
        "payments/checkout-web": (
            "checkout-web",
            _spec(
                "web",
                CODE_REFRESH,
                ["code"],
                "private_key_jwt",
                displayName="Checkout",
                pkce=S256,
                redirectUris=["https://checkout.payments.example.com/oidc/callback"],
                scopes=["web-origins", "acr", "profile", "email", "basic", "offline_access"],
                token={"accessTokenTTL": "5m"},
                dpopBoundAccessTokens=True,
                tokenEndpointAuthSigningAlg="PS256",
            ),
        ),
        "payments/merchant-cli": ("merchant-cli", _spec("spa", [DEVICE_CODE], [], "none", scopes=SCOPES_26)),
        "payments/risk-engine": (
            "risk-engine",
            _spec(
                "service",
                ["client_credentials", TOKEN_EXCHANGE],
                [],
                "private_key_jwt",
                scopes=["basic"],
                token={"accessTokenTTL": "2m"},
            ),
        ),
        "payments/statements-batch": (
            "statements-batch",
            _spec("service", ["client_credentials"], [], "client_secret_basic", scopes=SCOPES_26),
        ),
        "payments/support-tool": (
            "support-tool",
            _spec(
                "web",
                ["authorization_code", "implicit", "refresh_token"],
                ["code", "id_token", "id_token token", "code id_token", "code id_token token", "code token"],
                "client_secret_basic",
                pkce={"required": True, "method": "plain"},
                redirectUris=["https://support.payments.example.com/*"],
                scopes=SCOPES_26,
            ),
        ),
    },
}


def _import(*paths: Path, namespace: str | None = None, include_builtin: bool = False) -> ImportOutput:
    options = KeycloakOptions(namespace, {}, include_builtin)
    return import_files(list(paths), lambda docs, result: import_keycloak(docs, options, result))


def _by_id(output: ImportOutput) -> dict[str, dict[str, Any]]:
    return {f"{d['metadata']['namespace']}/{d['metadata']['name']}": d for d in output.documents}


def _codes(output: ImportOutput, level: Level | None = None) -> list[str]:
    return [d.code for d in output.diagnostics if level is None or d.level is level]


@pytest.mark.parametrize("export", list(EXPECTED), ids=lambda p: p.stem)
def test_every_client_of_each_keycloak_version_maps_as_specified(export: Path) -> None:
    output = _import(export)
    documents = _by_id(output)
    assert sorted(documents) == sorted(EXPECTED[export])
    for client, (source_id, spec) in EXPECTED[export].items():
        document = documents[client]
        assert document["apiVersion"] == "auth.nauthera.io/v1alpha1" and document["kind"] == "AuthClient"
        assert document["metadata"]["annotations"] == {SOURCE_ID_ANNOTATION: source_id}
        assert "labels" not in document["metadata"]
        assert document["spec"] == spec, client


def test_builtin_bearer_only_and_saml_clients_are_skipped_with_notes() -> None:
    output = _import(KC15)
    notes = [d for d in output.diagnostics if d.code == "skipped"]
    assert [d.level for d in notes] == [Level.NOTE] * 3
    assert (
        "skipped 6 built-in clients of realm 'acme' (account, account-console, admin-cli, broker, "
        in notes[0].message
    )
    assert "'orders-api': skipped: it is bearer-only" in notes[1].message
    assert "'intranet-saml': skipped: protocol 'saml' is not OpenID Connect" in notes[2].message
    assert output.skipped == 8
    assert not output.incomplete


def test_include_builtin_imports_built_ins_but_never_bearer_only_clients() -> None:
    documents = _by_id(_import(KC26, include_builtin=True))
    for builtin in ("account", "account-console", "admin-cli", "broker", "security-admin-console"):
        assert f"payments/{builtin}" in documents
    assert "payments/realm-management" not in documents  # bearer-only
    console = documents["payments/security-admin-console"]["spec"]
    # ${authAdminUrl} is not absolute: the relative redirect URI stays as listed.
    assert console["redirectUris"] == ["/admin/payments/console/*"]
    assert console["applicationType"] == "spa" and console["pkce"] == S256
    assert documents["payments/admin-cli"]["spec"]["grantTypes"] == ["password", "refresh_token"]


def test_master_realm_management_clients_are_skipped() -> None:
    output = _import(KC48)
    assert not any(name.startswith("master/") for name in _by_id(output))
    messages = [d.message for d in output.diagnostics if d.code == "skipped"]
    assert any(
        "realm 'master' (account, admin-cli, broker, master-realm, realm-management" in m for m in messages
    )
    assert any("'acme-realm': skipped: it is bearer-only" in m for m in messages)


def test_one_exported_client_imports_into_namespace_or_default() -> None:
    alone = _by_id(_import(KC26_CLIENT))
    assert list(alone) == ["default/checkout-web"]
    assert alone["default/checkout-web"]["spec"] == EXPECTED[KC26]["payments/checkout-web"][1]
    assert list(_by_id(_import(KC26_CLIENT, namespace="Team A"))) == ["team-a/checkout-web"]


def test_notes_for_what_the_audit_cannot_see() -> None:
    output = _import(KC15, KC21, KC26)
    by_code: dict[str, list[str]] = {}
    for diagnostic in output.diagnostics:
        by_code.setdefault(diagnostic.code, []).append(diagnostic.message)
    assert by_code["not-audited"] == [
        "client 'partner-gateway': attribute oidc.ciba.grant.enabled is true, but the CIBA grant is not an "
        "AuthClient grant type",
        "client 'statements-batch': attribute client_credentials.use_refresh_token is true, but refresh "
        "tokens for client_credentials are not mapped (SPEC §9 adds refresh_token for the standard flow "
        "and the password grant only)",
    ]
    assert by_code["unknown-attribute"] == [
        "client 'pos-terminal': attribute 'retail.terminal.zone' is not one nauthera knows; "
        "it was not imported"
    ]
    assert by_code["attribute-value"][0].startswith(
        "client 'inventory-sync': access.token.lifespan -1 makes access tokens live as long as the SSO "
        "session; counted as the realm's ssoSessionMaxLifespan (8h)"
    )


def test_an_unknown_authenticator_keeps_that_client_out_and_the_rest_in() -> None:
    output = _import(KC21)
    errors = [d for d in output.diagnostics if d.level is Level.ERROR]
    assert [(d.code, d.position.file, d.position.line) for d in errors] == [
        (
            "attribute-value",
            str(KC21),
            _line_of(KC21, '"clientAuthenticatorType" : "retail-hsm-authenticator"'),
        )
    ]
    assert (
        "clientAuthenticatorType 'retail-hsm-authenticator' has no token endpoint auth method"
        in errors[0].message
    )
    assert output.incomplete and not output.failed
    assert "retail/pos-terminal" not in _by_id(output)
    assert len(output.documents) == 4


def _line_of(path: Path, needle: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def _realm(tmp_path: Path, clients: list[Any], **realm: Any) -> Path:
    path = tmp_path / "realm.json"
    path.write_text(json.dumps({"realm": "acme", **realm, "clients": clients}, indent=2))
    return path


def _one(tmp_path: Path, client: dict[str, Any], **realm: Any) -> tuple[dict[str, Any], ImportOutput]:
    output = _import(_realm(tmp_path, [{"clientId": "app", **client}], **realm))
    assert len(output.documents) == 1, output.diagnostics
    return output.documents[0]["spec"], output


def test_absent_flags_take_keycloaks_defaults(tmp_path: Path) -> None:
    spec, _ = _one(tmp_path, {})
    assert spec == _spec("web", CODE_REFRESH, ["code"], "client_secret_basic")


def test_absent_scope_lists_take_the_realms_default_client_scopes(tmp_path: Path) -> None:
    realm = {
        "defaultDefaultClientScopes": ["profile", "email"],
        "defaultOptionalClientScopes": ["offline_access"],
    }
    spec, _ = _one(tmp_path, {}, **realm)
    assert spec["scopes"] == ["profile", "email", "offline_access"]
    spec, _ = _one(tmp_path, {"defaultClientScopes": ["roles"]}, **realm)
    assert spec["scopes"] == ["roles"]


@pytest.mark.parametrize(
    ("root", "listed", "resolved", "noted"),
    [
        (
            "https://app.example.com",
            ["/cb", "https://app.example.com/cb"],
            ["https://app.example.com/cb"],
            False,
        ),
        ("https://app.example.com/base/", ["/cb"], ["https://app.example.com/base//cb"], False),
        (None, ["/cb"], ["/cb"], True),
        ("${authBaseUrl}", ["/realms/acme/*"], ["/realms/acme/*"], True),
        ("https://app.example.com", ["*", "myapp:/cb"], ["*", "myapp:/cb"], False),
    ],
)
def test_relative_redirect_uris_are_resolved_as_keycloak_does(
    tmp_path: Path, root: str | None, listed: list[str], resolved: list[str], noted: bool
) -> None:
    client: dict[str, Any] = {"redirectUris": listed}
    if root is not None:
        client["rootUrl"] = root
    spec, output = _one(tmp_path, client)
    assert spec["redirectUris"] == resolved
    assert ("relative-redirect" in _codes(output)) is noted


@pytest.mark.parametrize(
    ("attributes", "grants"),
    [
        ({"use.refresh.tokens": "false"}, ["authorization_code"]),
        ({"use.refresh.tokens": "FALSE"}, ["authorization_code"]),
        ({"use.refresh.tokens": "True"}, CODE_REFRESH),
        ({"use.refresh.tokens": ""}, CODE_REFRESH),
        ({"use.refresh.tokens": True}, CODE_REFRESH),
        (
            {"oauth2.device.authorization.grant.enabled": "true"},
            ["authorization_code", DEVICE_CODE, "refresh_token"],
        ),
        (
            {"standard.token.exchange.enabled": "true"},
            ["authorization_code", TOKEN_EXCHANGE, "refresh_token"],
        ),
    ],
)
def test_boolean_attributes_read_as_keycloak_reads_them(
    tmp_path: Path, attributes: dict[str, Any], grants: list[str]
) -> None:
    spec, output = _one(tmp_path, {"attributes": attributes})
    assert spec["grantTypes"] == grants
    assert "attribute-value" not in _codes(output)


def test_a_boolean_attribute_that_is_neither_true_nor_false_reads_false_with_a_note(tmp_path: Path) -> None:
    spec, output = _one(tmp_path, {"attributes": {"use.refresh.tokens": "yes"}})
    assert spec["grantTypes"] == ["authorization_code"]
    note = next(d for d in output.diagnostics if d.code == "attribute-value")
    assert (
        note.level is Level.NOTE
        and "use.refresh.tokens is 'yes', which Keycloak reads as false" in note.message
    )


@pytest.mark.parametrize(
    ("value", "ttl"),
    [("900", "15m"), ("5400", "1h30m"), ("90", "1m30s"), ("86400", "24h"), (" 60 ", "1m"), ("", None)],
)
def test_access_token_lifespan_becomes_a_go_duration(tmp_path: Path, value: str, ttl: str | None) -> None:
    spec, _ = _one(tmp_path, {"attributes": {"access.token.lifespan": value}})
    assert spec.get("token") == ({"accessTokenTTL": ttl} if ttl else None)


def test_lifespan_minus_one_is_the_sso_session_max(tmp_path: Path) -> None:
    spec, _ = _one(tmp_path, {"attributes": {"access.token.lifespan": "-1"}}, ssoSessionMaxLifespan=7200)
    assert spec["token"] == {"accessTokenTTL": "2h"}
    spec, _ = _one(tmp_path, {"attributes": {"access.token.lifespan": "-1"}})
    assert spec["token"] == {"accessTokenTTL": "10h"}  # Keycloak's default SSO Session Max


@pytest.mark.parametrize("value", ["0", "-5", "15m", "1.5"])
def test_a_lifespan_keycloak_cannot_use_keeps_the_client_out(tmp_path: Path, value: str) -> None:
    output = _import(_realm(tmp_path, [{"clientId": "app", "attributes": {"access.token.lifespan": value}}]))
    assert output.documents == []
    assert _codes(output, Level.ERROR) == ["attribute-value"]


@pytest.mark.parametrize(
    ("method", "pkce", "noted"),
    [
        ("S256", S256, False),
        ("plain", {"required": True, "method": "plain"}, False),
        ("", NO_PKCE, False),
        ("s256", NO_PKCE, True),
    ],
)
def test_pkce_attribute(tmp_path: Path, method: str, pkce: dict[str, Any], noted: bool) -> None:
    spec, output = _one(tmp_path, {"attributes": {"pkce.code.challenge.method": method}})
    assert spec["pkce"] == pkce
    assert ("attribute-value" in _codes(output)) is noted


def test_section_10_attributes(tmp_path: Path) -> None:
    attributes = {
        "dpop.bound.access.tokens": "TRUE",
        "tls.client.certificate.bound.access.tokens": "false",
        "require.pushed.authorization.requests": "true",
        "token.endpoint.auth.signing.alg": "ES256",
        "id.token.signed.response.alg": "",
    }
    spec, output = _one(tmp_path, {"attributes": attributes})
    assert spec == {
        **_spec("web", CODE_REFRESH, ["code"], "client_secret_basic"),
        "dpopBoundAccessTokens": True,
        "requirePushedAuthorizationRequests": True,
        "tokenEndpointAuthSigningAlg": "ES256",
    }, "false and empty attributes leave the AuthClient defaults"
    assert _codes(output) == []


def test_a_signing_algorithm_the_authclient_does_not_know_keeps_the_client_out(tmp_path: Path) -> None:
    output = _import(
        _realm(tmp_path, [{"clientId": "app", "attributes": {"id.token.signed.response.alg": "none"}}])
    )
    assert output.documents == []
    assert _codes(output, Level.ERROR) == ["not-importable"]


@pytest.mark.parametrize(
    ("authenticator", "method"),
    [
        ("client-secret", "client_secret_basic"),
        ("client-jwt", "private_key_jwt"),
        ("client-secret-jwt", "client_secret_jwt"),
        ("client-x509", "tls_client_auth"),
    ],
)
def test_authenticators(tmp_path: Path, authenticator: str, method: str) -> None:
    spec, _ = _one(tmp_path, {"clientAuthenticatorType": authenticator})
    assert spec["tokenEndpointAuthMethod"] == method
    spec, _ = _one(tmp_path, {"clientAuthenticatorType": authenticator, "publicClient": True})
    assert spec["tokenEndpointAuthMethod"] == "none"


@pytest.mark.parametrize(
    ("client", "app_type"),
    [
        ({"publicClient": True, "redirectUris": ["https://app.example.com/cb"]}, "spa"),
        (
            {"publicClient": True, "redirectUris": ["https://app.example.com/cb", "http://[::1]:80/cb"]},
            "native",
        ),
        ({"publicClient": True, "redirectUris": ["urn:ietf:wg:oauth:2.0:oob"]}, "native"),
        ({"publicClient": True, "redirectUris": ["http://localhost:3000/cb"]}, "spa"),
        ({"serviceAccountsEnabled": True, "standardFlowEnabled": False}, "service"),
        ({"serviceAccountsEnabled": True}, "web"),
        (
            {
                "serviceAccountsEnabled": True,
                "standardFlowEnabled": False,
                "attributes": {"oauth2.device.authorization.grant.enabled": "true"},
            },
            "web",
        ),
    ],
)
def test_application_type(tmp_path: Path, client: dict[str, Any], app_type: str) -> None:
    spec, _ = _one(tmp_path, client)
    assert spec["applicationType"] == app_type


def test_a_realm_without_clients_is_an_error_with_a_hint(tmp_path: Path) -> None:
    users_file = tmp_path / "acme-users-0.json"
    users_file.write_text(json.dumps({"realm": "acme", "users": [{"username": "a"}]}))
    output = _import(_realm(tmp_path, []), users_file)
    errors = [d for d in output.diagnostics if d.level is Level.ERROR]
    assert [d.code for d in errors] == ["no-clients", "no-clients"]
    assert any("Partial export" in d.message for d in errors)
    assert any("users file of a directory export" in d.message for d in errors)
    assert output.incomplete and not output.failed


def test_clients_without_a_client_id_are_errors_and_the_others_import(tmp_path: Path) -> None:
    path = _realm(tmp_path, [{"name": "nameless"}, "not-an-object", {"clientId": ""}, {"clientId": "ok"}])
    output = _import(path)
    assert [d["metadata"]["name"] for d in output.documents] == ["ok"]
    errors = [d for d in output.diagnostics if d.level is Level.ERROR]
    assert [d.code for d in errors] == ["missing-client-id"] * 3
    assert [d.position.line for d in errors] == [
        _line_of(path, '"name": "nameless"') - 1,
        _line_of(path, '"not-an-object"'),
        _line_of(path, '"clientId": ""') - 1,
    ]


@pytest.mark.parametrize(
    ("client", "words"),
    [
        ({"redirectUris": "https://a/cb"}, "redirectUris must be a list of strings"),
        ({"attributes": ["x"]}, "attributes must be a JSON object"),
        ({"attributes": {"x": {"nested": 1}}}, "attribute 'x' must be a string, not dict"),
        ({"publicClient": "yes"}, "publicClient must be true or false"),
        (
            {"redirectUris": [f"https://a.example.com/{i}" for i in range(300)]},
            "would not match the AuthClient schema",
        ),
    ],
)
def test_clients_of_the_wrong_shape_are_errors(tmp_path: Path, client: dict[str, Any], words: str) -> None:
    output = _import(_realm(tmp_path, [{"clientId": "app", **client}]))
    assert output.documents == []
    assert any(words in d.message for d in output.diagnostics if d.level is Level.ERROR), output.diagnostics


def test_collisions_and_duplicates_across_realms_in_one_namespace(tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"realm": "one", "clients": [{"clientId": "web"}, {"clientId": "Web"}]}))
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"realm": "two", "clients": [{"clientId": "web"}]}))
    output = _import(one, two, namespace="team-a")
    assert sorted(d["metadata"]["name"] for d in output.documents)[0] == "web"
    assert len(output.documents) == 2
    assert _codes(output, Level.ERROR) == ["duplicate-client"]
    assert "renamed" in _codes(output, Level.NOTE)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"redirect_uris": ["https://a/cb"], "client_name": "x"}', "looks like RFC 7591 client metadata"),
        (
            '{"apiVersion": "auth.nauthera.io/v1alpha1", "kind": "AuthClient"}',
            "looks like a Kubernetes object",
        ),
        ("[1, 2]", "not a Keycloak export"),
        ('"acme"', "not a Keycloak export"),
        ('{"realm": "acme", "clients": {"a": 1}}', "clients must be a JSON list"),
    ],
)
def test_json_of_another_shape_fails_the_import(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "other.json"
    path.write_text(content)
    output = _import(KC26, path)
    assert output.failed and output.yaml == "" and output.documents == []
    assert [d.code for d in output.unreadable] == ["wrong-shape"]
    assert words in output.unreadable[0].message


# --- the command line -------------------------------------------------------------------------------------


def test_cli_prints_yaml_that_reads_back_and_notes_on_stderr(cli: Cli) -> None:
    result = cli("import", "keycloak", KC26)
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["name"] for d in documents] == [
        "checkout-spa",
        "checkout-web",
        "merchant-cli",
        "risk-engine",
        "statements-batch",
        "support-tool",
    ]
    assert result.stdout.startswith("---\napiVersion: auth.nauthera.io/v1alpha1\n")
    lines = result.stderr.splitlines()
    assert lines[-1] == "imported 6 clients from 1 file; 7 skipped"
    assert all(f"{KC26}:" in line and "[" in line for line in lines[:-1])


def test_cli_output_is_byte_reproducible_and_independent_of_file_order(cli: Cli) -> None:
    first = cli("import", "keycloak", KC15, KC26, KC48)
    second = cli("import", "keycloak", KC48, KC26, KC15)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    assert first.stdout.encode() == _import(KC15, KC26, KC48).yaml.encode()


def test_cli_namespace_and_labels(cli: Cli) -> None:
    result = cli(
        "import", "keycloak", KC15, "--namespace", "Team_A", "--label", "tier=prod", "--label", "env=prod"
    )
    assert result.returncode == 0, result.stderr
    for document in yaml.safe_load_all(result.stdout):
        assert document["metadata"]["namespace"] == "team-a"
        assert document["metadata"]["labels"] == {"env": "prod", "tier": "prod"}


@pytest.mark.parametrize("label", ["tier", "tier=has space", "a/b/c=d"])
def test_cli_bad_labels_are_usage_errors(cli: Cli, label: str) -> None:
    result = cli("import", "keycloak", KC26, "--label", label)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_cli_exit_1_prints_the_clients_that_could_be_imported(cli: Cli) -> None:
    result = cli("import", "keycloak", KC21)
    assert result.returncode == 1
    assert len(list(yaml.safe_load_all(result.stdout))) == 4
    assert "error: client 'pos-terminal': clientAuthenticatorType" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "imported 4 clients from 1 file; 6 skipped, 1 not imported (error above)"
    )


def test_cli_exit_2_prints_nothing_when_an_input_cannot_be_read(cli: Cli, tmp_path: Path) -> None:
    not_json = tmp_path / "realm.yaml"
    not_json.write_text("realm: acme\n")
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[1]")
    result = cli("import", "keycloak", KC26, not_json, wrong)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{not_json}:1:1: error: not JSON: Expecting value" in result.stderr
    assert f"{wrong}:1:1: error: not a Keycloak export" in result.stderr
    assert "import failed: 2 of 3 files could not be read; nothing was printed" in result.stderr
    missing = cli("import", "keycloak", tmp_path / "missing.json")
    assert missing.returncode == 2 and missing.stdout == "" and "missing.json" in missing.stderr
    assert "Traceback" not in result.stderr + missing.stderr


def test_cli_reads_standard_input() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nauthera", "import", "keycloak", "-"],
        input=KC26_CLIENT.read_text(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["metadata"]["name"] == "checkout-web"
