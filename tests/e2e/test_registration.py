"""The registration decision (SPEC §9) in a real OPA, and its agreement with `nauthera import dcr`.

The RFC 7591 mapping exists twice: in Python (the DCR importer) and in the bundle's Rego (the
registration decision). These tests feed the same requests to both and compare the AuthClients they
make and the decisions they get, so neither can drift from the other unnoticed.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from nauthera.compile.diagnostics import Position
from nauthera.compile.mapping import (
    COPIED_MEMBERS,
    DEFAULT_NAMESPACE,
    PKCE_MEMBERS,
    SCHEME_PATTERN,
    UNNAMED_CLIENT,
    URI_PATTERN,
    metadata_spec,
    registration_vocabulary,
)
from nauthera.engines.tools import find_tool
from nauthera.importers.clients import ImportedClient, authclient
from nauthera.importers.dcr import names_of
from nauthera.importers.naming import NameRequest, assign_names, namespace_for
from nauthera.targets.base import CompileOptions
from nauthera.targets.outputs import compile_policies

from ..conftest import EXAMPLES, Cli
from ..harness.processes import opa_serving, wait_until
from ..targets.gatekeeper.corpus import GRANT_TYPES

DCR = Path(__file__).parents[1] / "importers" / "data" / "dcr"
DECISION_KEYS = ("allowed", "violations", "warnings", "dryrun", "policies")
PROD = {"tier": "prod", "env": "prod"}
#: The named examples in three imports whose names do not collide (the RFC 7591 and OpenID Connect
#: responses share client_id s6BhdRkqt3), with and without the labels prod policies select. An unnamed
#: request is `unnamed-client` to OPA and named after its file by the importer; see
#: test_unnamed_requests_differ_only_in_their_name.
GROUPS: list[tuple[dict[str, str], list[str]]] = [
    (PROD, ["browser-app.json", "native-app.json", "orders-service.json", "rfc7591-3.1-request.json"]),
    (
        {},
        [
            "desktop-assistant.json",
            "legacy-implicit.json",
            "rfc7591-3.2.1-response.json",
            "oidc-registration-3.1-request.json",
        ],
    ),
    (PROD, ["oidc-registration-3.2-response.json"]),
]
NAMED = [file for _, files in GROUPS for file in files]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples' bundle and generated tests, compiled once for this module."""
    out = tmp_path_factory.mktemp("registration") / "build"
    result = compile_policies(CompileOptions(paths=[EXAMPLES / "policies"], out=out))
    assert result.ok and result.bundle is not None, result.diagnostics
    return result.bundle


