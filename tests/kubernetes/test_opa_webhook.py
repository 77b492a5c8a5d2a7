"""OPA as the admission webhook (SPEC section 6), through the real API server and the real kubectl.

OPA runs the arguments, config and authorization policy of deploy/kubernetes/opa-webhook.yaml, fed by a
real `nauthera sidecar` (bundle protocol, long polling); the webhook configuration is the manifest's,
pointed at OPA on loopback. Every example client gets exactly its outcome from EXPECTED.md.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..harness.admission import compile_for_admission, dry_run_create
from ..harness.controlplane import ControlPlane
from ..harness.examples import Expected, expected_outcomes
from ..harness.opa_webhook import OpaWebhook
from .conftest import example_clients, path_of
from .expectations import PREFIX, labelled

OUTCOMES = expected_outcomes()


def _tag(finding: tuple[str | None, str]) -> str:
    policy, field = finding
    return f"[{policy} {field}] " if policy else f"[{field}] "


def _pairs(findings: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    return [(f["policy"], f["field"]) for f in findings]


@pytest.mark.parametrize("file", sorted(OUTCOMES))
def test_kubectl_apply_gets_the_expected_outcome(
    opa_admission: OpaWebhook,
    cluster: ControlPlane,
    example_decisions: dict[str, dict[str, Any]],
    file: str,
) -> None:
    expected: Expected = OUTCOMES[file]
    decision = example_decisions[file]
    assert _pairs(decision["violations"]) == list(expected.violations)
    assert _pairs(decision["warnings"]) == list(expected.warnings)
    assert _pairs(decision["dryrun"]) == list(expected.dryrun)
    namespace, name = expected.client.split("/")
    cluster.kubectl("delete", "authclient", name, "-n", namespace, "--ignore-not-found")
    applied = cluster.kubectl("apply", "-f", path_of(file), check=False)
    # Warn findings come back as `Warning:` lines naming the policy and the field; dryrun ones never show.
    warnings = [line for line in applied.stderr.splitlines() if line.startswith("Warning: ")]
    assert warnings == [f"Warning: {labelled(w)}" for w in decision["warnings"]], applied.stderr
    exists = cluster.kubectl("get", "authclient", name, "-n", namespace, check=False).returncode == 0
    if expected.allowed:
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.strip() == f"authclient.auth.nauthera.io/{name} created"
        assert exists
        return
    assert applied.returncode == 1 and not exists, applied.stdout
    # kubectl prints the API server's refusal: the webhook's name, SPEC section 6's message, and every
    # violation with its policy and field, in the decision's order.
    errors = [line for line in applied.stderr.splitlines() if line.startswith("Error from server")]
    assert errors == [
        f'Error from server (Forbidden): error when creating "{path_of(file)}": admission webhook '
        f'"{opa_admission.name}" denied the request: {PREFIX}'
        + "; ".join(labelled(v) for v in decision["violations"])
    ], applied.stderr
    for finding in expected.violations:
        assert _tag(finding) in errors[0]


def test_an_update_is_admitted_like_a_create(opa_admission: OpaWebhook, cluster: ControlPlane) -> None:
    client = example_clients()["web-shop-ok.yaml"]
    client["metadata"]["name"] = "shop-update"
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(client))
    try:
        client["spec"]["grantTypes"] = [*client["spec"]["grantTypes"], "implicit"]
        updated = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(client), check=False)
        assert updated.returncode == 1
        assert "error when applying patch" in updated.stderr and PREFIX in updated.stderr, updated.stderr
        assert '[security/web-apps-policy allowedGrantTypes] grant type "implicit"' in updated.stderr
        stored = cluster.kubectl("get", "authclient", "shop-update", "-n", "team-a", "-o", "yaml").stdout
        assert "implicit" not in stored
    finally:
        cluster.kubectl("delete", "authclient", "shop-update", "-n", "team-a")


def test_a_policy_edit_reaches_admission(
    opa_admission: OpaWebhook, cluster: ControlPlane, tmp_path: Path
) -> None:
    """Relaxing mobile-spa-policy (in a copy) through the sidecar admits the refused implicit-grant SPA."""
    client = example_clients()["spa-implicit-grant.yaml"]
    assert not dry_run_create(cluster, client).allowed
    source = tmp_path / "source"
    shutil.copytree(opa_admission.policies, source)
    edited = source / "mobile-spa-policy.yaml"
    policy = yaml.safe_load(edited.read_text())
    policy["spec"]["allowedGrantTypes"].append("implicit")
    policy["spec"]["allowedResponseTypes"] = ["code", "token", "id_token token"]
    edited.write_text(yaml.safe_dump(policy))
    relaxed = compile_for_admission(source, tmp_path / "relaxed")
    opa_admission.load(relaxed)
    outcome = dry_run_create(cluster, client)
    assert outcome.allowed, outcome.message


def test_opa_down_refuses_authclients_and_says_why(opa_admission: OpaWebhook, cluster: ControlPlane) -> None:
    """failurePolicy Fail: with OPA stopped nothing is admitted, and the error names the policy engine."""
    client = copy.deepcopy(example_clients()["web-shop-ok.yaml"])
    client["metadata"]["name"] = "while-opa-is-down"
    assert dry_run_create(cluster, client).allowed
    opa_admission.stop_opa()
    try:
        refused = cluster.kubectl("create", "-f", "-", stdin=yaml.safe_dump(client), check=False)
        assert refused.returncode == 1
        assert (
            f'Error from server (InternalError): error when creating "STDIN": Internal error occurred: '
            f'failed calling webhook "{opa_admission.name}": failed to call webhook: Post '
            f'"{opa_admission.opa_url}/v0/data/nauthera/admission/review?timeout=5s": dial tcp '
        ) in refused.stderr, refused.stderr
        assert "connect: connection refused" in refused.stderr
        assert "opa-policy-engine" in refused.stderr, "the webhook's name says which engine is unreachable"
        outcome = dry_run_create(cluster, client)
        assert outcome.status == 500 and outcome.failed_webhook == opa_admission.name, outcome
    finally:
        opa_admission.start_opa()
    assert dry_run_create(cluster, client).allowed


def test_opa_answers_only_the_admission_call(opa_admission: OpaWebhook) -> None:
    """The manifest's authorization policy: OPA's REST API serves admission reviews and health only."""
    https = opa_admission.https
    assert https.get(f"{opa_admission.opa_url}/v1/data", timeout=5).status_code == 401
    assert https.put(f"{opa_admission.opa_url}/v1/policies/x", data="package x", timeout=5).status_code == 401
    assert https.get(f"{opa_admission.opa_url}/health", timeout=5).status_code == 200
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "1"}}
    answer = https.post(f"{opa_admission.opa_url}/v0/data/nauthera/admission/review", json=review, timeout=5)
    assert answer.status_code == 200 and answer.json()["response"]["allowed"] is True
