"""`nauthera operator` against the real kube-apiserver and the real OPA (SPEC section 7), in order:
statuses of the examples and 500 generated clients match `nauthera check`; a tightened policy flips
existing clients within 5 s with Events; a deleted policy leaves its clients Ungoverned; an invalid
policy shows Invalid while its last good generation stays enforced; an API server restart loses no
update; `nauthera inventory`; the AuthPolicy webhook. Writes are counted in the API server's audit log.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nauthera.kube.policies import exported
from nauthera.kube.status import compliance

from ..harness.controlplane import ControlPlane
from ..harness.operator import RunningOperator, current, generated_client, list_objects, start_operator
from .conftest import (
    EXAMPLE_NAMESPACES,
    apply_now,
    cli_view,
    delete_now,
    example_clients,
    example_policies,
    mismatches,
    status_writes,
    wait_current,
    wait_for,
    warning_events,
)

GENERATED = 500
#: SPEC section 7: the status of every affected client is current within 5 s of a change.
AUDIT_SECONDS = 5.0


@pytest.fixture(scope="module")
def operator(
    open_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningOperator]:
    """The examples and 500 generated clients in the cluster, one operator (leader-elected, HTTPS)."""
    plane = open_cluster
    policies, clients = example_policies(), example_clients()
    clients += [generated_client(i, EXAMPLE_NAMESPACES) for i in range(GENERATED)]
    try:
        plane.apply(policies)
        plane.apply(clients)
        work = tmp_path_factory.mktemp("operator")
        running = start_operator(
            plane,
            work,
            "operator",
            "--leader-elect",
            "--lease-namespace",
            "nauthera-system",
            tls=plane.ca.serving("operator"),
        )
        try:
            running.wait_synced()
            yield running
        finally:
            running.stop()
    finally:  # also after a failed apply: the session's other tests share the cluster
        for plural, objects in (("authclients", clients), ("authpolicies", policies)):
            names = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects}
            for namespace in sorted({n for n, _ in names}):
                plane.kubectl("delete", plural, "--all", "-n", namespace, "--wait=false")


def test_statuses_match_nauthera_check(
    open_cluster: ControlPlane, operator: RunningOperator, tmp_path: Path
) -> None:
    revision, decisions = cli_view(open_cluster, tmp_path)
    assert len(decisions) >= GENERATED + len(example_clients())
    wait_current(open_cluster, decisions, operator.store, 60, "statuses to match")
    # The same documents compile to the same bundle: the operator enforces what `nauthera compile` gives.
    assert operator.readiness()["revision"] == revision
    reasons = {compliance(d)[1] for d in decisions.values()}
    assert reasons == {"Compliant", "PolicyViolation", "Ungoverned"}, reasons
    policies = list_objects(open_cluster, "authpolicies")
    for key, obj in policies.items():
        (condition,) = obj["status"]["conditions"]
        assert (condition["status"], condition["reason"]) == ("True", "Enforced"), (key, condition)
        assert obj["status"]["revision"] == revision


def test_kubectl_get_shows_compliance_at_a_glance(
    open_cluster: ControlPlane, operator: RunningOperator
) -> None:
    clients = open_cluster.kubectl("get", "authclients", "-n", "team-a").stdout.splitlines()
    assert clients[0].split()[:5] == ["NAME", "TYPE", "COMPLIANT", "REASON", "AUTH"], clients[0]
    shop = next(line for line in clients if line.startswith("shop-frontend "))
    assert shop.split()[1:4] == ["web", "True", "Compliant"], shop
    portal = next(line for line in clients if line.startswith("reporting-portal "))
    assert portal.split()[1:4] == ["web", "False", "PolicyViolation"], portal
    policies = open_cluster.kubectl("get", "authpolicies", "-n", "security").stdout.splitlines()
    assert policies[0].split()[:6] == ["NAME", "READY", "ACTION", "REVISION", "GOVERNED", "VIOLATING"]
    web = next(line for line in policies if line.startswith("web-apps-policy ")).split()
    assert web[1:3] == ["True", "deny"] and web[4].isdigit() and web[5].isdigit(), web


def _policy(plane: ControlPlane, key: str) -> dict[str, Any]:
    return list_objects(plane, "authpolicies")[key]


def test_tightening_a_policy_flips_existing_clients_within_5s_with_events(
    open_cluster: ControlPlane, operator: RunningOperator, tmp_path: Path
) -> None:
    plane = open_cluster
    _, before = cli_view(plane, tmp_path / "before")
    wait_current(plane, before, operator.store, 30, "statuses before the edit")
    tightened = exported(_policy(plane, "security/web-apps-policy"))
    tightened["spec"]["token"]["accessTokenTTL"] = "5m"
    tightened["spec"]["allowedScopes"] = ["openid", "profile"]
    _, after = cli_view(plane, tmp_path / "after", tightened)
    flipped = sorted(
        k for k in after if compliance(after[k])[0] is False and compliance(before[k])[0] is True
    )
    assert flipped, "the tightened policy must make some existing clients non-compliant"
    since = plane.audit_offset()
    started = time.monotonic()
    apply_now(plane, tightened)
    wait_current(plane, after, operator.store, 30, "the flip")
    seconds = time.monotonic() - started
    assert seconds <= AUDIT_SECONDS, f"statuses took {seconds:.1f} s"
    changed = {k for k in after if after[k] != before[k]}
    writes = status_writes(plane, since)
    clients_written = {key: n for (plural, key), n in writes.items() if plural == "authclients"}
    # Only the clients whose decision changed were written, each exactly once.
    assert set(clients_written) == changed and set(clients_written.values()) == {1}, clients_written
    assert writes[("authpolicies", "security/web-apps-policy")] == 1
    for key in flipped:
        events = warning_events(plane, key)
        assert events and "PolicyViolation" in events[-1]["message"], (key, events)


def test_deleting_a_policy_makes_its_clients_ungoverned(
    open_cluster: ControlPlane, operator: RunningOperator, tmp_path: Path
) -> None:
    plane = open_cluster
    only_mobile = ["team-b/desktop-sync", "team-b/legacy-dashboard", "team-sandbox/sandbox-spa"]
    started = time.monotonic()
    delete_now(plane, _policy(plane, "security/mobile-spa-policy"))

    def ungoverned() -> bool:
        clients = list_objects(plane, "authclients")
        return all(clients[k]["status"]["conditions"][0]["reason"] == "Ungoverned" for k in only_mobile)

    seconds = time.monotonic() - started + wait_for(ungoverned, 30, "Ungoverned clients")
    assert seconds <= AUDIT_SECONDS, f"took {seconds:.1f} s"
    _, decisions = cli_view(plane, tmp_path)
    wait_current(plane, decisions, operator.store, 30, "statuses after the delete")
    for key in only_mobile:
        status = list_objects(plane, "authclients")[key]["status"]
        assert status["policies"] == [] and [v["field"] for v in status["violations"]] == ["targets"]
        assert status["violations"][0]["policy"] is None  # as in the decision document


def test_an_invalid_policy_keeps_its_last_good_generation(
    open_cluster: ControlPlane, operator: RunningOperator, tmp_path: Path
) -> None:
    plane = open_cluster
    _, decisions = cli_view(plane, tmp_path / "good")
    wait_current(plane, decisions, operator.store, 30, "statuses before")
    good = exported(_policy(plane, "security/prod-baseline"))
    good_generation = _policy(plane, "security/prod-baseline")["metadata"]["generation"]
    enforced = operator.readiness()["revision"]
    broken = copy.deepcopy(good)
    broken["spec"]["token"]["accessTokenTTL"] = "7d"
    since = plane.audit_offset()
    plane.apply([broken])

    def invalid() -> dict[str, Any] | None:
        obj = _policy(plane, "security/prod-baseline")
        (condition,) = obj["status"]["conditions"]
        return condition if current(obj) and condition["reason"] == "Invalid" else None

    wait_for(invalid, AUDIT_SECONDS, "Ready=False/Invalid")
    condition = invalid()
    assert condition is not None and condition["status"] == "False"
    assert condition["message"].startswith(
        "spec.token.accessTokenTTL: token.accessTokenTTL '7d' is not a valid duration"
    ), condition["message"]
    assert 'write "168h"' in condition["message"] and condition["message"].endswith(
        f"(generation {good_generation} stays enforced)"
    )
    assert _policy(plane, "security/prod-baseline")["status"]["revision"] == enforced
    time.sleep(1.0)  # give a wrong re-evaluation time to show
    assert operator.readiness()["revision"] == enforced
    assert not [k for k in status_writes(plane, since) if k[0] == "authclients"]
    assert not mismatches(plane, decisions, operator.store)
    plane.apply([good])
    wait_for(
        lambda: _policy(plane, "security/prod-baseline")["status"]["conditions"][0]["reason"] == "Enforced",
        10,
        "Enforced again",
    )


def test_an_api_server_restart_loses_no_update(
    open_cluster: ControlPlane, operator: RunningOperator, tmp_path: Path
) -> None:
    plane = open_cluster
    first = generated_client(GENERATED + 1, ["team-a"])
    plane.apply([first])
    down = plane.restart_apiserver()
    wait_for(
        lambda: plane.api.get(plane.url("/apis/auth.nauthera.io/v1alpha1/authclients?limit=1")).ok,
        30,
        "the API server to answer lists (it throttles with 429 while it warms up)",
    )
    # Changes right after the restart, while the operator's watches are still reconnecting.
    second = generated_client(GENERATED + 2, ["team-b"])
    changed = copy.deepcopy(first)
    changed["spec"]["scopes"] = ["openid", "admin"]
    plane.apply([second, changed])
    _, decisions = cli_view(plane, tmp_path)
    wait_current(plane, decisions, operator.store, 45, f"statuses after a restart ({down:.1f} s down)")
    log = operator.process.output()
    assert "retrying in" in log, "the operator's watches never noticed the restart"


def test_inventory_lists_every_client_with_its_findings(
    open_cluster: ControlPlane, operator: RunningOperator
) -> None:
    command = [sys.executable, "-m", "nauthera", "inventory", "--kubeconfig", str(open_cluster.kubeconfig)]
    as_json = subprocess.run(
        [*command, "--format", "json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert as_json.returncode == 1, as_json.stderr  # some clients are not compliant
    inventory = json.loads(as_json.stdout)
    clients = list_objects(open_cluster, "authclients")
    assert {c["client"] for c in inventory["clients"]} == set(clients)
    portal = next(c for c in inventory["clients"] if c["client"] == "team-a/reporting-portal")
    assert (portal["compliant"], portal["reason"]) == ("False", "PolicyViolation")
    assert portal["violations"] == clients["team-a/reporting-portal"]["status"]["violations"]
    web = next(p for p in inventory["policies"] if p["policy"] == "security/web-apps-policy")
    status = list_objects(open_cluster, "authpolicies")["security/web-apps-policy"]["status"]
    assert (web["governedClients"], web["violatingClients"]) == (
        status["governedClients"],
        status["violatingClients"],
    )
    text = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert text.returncode == 1
    assert "  team-a/reporting-portal: False PolicyViolation; policies: security/prod-baseline" in text.stdout
    assert "      violation: [token.accessTokenTTL] access token TTL" in text.stdout
    assert "  security/web-apps-policy: Ready=True Enforced; deny; governs" in text.stdout


def test_the_webhook_refuses_invalid_policies_with_compile_diagnostics(
    open_cluster: ControlPlane, operator: RunningOperator
) -> None:
    plane = open_cluster
    configuration = yaml.safe_load(
        next(
            doc
            for doc in (Path(__file__).resolve().parents[2] / "deploy/kubernetes/operator.yaml")
            .read_text()
            .split("\n---\n")
            if "kind: ValidatingWebhookConfiguration" in doc
        )
    )
    webhook = configuration["webhooks"][0]
    webhook["clientConfig"] = {
        "url": f"{operator.url}{webhook['clientConfig']['service']['path']}",
        "caBundle": base64.b64encode(plane.ca.pem).decode(),
    }
    configuration["metadata"].pop("annotations", None)
    plane.apply([configuration])
    policy = {
        "apiVersion": "auth.nauthera.io/v1alpha1",
        "kind": "AuthPolicy",
        "metadata": {"name": "webhook-probe", "namespace": "security"},
        "spec": {
            "targets": {"namespaces": ["nobody-*"]},
            "token": {"accessTokenTTL": "7d"},
            "redirectUris": {"allowedHosts": ["https://login.example.com"]},
        },
    }
    try:

        def refused() -> subprocess.CompletedProcess[str] | None:
            result = plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy), check=False)
            return result if result.returncode != 0 and "denied the request" in result.stderr else None

        wait_for(refused, 30, "the webhook to refuse an invalid AuthPolicy", interval=0.5)
        result = refused()
        assert result is not None
        assert "spec.token.accessTokenTTL: token.accessTokenTTL '7d' is not a valid duration" in result.stderr
        assert (
            "spec.redirectUris.allowedHosts[0]: allowedHosts entry 'https://login.example.com' is a URL"
            in result.stderr
        )
        assert (
            plane.kubectl("get", "authpolicy", "webhook-probe", "-n", "security", check=False).returncode != 0
        )
        warned = copy.deepcopy(policy)
        warned["spec"] = {"targets": {"namespaces": ["nobody-*"]}, "redirectUris": {"allowLoopback": True}}
        accepted = plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(warned), interleaved=True)
        assert (
            "Warning: spec.redirectUris.allowLoopback: allowLoopback only relaxes requireHttps"
            in accepted.stdout
        )
    finally:
        plane.kubectl(
            "delete",
            "validatingwebhookconfiguration",
            configuration["metadata"]["name"],
            "--ignore-not-found",
        )
        plane.kubectl("delete", "authpolicy", "webhook-probe", "-n", "security", "--ignore-not-found")