@pytest.fixture(scope="module")
def opa_url(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `opa run --server` on loopback serving the examples' bundle, for every request here."""
    log = tmp_path_factory.mktemp("opa") / "opa.log"
    process, url = opa_serving(bundle, log)
    try:
        wait_until(lambda: requests.get(f"{url}/health?bundles", timeout=2).ok, 30, "OPA to load the bundle")
        yield url
    finally:
        process.stop()
        assert process.handle is not None and process.handle.returncode in (0, -15), process.output()


def _register(opa_url: str, request: dict[str, Any], rule: str = "decision") -> Any:
    response = requests.post(
        f"{opa_url}/v1/data/nauthera/registration/{rule}", json={"input": request}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["result"]


def _name(document: dict[str, Any]) -> str:
    return str(document["metadata"]["name"])


def _request(
    metadata: Any, namespace: str = "team-a", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {"namespace": namespace, "client_metadata": metadata}
    if labels is not None:
        request["labels"] = labels
    return request


# --- a registration request through OPA's REST API --------------------------------------------------------


def test_a_registration_request_through_opas_rest_api(opa_url: str) -> None:
    metadata = json.loads((DCR / "browser-app.json").read_text())
    allowed = _register(opa_url, _request(metadata))
    assert allowed == {
        "allowed": True,
        "violations": [],
        "warnings": [],
        "dryrun": [],
        "policies": ["security/mobile-spa-policy"],
    }
    metadata["redirect_uris"] = ["http://shop.example.com/callback"]
    denied = _register(opa_url, _request(metadata))
    assert denied["allowed"] is False
    assert denied["registration_error"] == {
        "error": "invalid_redirect_uri",
        "error_description": "; ".join(v["message"] for v in denied["violations"]),
    }
    assert {v["field"] for v in denied["violations"]} == {"redirectUris.requireHttps"}


def test_violations_outside_redirect_uris_are_invalid_client_metadata(opa_url: str) -> None:
    metadata = {**json.loads((DCR / "browser-app.json").read_text()), "grant_types": ["implicit"]}
    denied = _register(opa_url, _request(metadata))
    assert denied["registration_error"]["error"] == "invalid_client_metadata"
    assert (
        'grant type "implicit" is not allowed by security/mobile-spa-policy'
        in (denied["registration_error"]["error_description"])
    )


def test_a_fapi2_registration_names_the_baseline(opa_url: str) -> None:
    """SPEC §10's members reach the decision: the payments namespace is under fapi2-security."""
    metadata = {
        "client_name": "Checkout",
        "redirect_uris": ["https://checkout.pay.example.com/cb"],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "PS256",
        "id_token_signed_response_alg": "ES256",
        "dpop_bound_access_tokens": True,
        "require_pushed_authorization_requests": True,
        "require_pkce": True,
        "scope": "openid",
    }
    allowed = _register(opa_url, _request(metadata, namespace="payments"))
    assert allowed["allowed"] is True, allowed
    denied = _register(
        opa_url, _request({**metadata, "dpop_bound_access_tokens": False}, namespace="payments")
    )
    assert [v["field"] for v in denied["violations"]] == ["senderConstrainedTokens"]
    assert denied["registration_error"]["error"] == "invalid_client_metadata"
    assert (
        "security/payments-fapi2 (baseline fapi2-security)"
        in denied["registration_error"]["error_description"]
    )


def test_an_ungoverned_registration_fails_closed(opa_url: str) -> None:
    denied = _register(opa_url, _request({"client_name": "Wiki"}, namespace="Other Team"))
    assert denied["violations"] == [
        {"policy": None, "field": "targets", "message": "no AuthPolicy governs AuthClient other-team/wiki"}
    ]
    assert denied["registration_error"]["error"] == "invalid_client_metadata"


@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"namespace": "team-a"},
        {"namespace": "team-a", "client_metadata": "redirect_uris=https://a"},
        {"namespace": "team-a", "client_metadata": None},
        {"namespace": 7, "client_metadata": {"client_name": "x"}},
        {"namespace": "team-a", "labels": "tier=prod", "client_metadata": {"client_name": "x"}},
        {"namespace": "team-a", "client_metadata": {"redirect_uris": "https://app.example.com/cb"}},
        {
            "namespace": "team-a",
            "client_metadata": {"require_pkce": "true", "token_endpoint_auth_method": "none"},
        },
        {
            "namespace": "team-a",
            "client_metadata": {"scope": ["openid"], "token_endpoint_auth_method": "none"},
        },
        {"namespace": "team-a", "client_metadata": {"application_type": "desktop"}},
    ],
)
def test_malformed_requests_are_refused_as_invalid_client_metadata(
    opa_url: str, request_body: dict[str, Any]
) -> None:
    denied = _register(opa_url, request_body)
    assert denied["allowed"] is False
    assert {v["field"] for v in denied["violations"]} == {"schema"}
    assert denied["registration_error"]["error"] == "invalid_client_metadata"
    assert denied["registration_error"]["error_description"].startswith(
        "AuthClient does not match its schema"
    )


def test_the_opa_input_is_not_a_request_at_all(opa_url: str) -> None:
    response = requests.post(
        f"{opa_url}/v1/data/nauthera/registration/decision", json={"input": "x"}, timeout=10
    )
    assert response.json()["result"]["registration_error"]["error"] == "invalid_client_metadata"


# --- the two mappings agree ---------------------------------------------------------------------------------


