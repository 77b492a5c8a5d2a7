"""`nauthera import dcr` (SPEC §9): RFC 7591 and OpenID Connect registration metadata as AuthClients.

data/dcr/ holds the RFC's own examples (RFC 7591 sections 3.1 and 3.2.1, OpenID Connect Dynamic
Client Registration 1.0 sections 3.1 and 3.2) and requests of the kinds an authorization server sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from nauthera.compile.diagnostics import Level
from nauthera.compile.mapping import DEVICE_CODE as DEVICE
from nauthera.compile.mapping import SOURCE_ID_ANNOTATION, metadata_spec
from nauthera.importers.clients import ImportOutput, import_files
from nauthera.importers.dcr import DcrOptions, import_dcr

from ..conftest import Cli

DCR = Path(__file__).parent / "data" / "dcr"
RFC_PAIR = ["https://client.example.org/callback", "https://client.example.org/callback2"]
CONFIDENTIAL_WEB = {
    "applicationType": "web",
    "grantTypes": ["authorization_code"],
    "responseTypes": ["code"],
    "tokenEndpointAuthMethod": "client_secret_basic",
    "pkce": {"required": False, "method": "S256"},
}

PUBLIC_CODE = {
    "grantTypes": ["authorization_code", "refresh_token"],
    "responseTypes": ["code"],
    "tokenEndpointAuthMethod": "none",
    "pkce": {"required": False, "method": "S256"},
}
PKCE_S256 = {"required": True, "method": "S256"}

#: file → [(namespace/name, source id or None, spec)]
EXPECTED: dict[str, list[tuple[str, str | None, dict[str, Any]]]] = {
    "rfc7591-3.1-request.json": [
        (
            "default/my-example-client",
            "My Example Client",
            {**CONFIDENTIAL_WEB, "displayName": "My Example Client", "redirectUris": RFC_PAIR},
        )
    ],
    "rfc7591-3.1-software-statement-request.json": [
        (
            "default/rfc7591-3.1-software-statement-request",
            None,
            {**CONFIDENTIAL_WEB, "redirectUris": RFC_PAIR, "scopes": ["read", "write"]},
        )
    ],
    "rfc7591-3.2.1-response.json": [
        (
            "default/my-example-client",
            "s6BhdRkqt3",
            {
                **CONFIDENTIAL_WEB,
                "displayName": "My Example Client",
                "redirectUris": RFC_PAIR,
                "grantTypes": ["authorization_code", "refresh_token"],
            },
        )
    ],
    "oidc-registration-3.1-request.json": [
        (
            "default/my-example",
            "My Example",
            {**CONFIDENTIAL_WEB, "displayName": "My Example", "redirectUris": RFC_PAIR},
        )
    ],
    "oidc-registration-3.2-response.json": [
        (
            "default/my-example",
            "s6BhdRkqt3",
            {**CONFIDENTIAL_WEB, "displayName": "My Example", "redirectUris": RFC_PAIR},
        )
    ],
    "browser-app.json": [
        (
            "default/shop--browser-app",
            "Shop (browser app)",
            {
                **PUBLIC_CODE,
                "applicationType": "spa",
                "displayName": "Shop (browser app)",
                "redirectUris": ["https://shop.example.com/callback"],
                "scopes": ["openid", "profile", "email", "offline_access"],
                "pkce": PKCE_S256,
            },
        )
    ],
    "native-app.json": [
        (
            "default/field-inspector",
            "Field inspector",
            {
                **PUBLIC_CODE,
                "applicationType": "native",
                "displayName": "Field inspector",
                "redirectUris": ["com.example.field:/oauth2redirect", "http://127.0.0.1/callback"],
                "scopes": ["openid", "profile"],
                "pkce": PKCE_S256,
                "dpopBoundAccessTokens": True,
            },
        )
    ],
    "desktop-assistant.json": [
        (
            "default/desktop-assistant",
            "Desktop assistant",
            {
                **PUBLIC_CODE,
                "applicationType": "spa",
                "displayName": "Desktop assistant",
                "redirectUris": ["http://localhost:6274/oauth/callback"],
                "scopes": ["openid", "profile", "api:read"],
            },
        )
    ],
    "orders-service.json": [
        (
            "default/orders-sync",
            "orders-sync",
            {
                "applicationType": "service",
                "displayName": "Orders sync",
                "grantTypes": ["client_credentials"],
                "responseTypes": [],
                "tokenEndpointAuthMethod": "private_key_jwt",
                "tokenEndpointAuthSigningAlg": "PS256",
                "scopes": ["api:orders.read", "api:orders.write"],
                "pkce": {"required": False, "method": "S256"},
            },
        )
    ],
    "legacy-implicit.json": [
        (
            "default/legacy-dashboard",
            "Legacy dashboard",
            {
                "applicationType": "spa",
                "displayName": "Legacy dashboard",
                "redirectUris": [
                    "https://dashboard.example.com/#/callback",
                    "https://*.example.com/callback",
                ],
                **PUBLIC_CODE,
                "grantTypes": ["implicit"],
                "responseTypes": ["id_token token"],
                "scopes": ["openid", "profile"],
            },
        )
    ],
    "clients-list.json": [
        (
            "default/reporting",
            "reporting",
            {
                **CONFIDENTIAL_WEB,
                "displayName": "Reporting",
                "redirectUris": ["https://reports.example.com/callback"],
                "grantTypes": ["authorization_code", "password"],
                "tokenEndpointAuthMethod": "client_secret_post",
                "scopes": ["openid", "api:read"],
            },
        ),
        (
            "default/clients-list-2",
            None,
            {**CONFIDENTIAL_WEB, "redirectUris": ["https://wiki.example.com/oidc"], "scopes": ["openid"]},
        ),
    ],
}


def _import(*paths: Path, namespace: str | None = None, labels: dict[str, str] | None = None) -> ImportOutput:
    options = DcrOptions(namespace, labels or {})
    return import_files(list(paths), lambda docs, result: import_dcr(docs, options, result))


@pytest.mark.parametrize("file", list(EXPECTED))
def test_each_metadata_file_maps_as_specified(file: str) -> None:
    output = _import(DCR / file)
    assert not output.incomplete, output.diagnostics
    found = [
        (
            f"{d['metadata']['namespace']}/{d['metadata']['name']}",
            d["metadata"].get("annotations", {}).get(SOURCE_ID_ANNOTATION),
            d["spec"],
        )
        for d in output.documents
    ]
    assert sorted(found, key=lambda f: f[0]) == sorted(EXPECTED[file], key=lambda f: f[0])


def test_unknown_members_and_unnamed_clients_are_noted() -> None:
    output = _import(DCR / "rfc7591-3.1-software-statement-request.json", DCR / "native-app.json")
    notes = [(d.level, d.code, d.message) for d in output.diagnostics]
    assert (
        Level.NOTE,
        "unknown-member",
        "member 'example_extension_parameter' is not RFC 7591 or OpenID Connect client metadata; ignored",
    ) in notes
    assert any(code == "unnamed" and "named after its file" in message for _, code, message in notes)
    # Mapped members (dpop_bound_access_tokens) draw no note.
    assert not any("dpop" in message for _, _, message in notes)


def test_section_10_members_map_to_their_fields() -> None:
    request = {
        "redirect_uris": ["https://a.example.com/cb"],
        "dpop_bound_access_tokens": True,
        "tls_client_certificate_bound_access_tokens": False,
        "require_pushed_authorization_requests": True,
        "token_endpoint_auth_signing_alg": "PS256",
        "id_token_signed_response_alg": "ES256",
    }
    assert metadata_spec(request) == {
        **CONFIDENTIAL_WEB,
        "redirectUris": ["https://a.example.com/cb"],
        "dpopBoundAccessTokens": True,
        "tlsClientCertificateBoundAccessTokens": False,
        "requirePushedAuthorizationRequests": True,
        "tokenEndpointAuthSigningAlg": "PS256",
        "idTokenSignedResponseAlg": "ES256",
    }


def test_rfc_defaults_and_nulls() -> None:
    assert metadata_spec({"redirect_uris": ["https://a.example.com/cb"], "grant_types": None}) == {
        **CONFIDENTIAL_WEB,
        "redirectUris": ["https://a.example.com/cb"],
    }


@pytest.mark.parametrize(
    ("metadata", "app_type"),
    [
        ({"token_endpoint_auth_method": "none", "redirect_uris": ["https://a.example.com/cb"]}, "spa"),
        ({"token_endpoint_auth_method": "none", "redirect_uris": ["myapp:/cb"]}, "native"),
        ({"token_endpoint_auth_method": "none", "redirect_uris": ["http://127.0.0.1:9/cb"]}, "native"),
        ({"application_type": "web", "token_endpoint_auth_method": "none"}, "spa"),
        ({"application_type": "native"}, "native"),
        ({"application_type": "device", "grant_types": [DEVICE]}, "device"),
        ({"grant_types": ["client_credentials", "refresh_token"]}, "service"),
        ({"grant_types": ["client_credentials", "authorization_code"]}, "web"),
        ({"application_type": "kiosk"}, "kiosk"),
    ],
)
def test_application_type(metadata: dict[str, Any], app_type: str) -> None:
    assert metadata_spec(metadata)["applicationType"] == app_type


@pytest.mark.parametrize(
    ("scope", "scopes"),
    [
        ("openid profile", ["openid", "profile"]),
        ("  openid  openid ", ["openid"]),
        ("", []),
        (["openid"], [["openid"]]),
    ],
)
def test_scope_is_one_space_separated_string(scope: Any, scopes: list[Any]) -> None:
    assert metadata_spec({"scope": scope})["scopes"] == scopes


def test_metadata_of_the_wrong_types_is_refused_by_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"client_name": "bad", "redirect_uris": "https://a.example.com/cb", "scope": 5})
    )
    output = _import(path)
    assert output.documents == [] and output.incomplete
    messages = [d.message for d in output.diagnostics if d.level is Level.ERROR]
    assert len(messages) == 2
    assert all(
        m.startswith("client 'bad' cannot be imported: its AuthClient would not match") for m in messages
    )


def test_namespace_labels_and_collisions() -> None:
    output = _import(
        DCR / "rfc7591-3.1-request.json",
        DCR / "rfc7591-3.2.1-response.json",
        namespace="Team A",
        labels={"tier": "prod"},
    )
    names = sorted(d["metadata"]["name"] for d in output.documents)
    assert len(names) == 2 and all(n.startswith("my-example-client-") for n in names)
    assert {d["metadata"]["namespace"] for d in output.documents} == {"team-a"}
    assert all(d["metadata"]["labels"] == {"tier": "prod"} for d in output.documents)
    assert [d.code for d in output.diagnostics if d.code == "renamed"] == ["renamed", "renamed"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"realm": "acme", "clients": []}', "looks like a Keycloak realm export"),
        ("{}", "not client metadata"),
        ('[{"redirect_uris": []}, 5]', "not client metadata"),
        ('{"apiVersion": "v1"}', "not client metadata"),
        ("null", "not client metadata"),
    ],
)
def test_json_of_another_shape_fails_the_import(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "input.json"
    path.write_text(content)
    output = _import(DCR / "browser-app.json", path)
    assert output.failed and output.yaml == ""
    assert [d.code for d in output.unreadable] == ["wrong-shape"] and words in output.unreadable[0].message


def test_cli_prints_every_example_and_check_reads_it(cli: Cli, tmp_path: Path) -> None:
    result = cli("import", "dcr", *sorted(DCR.glob("*.json")), "--namespace", "team-a")
    # The RFC 7591 and the OpenID Connect response examples both register client_id s6BhdRkqt3.
    assert result.returncode == 1, result.stderr
    assert "rfc7591-3.2.1-response.json:1:1: error: client 's6BhdRkqt3' is already imported" in result.stderr
    out = tmp_path / "clients.yaml"
    out.write_text(result.stdout)
    documents = list(yaml.safe_load_all(result.stdout))
    assert len(documents) == sum(len(v) for v in EXPECTED.values()) - 1
    compiled = cli(
        "compile", Path(__file__).parents[2] / "examples" / "policies", "--out", tmp_path / "build"
    )
    assert compiled.returncode == 0, compiled.stdout
    checked = cli("check", "--bundle", tmp_path / "build" / "bundle.tar.gz", out, "--format", "json")
    assert checked.returncode == 1, checked.stderr
    results = json.loads(checked.stdout)["results"]
    assert len(results) == len(documents)
    assert {r["client"] for r in results} == {f"team-a/{d['metadata']['name']}" for d in documents}
