"""The real Gatekeeper controller with the generated templates and constraints: its webhook decides the
examples as the OPA bundle does, and its audit reports existing clients that a tightened policy now
violates (in each Constraint's status), exactly as OPA decides them."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any

import yaml
from nauthera.engines.check import evaluate

from ..harness.admission import Compiled, compile_for_admission, dry_run_create
from ..harness.controlplane import ControlPlane
from ..harness.examples import expected_outcomes
from ..harness.gatekeeper import Gatekeeper
from ..harness.processes import wait_until
from .conftest import example_clients, path_of
from .expectations import constraint_names, mismatch

FINDING_LISTS = ("violations", "warnings", "dryrun")


def test_gatekeeper_decides_the_examples_like_opa(
    gatekeeper_admission: Gatekeeper,
    cluster: ControlPlane,
    compiled_examples: Compiled,
    example_decisions: dict[str, dict[str, Any]],
) -> None:
    names = constraint_names(compiled_examples)
    clients = example_clients()
    for file, expected in expected_outcomes().items():
        outcome = dry_run_create(cluster, clients[file])
        assert outcome.allowed is expected.allowed, f"{file}: {outcome}"
        problem = mismatch(gatekeeper_admission.name, outcome, example_decisions[file], names)
        assert problem is None, f"{file}: {problem}"


def test_kubectl_shows_gatekeeper_denials_and_warnings(
    gatekeeper_admission: Gatekeeper, cluster: ControlPlane
) -> None:
    denied = cluster.kubectl(
        "create", "--dry-run=server", "-f", path_of("spa-implicit-grant.yaml"), check=False
    )
    assert denied.returncode == 1
    assert (
        'admission webhook "validation.gatekeeper.sh" denied the request: [security-mobile-spa-policy] '
        'grant type "implicit" is not allowed by security/mobile-spa-policy'
    ) in denied.stderr, denied.stderr
    warned = cluster.kubectl("create", "--dry-run=server", "-f", path_of("device-warn.yaml"))
    assert warned.stderr.startswith(
        'Warning: [security-device-flow-warn] token endpoint auth method "client_secret_basic"'
    ), warned.stderr
    assert warned.stdout.strip() == "authclient.auth.nauthera.io/lobby-display created (server dry run)"


def _audited(
    gatekeeper: Gatekeeper, constraint: dict[str, Any], since: datetime.datetime
) -> dict[str, Any] | None:
    """The constraint's status once an audit that started after `since` reported it."""
    current = gatekeeper.constraint(constraint["kind"], constraint["metadata"]["name"])
    status = current.get("status") or {}
    stamp = status.get("auditTimestamp")
    if not stamp or datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= since:
        return None
    return status


def test_audit_reports_existing_clients_that_a_tightened_policy_violates(
    gatekeeper_admission: Gatekeeper, cluster: ControlPlane, compiled_examples: Compiled, tmp_path: Path
) -> None:
    client = example_clients()["web-shop-ok.yaml"]
    client["metadata"]["name"] = "audited-shop"
    assert client["spec"]["token"]["accessTokenTTL"] == "10m"
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(client))  # admitted: 10m <= 15m
    try:
        source = tmp_path / "source"
        shutil.copytree(compiled_examples.policies, source)
        edited = source / "web-apps-policy.yaml"
        policy = yaml.safe_load(edited.read_text())
        policy["spec"]["token"]["accessTokenTTL"] = "5m"
        edited.write_text(yaml.safe_dump(policy))
        tightened = compile_for_admission(source, tmp_path / "tightened")
        gatekeeper_admission.load(tightened)
        since = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        existing = cluster.api.get(
            cluster.url("/apis/auth.nauthera.io/v1alpha1/authclients"), timeout=30
        ).json()
        clients = existing["items"]
        assert any(c["metadata"]["name"] == "audited-shop" for c in clients)
        decisions = evaluate(tightened.bundle, clients)
        names = constraint_names(tightened)
        for constraint in tightened.constraints():
            status = wait_until(
                lambda c=constraint: _audited(gatekeeper_admission, c, since),
                60,
                f"an audit of {constraint['metadata']['name']} after the tightening",
                interval=0.5,
            )
            policy_id = next(p for p, n in names.items() if n == constraint["metadata"]["name"])
            wanted = {
                (c["metadata"]["namespace"], c["metadata"]["name"], finding["message"])
                for c, decision in zip(clients, decisions, strict=True)
                for key in FINDING_LISTS
                for finding in decision[key]
                if finding["policy"] == policy_id
            }
            found = {(v["namespace"], v["name"], v["message"]) for v in status.get("violations", [])}
            assert found == wanted, constraint["metadata"]["name"]
            assert status["totalViolations"] == len(wanted)
        shop_status = gatekeeper_admission.constraint(
            "NautheraAuthClientPolicy", names["security/web-apps-policy"]
        )["status"]
        assert {
            "enforcementAction": "deny",
            "group": "auth.nauthera.io",
            "version": "v1alpha1",
            "kind": "AuthClient",
            "namespace": "team-a",
            "name": "audited-shop",
            "message": 'access token TTL "10m" exceeds the maximum 5m set by security/web-apps-policy',
        }.items() <= next(v for v in shop_status["violations"] if v["name"] == "audited-shop").items()
    finally:
        cluster.kubectl("delete", "authclient", "audited-shop", "-n", "team-a")