def test_import_then_check_and_the_registration_decision_agree(
    opa_url: str, bundle: Path, cli: Cli, tmp_path: Path
) -> None:
    """The same RFC 7591 documents through `nauthera import dcr | nauthera check` and through OPA."""
    imported: list[Path] = []
    expected_order: list[dict[str, Any]] = []  # `check` reports files in order, documents by name
    for index, (labels, files) in enumerate(GROUPS):
        flags = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
        result = cli("import", "dcr", *(DCR / f for f in files), "--namespace", "team-a", *flags)
        assert result.returncode == 0, result.stderr
        out = tmp_path / f"group-{index}.yaml"
        out.write_text(result.stdout)
        imported.append(out)
        documents = list(yaml.safe_load_all(result.stdout))
        requests = [_request(json.loads((DCR / file).read_text()), labels=labels or None) for file in files]
        registered = [_register(opa_url, request, "client") for request in requests]
        assert sorted(documents, key=_name) == sorted(registered, key=_name), files
        expected_order.extend(r for _, r in sorted(zip(map(_name, registered), requests, strict=True)))
    checked = cli("check", "--bundle", bundle, *imported, "--format", "json")
    assert checked.returncode in (0, 1), checked.stderr
    results = json.loads(checked.stdout)["results"]
    assert len(results) == len(expected_order) == len(NAMED)
    outcomes = []
    for request, result in zip(expected_order, results, strict=True):
        decision = _register(opa_url, request)
        assert {k: decision[k] for k in DECISION_KEYS} == {k: result[k] for k in DECISION_KEYS}, result[
            "client"
        ]
        assert ("registration_error" in decision) is (not decision["allowed"])
        outcomes.append(decision["allowed"])
    assert True in outcomes and False in outcomes  # the corpus exercises both answers


def test_unnamed_requests_differ_only_in_their_name(opa_url: str, cli: Cli) -> None:
    path = DCR / "rfc7591-3.1-software-statement-request.json"
    imported = yaml.safe_load(cli("import", "dcr", path, "--namespace", "team-a").stdout)
    registered = _register(opa_url, _request(json.loads(path.read_text())), "client")
    assert registered["metadata"]["name"] == UNNAMED_CLIENT
    assert imported["metadata"]["name"] == path.stem
    registered["metadata"]["name"] = path.stem
    assert imported == registered


def _random_metadata(rng: random.Random) -> dict[str, Any]:
    """Metadata of every shape the mapping meets: RFC values, odd types, nulls, unicode names."""
    texts = ["Shop", "My Example Client", "ÄÖÜ app", "日本語", "a.b..c", "-x-", "", "s6BhdRkqt3", "x" * 300]
    uris = [
        "https://app.example.com/cb",
        "http://127.0.0.1:8080/cb",
        "http://[::1]/cb",
        "http://localhost/cb",
        "com.example.app:/cb",
        "com.example.app:/cb#fragment",
        "myapp:/cb",
        "urn:ietf:wg:oauth:2.0:oob",
        "/relative",
        "HTTPS://APP.EXAMPLE.COM/cb",
        "https://*.example.com/cb",
    ]
    choices: dict[str, list[Any]] = {
        "client_name": [*texts, None, 5],
        "client_id": [*texts, None],
        "redirect_uris": [rng.sample(uris, rng.randint(0, 3)) for _ in range(4)] + ["https://a/cb", None],
        "grant_types": [rng.sample(GRANT_TYPES, rng.randint(0, 3)) for _ in range(4)]
        + [["client_credentials"], "code"],
        "response_types": [["code"], ["id_token token"], [], None, "code"],
        "token_endpoint_auth_method": ["none", "private_key_jwt", "client_secret_post", "bogus", None],
        "application_type": ["web", "native", "spa", "service", "kiosk", None, 1],
        "scope": ["openid profile", " openid  openid email ", "", ["openid"], None, "api:read"],
        "require_pkce": [True, False, "true", None],
        "code_challenge_method": ["S256", "plain", "s256", None],
        "dpop_bound_access_tokens": [True, False, "true", None],
        "tls_client_certificate_bound_access_tokens": [True, False, None],
        "require_pushed_authorization_requests": [True, False, None, 1],
        "token_endpoint_auth_signing_alg": ["PS256", "ES256", "none", None],
        "id_token_signed_response_alg": ["RS256", "EdDSA", "HS256", "ES257", None],
        "logo_uri": ["https://app.example.com/logo.png"],
        "example_extension_parameter": ["x"],
    }
    return {member: rng.choice(values) for member, values in choices.items() if rng.random() < 0.7}


