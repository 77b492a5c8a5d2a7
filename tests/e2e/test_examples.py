"""End to end on examples/: the CLI and the real OPA give the decisions in examples/clients/EXPECTED.md."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..conftest import EXAMPLES, Cli

S = "security/"
#: file -> (allowed, violations, warnings, dryrun, governing policies), as in examples/clients/EXPECTED.md.
EXPECTED: dict[
    str, tuple[bool, set[tuple[str | None, str]], set[tuple[str, str]], set[tuple[str, str]], set[str]]
] = {
    "backend-orders-ok.yaml": (
        True,
        set(),
        set(),
        set(),
        {S + "backend-services-policy", S + "prod-baseline"},
    ),
    "device-warn.yaml": (
        True,
        set(),
        {(S + "device-flow-warn", "allowedTokenEndpointAuthMethods")},
        set(),
        {S + "device-flow-warn"},
    ),
    "labs-dryrun.yaml": (
        True,
        set(),
        set(),
        {(S + "experimental-dryrun", "token.accessTokenTTL")},
        {S + "experimental-dryrun", S + "mobile-spa-policy"},
    ),
    "native-localhost-redirect.yaml": (
        False,
        {
            (S + "mobile-spa-policy", "redirectUris.allowedHosts"),
            (S + "mobile-spa-policy", "redirectUris.requireHttps"),
        },
        set(),
        set(),
        {S + "mobile-spa-policy"},
    ),
    "native-foreign-scheme.yaml": (
        False,
        {(S + "mobile-spa-policy", "redirectUris.allowedSchemes")},
        set(),
        set(),
        {S + "mobile-spa-policy"},
    ),
    "native-loopback-ok.yaml": (True, set(), set(), set(), {S + "mobile-spa-policy", S + "prod-baseline"}),
    "native-private-use-ok.yaml": (True, set(), set(), set(), {S + "mobile-spa-policy", S + "prod-baseline"}),
    "payments-bearer-tokens.yaml": (
        False,
        {
            (S + "payments-fapi2", "allowedSigningAlgorithms"),
            (S + "payments-fapi2", "allowedTokenEndpointAuthMethods"),
            (S + "payments-fapi2", "requirePushedAuthorizationRequests"),
            (S + "payments-fapi2", "senderConstrainedTokens"),
        },
        set(),
        set(),
        {S + "payments-fapi2"},
    ),
    "payments-fapi2-ok.yaml": (True, set(), set(), set(), {S + "payments-fapi2", S + "prod-baseline"}),
    "payments-mtls-ok.yaml": (
        True,
        set(),
        set(),
        set(),
        {S + "backend-services-payments", S + "backend-services-policy", S + "prod-baseline"},
    ),
    "payments-without-mtls.yaml": (
        False,
        {(S + "backend-services-payments", "allowedTokenEndpointAuthMethods")},
        set(),
        set(),
        {S + "backend-services-payments", S + "backend-services-policy"},
    ),
    "spa-implicit-grant.yaml": (
        False,
        {(S + "mobile-spa-policy", "allowedGrantTypes")},
        set(),
        set(),
        {S + "mobile-spa-policy"},
    ),
    "spa-ttl-in-days.yaml": (
        False,
        {(S + "mobile-spa-policy", "token.refreshTokenTTL")},
        set(),
        set(),
        {S + "mobile-spa-policy"},
    ),
    "ungoverned-client.yaml": (False, {(None, "targets")}, set(), set(), set()),
    "web-long-access-token.yaml": (
        False,
        {(S + "web-apps-policy", "token.accessTokenTTL")},
        set(),
        set(),
        {S + "prod-baseline", S + "web-apps-policy"},
    ),
    "web-shop-ok.yaml": (True, set(), set(), set(), {S + "prod-baseline", S + "web-apps-policy"}),
}


def _pairs(entries: list[dict[str, Any]]) -> set[tuple[str | None, str]]:
    return {(e["policy"], e["field"]) for e in entries}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("examples")
    subprocess.run(
        [sys.executable, "-m", "nauthera", "compile", str(EXAMPLES / "policies"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out / "bundle.tar.gz"


def test_check_json_matches_expected_decisions(cli: Cli, compiled: Path) -> None:
    result = cli("check", "--bundle", compiled, EXAMPLES / "clients", "--format", "json")
    assert result.returncode == 1, "some example clients are denied, so check must exit 1"
    results = json.loads(result.stdout)["results"]
    by_file = {Path(r["source"].rsplit(":", 1)[0]).name: r for r in results}
    assert set(by_file) == set(EXPECTED)
    for file, (allowed, violations, warnings, dryrun, _) in EXPECTED.items():
        got = by_file[file]
        assert got["allowed"] is allowed, file
        assert _pairs(got["violations"]) == violations, file
        assert _pairs(got["warnings"]) == warnings, file
        assert _pairs(got["dryrun"]) == dryrun, file
        assert set(got) >= {"client", "source", "allowed", "violations", "warnings", "dryrun"}
        for entry in got["violations"] + got["warnings"] + got["dryrun"]:
            assert set(entry) == {"policy", "field", "message"}
            if entry["policy"]:
                assert entry["policy"] in entry["message"], (
                    "messages name the policy a developer must satisfy"
                )


def test_decision_lists_governing_policies_and_is_sorted(opa: Callable[..., Any], compiled: Path) -> None:
    for file, (_, _, _, _, governing) in EXPECTED.items():
        client = yaml.safe_load((EXAMPLES / "clients" / file).read_text())
        result = opa(
            "eval",
            "--bundle",
            compiled,
            "--stdin-input",
            "--format",
            "json",
            "data.nauthera.authclient.decision",
            stdin=json.dumps(client),
        )
        decision = json.loads(result.stdout)["result"][0]["expressions"][0]["value"]
        assert set(decision["policies"]) == governing, file
        assert decision["policies"] == sorted(decision["policies"])
        for key in ("violations", "warnings", "dryrun"):
            keys = [(e["policy"] or "", e["field"], e["message"]) for e in decision[key]]
            assert keys == sorted(keys), f"{file}: {key} must be sorted by policy, field, message"


def _review(client: dict[str, Any], operation: str = "CREATE", kind: str = "AuthClient") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "123",
            "operation": operation,
            "object": client,
            "kind": {"group": "auth.nauthera.io", "version": "v1alpha1", "kind": kind},
        },
    }


@pytest.mark.parametrize(
    ("file", "operation", "kind", "allowed"),
    [
        ("web-shop-ok.yaml", "CREATE", "AuthClient", True),
        ("spa-implicit-grant.yaml", "CREATE", "AuthClient", False),
        ("spa-implicit-grant.yaml", "UPDATE", "AuthClient", False),
        ("spa-implicit-grant.yaml", "DELETE", "AuthClient", True),
        ("spa-implicit-grant.yaml", "CREATE", "AuthPolicy", True),
        ("device-warn.yaml", "CREATE", "AuthClient", True),
    ],
)
def test_admission_review_entrypoint(
    opa: Callable[..., Any], compiled: Path, file: str, operation: str, kind: str, allowed: bool
) -> None:
    client = yaml.safe_load((EXAMPLES / "clients" / file).read_text())
    result = opa(
        "eval",
        "--bundle",
        compiled,
        "--stdin-input",
        "--format",
        "json",
        "data.nauthera.admission.review",
        stdin=json.dumps(_review(client, operation, kind)),
    )
    review = json.loads(result.stdout)["result"][0]["expressions"][0]["value"]
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    response = review["response"]
    assert response["uid"] == "123"
    assert response["allowed"] is allowed
    if not allowed:
        assert response["status"]["code"] == 403
        assert "implicit" in response["status"]["message"]
    if file == "device-warn.yaml":
        assert any("client_secret_basic" in w for w in response["warnings"])


def test_generated_and_hand_written_tests_pass(cli: Cli) -> None:
    result = cli("test", EXAMPLES / "policies")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: 14/14" in result.stdout
    assert "coverage of generated Rego:" in result.stdout
