"""deploy/crds on a real kube-apiserver: Established, status subresource, printer columns, explain, and
strict field validation that refuses unknown fields with a readable message."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from ..harness.controlplane import ControlPlane, ensure_namespaces
from .conftest import example_clients

CRDS = {"AuthClient": "authclients.auth.nauthera.io", "AuthPolicy": "authpolicies.auth.nauthera.io"}
COLUMNS = {
    "AuthClient": ["Type", "Compliant", "Reason", "Auth Method"],
    "AuthPolicy": ["Ready", "Action", "Revision", "Governed", "Violating"],
}


def _crd(plane: ControlPlane, name: str) -> dict[str, Any]:
    response = plane.api.get(plane.url(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"))
    response.raise_for_status()
    crd: dict[str, Any] = response.json()
    return crd


def test_crds_are_established_with_a_status_subresource_and_columns(cluster: ControlPlane) -> None:
    for kind, name in CRDS.items():
        crd = _crd(cluster, name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True", conditions
        (version,) = crd["spec"]["versions"]
        assert version["subresources"] == {"status": {}}
        default_columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
        assert default_columns[: len(COLUMNS[kind])] == COLUMNS[kind], default_columns


def test_applying_the_crds_again_changes_nothing(cluster: ControlPlane) -> None:
    before = {name: _crd(cluster, name)["metadata"]["resourceVersion"] for name in CRDS.values()}
    applied = cluster.kubectl("apply", "--server-side", "-f", "deploy/crds")
    assert applied.stdout.count("serverside-applied") == len(CRDS), applied.stdout
    after = {name: _crd(cluster, name)["metadata"]["resourceVersion"] for name in CRDS.values()}
    assert after == before


def test_kubectl_explain_describes_redirect_uris(cluster: ControlPlane) -> None:
    explained = cluster.kubectl("explain", "authpolicy.spec.redirectUris").stdout
    fields = ("requireHttps", "allowLoopback", "allowWildcards", "allowedHosts", "allowPrivateUseSchemes")
    for field in (*fields, "allowedSchemes", "forbidFragments"):
        assert f"  {field}\t<" in explained, explained
    # What a policy author needs to know without opening the SPEC: the exemption and the host globs.
    text = " ".join(explained.split())  # kubectl wraps descriptions at 80 columns
    assert (
        "http://127.0.0.1[:port]/... and http://[::1][:port]/... (RFC 8252). localhost is never exempt."
        in text
    )
    assert '"*" matches exactly one label (*.example.com matches shop.example.com, not example.com' in text
    assert 'A scheme without a "." (myapp:) is never private-use.' in text
    baselines = " ".join(cluster.kubectl("explain", "authpolicy.spec.baselines").stdout.split())
    assert "fapi2-security (FAPI 2.0 Security Profile: all of oauth2.1" in baselines
    binding = " ".join(cluster.kubectl("explain", "authclient.spec.dpopBoundAccessTokens").stdout.split())
    assert "bound to a DPoP key (RFC 9449)" in binding
    conditions = " ".join(cluster.kubectl("explain", "authclient.status.conditions").stdout.split())
    assert "reason PolicyViolation (a deny finding), Ungoverned" in conditions


def test_strict_field_validation_refuses_unknown_fields_readably(cluster: ControlPlane) -> None:
    ensure_namespaces(cluster, ["team-a", "security"])
    client = {
        "apiVersion": "auth.nauthera.io/v1alpha1",
        "kind": "AuthClient",
        "metadata": {"name": "typo", "namespace": "team-a"},
        "spec": {"allowedScope": ["openid"], "pkce": {"required": True, "methd": "S256"}},
    }
    refused = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(client), check=False)
    assert refused.returncode == 1
    assert 'strict decoding error: unknown field "spec.allowedScope", unknown field "spec.pkce.methd"' in (
        refused.stderr
    ), refused.stderr
    policy = {
        "apiVersion": "auth.nauthera.io/v1alpha1",
        "kind": "AuthPolicy",
        "metadata": {"name": "typo", "namespace": "security"},
        "spec": {"redirectUris": {"requireHTTPS": True}, "enforcementAction": "block"},
    }
    refused = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy), check=False)
    assert refused.returncode == 1
    assert 'unknown field "spec.redirectUris.requireHTTPS"' in refused.stderr, refused.stderr
    wrong_value = copy.deepcopy(policy)
    wrong_value["spec"] = {"enforcementAction": "block"}
    refused = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(wrong_value), check=False)
    assert refused.returncode == 1
    assert (
        'spec.enforcementAction: Unsupported value: "block": supported values: "deny", "warn", "dryrun"'
        in (refused.stderr)
    ), refused.stderr


CLIENT_STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "revision": "25e685ade611bd95489a6417",
    "policies": ["security/web-apps-policy"],
    "violations": [
        {
            "policy": "security/web-apps-policy",
            "field": "token.accessTokenTTL",
            "message": 'access token TTL "1h" exceeds the maximum 15m set by security/web-apps-policy',
        },
        {"policy": None, "field": "targets", "message": "no AuthPolicy governs AuthClient team-a/x"},
    ],
    "warnings": [],
    "dryrun": [],
    "conditions": [
        {
            "type": "Compliant",
            "status": "False",
            "reason": "PolicyViolation",
            "message": "1 violation: token.accessTokenTTL (security/web-apps-policy)",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 1,
        }
    ],
}
POLICY_STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "revision": "25e685ade611bd95489a6417",
    "governedClients": 3,
    "violatingClients": 1,
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Enforced",
            "message": "enforced by revision 25e685ade611bd95489a6417",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


def _write_status(plane: ControlPlane, path: str, status: dict[str, Any]) -> Any:
    """Replace the status (a PUT to the subresource, as a controller's update does)."""
    current = plane.api.get(plane.url(path), timeout=30).json()
    return plane.api.put(plane.url(f"{path}/status"), json={**current, "status": status}, timeout=30)


def test_status_is_written_only_through_the_subresource(no_admission: ControlPlane) -> None:
    plane = no_admission
    client = example_clients()["web-shop-ok.yaml"]
    client["metadata"]["name"] = "status-subresource"
    plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(client))
    path = "/apis/auth.nauthera.io/v1alpha1/namespaces/team-a/authclients/status-subresource"
    try:
        patched = _write_status(plane, path, CLIENT_STATUS)
        assert patched.status_code == 200, patched.text
        assert patched.json()["status"] == CLIENT_STATUS, "the schema keeps every field, null policy included"
        listed = plane.kubectl("get", "authclient", "status-subresource", "-n", "team-a").stdout.split("\n")
        assert listed[0].split()[:5] == ["NAME", "TYPE", "COMPLIANT", "REASON", "AUTH"], listed
        assert listed[1].split()[:4] == ["status-subresource", "web", "False", "PolicyViolation"], listed
        # A write to the main resource cannot change status (and users cannot forge compliance).
        forged = copy.deepcopy(client)
        forged["status"] = {"conditions": [{**CLIENT_STATUS["conditions"][0], "status": "True"}]}
        plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(forged))
        assert plane.api.get(plane.url(path)).json()["status"] == CLIENT_STATUS
        bad = copy.deepcopy(CLIENT_STATUS)
        bad["conditions"][0]["status"] = "Maybe"
        bad["violations"][0]["field"] = "bogus"
        refused = _write_status(plane, path, bad)
        assert refused.status_code == 422
        message = refused.json()["message"]
        assert 'status.conditions[0].status: Unsupported value: "Maybe"' in message, message
        assert 'status.violations[0].field: Unsupported value: "bogus"' in message, message
    finally:
        plane.kubectl("delete", "authclient", "status-subresource", "-n", "team-a")


def test_policy_status_shows_in_printer_columns(no_admission: ControlPlane) -> None:
    plane = no_admission
    ensure_namespaces(plane, ["security"])
    policy = {
        "apiVersion": "auth.nauthera.io/v1alpha1",
        "kind": "AuthPolicy",
        "metadata": {"name": "status-columns", "namespace": "security"},
        "spec": {"enforcementAction": "deny", "allowedGrantTypes": ["authorization_code"]},
    }
    plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy))
    try:
        path = "/apis/auth.nauthera.io/v1alpha1/namespaces/security/authpolicies/status-columns"
        patched = _write_status(plane, path, POLICY_STATUS)
        assert patched.status_code == 200, patched.text
        listed = plane.kubectl("get", "authpolicy", "status-columns", "-n", "security").stdout.split("\n")
        assert listed[0].split()[:6] == ["NAME", "READY", "ACTION", "REVISION", "GOVERNED", "VIOLATING"]
        assert listed[1].split()[:6] == [
            "status-columns",
            "True",
            "deny",
            POLICY_STATUS["revision"],
            "3",
            "1",
        ]
    finally:
        plane.kubectl("delete", "authpolicy", "status-columns", "-n", "security")