def _expected_client(request: dict[str, Any]) -> dict[str, Any]:
    """The AuthClient the importer makes of `request`, built by the importer's own functions."""
    metadata = request["client_metadata"]
    namespace = namespace_for(request["namespace"]) if "namespace" in request else DEFAULT_NAMESPACE
    name_source, source_id = names_of(metadata)
    where = Position("request", 1, 1)
    if name_source is None:
        name = UNNAMED_CLIENT
    else:
        names, _ = assign_names([NameRequest(namespace, name_source, source_id or name_source, where)])
        assert names[0] is not None
        name = names[0]
    labels = request.get("labels") or {}
    client = ImportedClient(
        namespace, name_source or "", source_id or "", source_id, labels, metadata_spec(metadata), where
    )
    return authclient(name, client)


def test_the_python_and_rego_mappings_agree_on_500_random_requests(bundle: Path, tmp_path: Path) -> None:
    rng = random.Random(7591)
    namespaces = ["team-a", "Team A", "team.a", "管理", "-", "x" * 80, "default"]
    batch = []
    for _ in range(500):
        request: dict[str, Any] = {"client_metadata": _random_metadata(rng)}
        if rng.random() < 0.8:
            request["namespace"] = rng.choice(namespaces)
        if rng.random() < 0.5:
            request["labels"] = rng.choice([{}, {"tier": "prod"}, {"tier": "prod", "env": "prod"}])
        batch.append(request)
    query = (
        "clients := [c | some r in input.requests; c := data.nauthera.registration.client with input as r]"
    )
    stdin = tmp_path / "requests.json"
    stdin.write_text(json.dumps({"requests": batch}))
    completed = subprocess.run(
        [
            str(find_tool("opa")),
            "eval",
            "--bundle",
            str(bundle),
            "--input",
            str(stdin),
            "--format",
            "json",
            query,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    registered = json.loads(completed.stdout)["result"][0]["bindings"]["clients"]
    assert len(registered) == len(batch)
    for request, client in zip(batch, registered, strict=True):
        assert client == _expected_client(request), json.dumps(request)


def test_the_rendered_vocabulary_and_uri_grammar_are_pythons(opa_url: str) -> None:
    module = requests.get(f"{opa_url}/v1/data/nauthera/registration", timeout=10).json()["result"]
    for key, value in registration_vocabulary().items():
        if key not in ("default_namespace", "unnamed_client"):  # rendered into `default` rules
            assert module[key] == value, key
    assert module["copied_members"] == COPIED_MEMBERS
    assert module["pkce_members"] == {member: list(row) for member, row in PKCE_MEMBERS.items()}
    assert module["scheme_pattern"] == SCHEME_PATTERN
    lib = requests.get(f"{opa_url}/v1/data/nauthera/lib/uri_pattern", timeout=10).json()["result"]
    assert lib == URI_PATTERN.pattern


# --- the generated registration tests can fail --------------------------------------------------------------


def test_generated_registration_tests_catch_a_broken_registration_decision(
    bundle: Path, tmp_path: Path
) -> None:
    """Break the error code in the bundle's registration module: `opa test` must name the fixtures."""
    unpacked = tmp_path / "bundle"
    with tarfile.open(bundle) as tar:
        tar.extractall(unpacked, filter="data")
    module = unpacked / "nauthera" / "registration" / "decision.rego"
    module.write_text(
        module.read_text().replace('"invalid_redirect_uri" if {', '"invalid_client_metadata" if {')
    )
    tests = bundle.parent / "tests" / "opa"
    run = subprocess.run(
        [str(find_tool("opa")), "test", "--bundle", str(unpacked), str(tests)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode != 0
    for field, test in (
        ("requireHttps", "https_redirects"),
        ("allowWildcards", "redirect_wildcards"),
        ("allowedHosts", "redirect_hosts"),
    ):
        assert f"violates redirectUris.{field} (as a registration request)" in run.stdout
        assert f"test_{test}_enforced: FAIL" in run.stdout
    assert "FAIL: 3/14" in run.stdout, run.stdout
    shutil.rmtree(unpacked)
