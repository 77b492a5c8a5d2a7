"""Fixtures for the operator tests: the session's control plane with the CRDs, no admission webhook (so
non-compliant clients can exist, as they do in a cluster that adopts Nauthera), and helpers to wait
for statuses and to count the operator's writes in the API server's audit log."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from nauthera.engines.check import evaluate
from nauthera.kube.policies import exported
from nauthera.kube.status import compliance
from nauthera.targets.base import CompileOptions
from nauthera.targets.outputs import compile_policies

from ..conftest import EXAMPLES
from ..harness.admission import denial_probe, route_admission
from ..harness.controlplane import OPERATOR_USER, ControlPlane, ensure_namespaces
from ..harness.operator import current, generated_client, list_objects


def example_policies() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((EXAMPLES / "policies").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]


def example_clients() -> list[dict[str, Any]]:
    return [
        yaml.safe_load(path.read_text(encoding="utf-8"))
        for path in sorted((EXAMPLES / "clients").glob("*.yaml"))
    ]


#: The example clients' namespaces (the examples decide, not a list here).
EXAMPLE_NAMESPACES = sorted({client["metadata"]["namespace"] for client in example_clients()})


@pytest.fixture(scope="session")
def open_cluster(cluster: ControlPlane) -> ControlPlane:
    """The cluster with the example namespaces and no AuthClient admission webhook."""
    policy_namespaces = {policy["metadata"]["namespace"] for policy in example_policies()}
    ensure_namespaces(cluster, [*EXAMPLE_NAMESPACES, *sorted(policy_namespaces), "nauthera-system"])
    probe = denial_probe(cluster, generated_client(0, ["other-team"]), None)
    route_admission(cluster, None, probe)
    return cluster


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> float:
    """Seconds until `condition()` is truthy; fails with `what` (and the last value) after `timeout`."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        try:
            last = condition()
        except requests.RequestException as error:  # e.g. 429 while an API server warms up: reported below
            last = error
        else:
            if last:
                return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}"[:3000])


def status_writes(plane: ControlPlane, since: int) -> Counter[tuple[str, str]]:
    """(plural, namespace/name) → successful status writes by the operator's user since `since`."""
    counted: Counter[tuple[str, str]] = Counter()
    for event in plane.audit_events(since):
        ref = event.get("objectRef") or {}
        if (
            event["user"]["username"] == OPERATOR_USER
            and ref.get("subresource") == "status"
            and event["verb"] in ("update", "patch")
            and event["responseStatus"]["code"] < 300
        ):
            counted[(ref["resource"], f"{ref['namespace']}/{ref['name']}")] += 1
    return counted


def warning_events(plane: ControlPlane, client: str) -> list[dict[str, Any]]:
    namespace, name = client.split("/")
    response = plane.api.get(
        plane.url(f"/api/v1/namespaces/{namespace}/events"),
        params={"fieldSelector": f"involvedObject.name={name},involvedObject.kind=AuthClient"},
        timeout=30,
    )
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return [e for e in items if e["type"] == "Warning" and e["reason"] == "PolicyViolation"]


def _path(obj: dict[str, Any]) -> str:
    plural = {"AuthClient": "authclients", "AuthPolicy": "authpolicies"}[obj["kind"]]
    metadata = obj["metadata"]
    return f"/apis/auth.nauthera.io/v1alpha1/namespaces/{metadata['namespace']}/{plural}/{metadata['name']}"


def apply_now(plane: ControlPlane, obj: dict[str, Any]) -> None:
    """Server-side apply one object straight through the API (no kubectl start-up in a timed section)."""
    response = plane.api.patch(
        plane.url(_path(obj)),
        params={"fieldManager": "kubectl", "force": "true"},  # the manager of plane.apply: lists are replaced
        data=json.dumps(obj),
        headers={"Content-Type": "application/apply-patch+yaml"},
        timeout=30,
    )
    assert response.status_code < 300, response.text


def delete_now(plane: ControlPlane, obj: dict[str, Any]) -> None:
    response = plane.api.delete(plane.url(_path(obj)), timeout=30)
    assert response.status_code < 300, response.text


def cli_view(
    plane: ControlPlane, folder: Path, edited: dict[str, Any] | None = None
) -> tuple[str, dict[str, dict[str, Any]]]:
    """What the command line says about the cluster: `nauthera compile` of the AuthPolicies exported as
    YAML files, and `nauthera check`'s engine on every AuthClient. Returns (revision, key → decision).
    `edited` replaces (or adds) one policy, to know the outcome of an edit before making it."""
    policies = folder / "policies"
    policies.mkdir(parents=True)
    documents = {key: exported(obj) for key, obj in list_objects(plane, "authpolicies").items()}
    if edited is not None:
        documents[f"{edited['metadata']['namespace']}/{edited['metadata']['name']}"] = edited
    for key, document in documents.items():
        (policies / f"{key.replace('/', '_')}.yaml").write_text(yaml.safe_dump(document))
    result = compile_policies(CompileOptions(paths=[policies], out=folder / "out"))
    assert result.ok and result.bundle and result.revision, [str(d) for d in result.diagnostics]
    clients = list_objects(plane, "authclients")
    inputs = [{k: v for k, v in c.items() if k != "status"} for c in clients.values()]
    return result.revision, dict(zip(clients, evaluate(result.bundle, inputs), strict=True))


def mismatches(plane: ControlPlane, decisions: dict[str, dict[str, Any]], store: Path) -> list[str]:
    """Every way the clients' and policies' statuses differ from `decisions` (empty: all current)."""
    found = []
    clients = list_objects(plane, "authclients")
    for key, decision in decisions.items():
        obj = clients.get(key)
        if obj is None or not current(obj):
            found.append(f"{key}: no current status")
            continue
        status = obj["status"]
        for name in ("violations", "warnings", "dryrun"):
            if status[name] != decision[name]:
                found.append(f"{key}: {name} {status[name]} != {decision[name]}")
        if status["policies"] != sorted(decision["policies"]):
            found.append(f"{key}: policies {status['policies']} != {decision['policies']}")
        (condition,) = status["conditions"]
        compliant, reason, _ = compliance(decision)
        if (condition["type"], condition["status"], condition["reason"]) != (
            "Compliant",
            str(compliant),
            reason,
        ):
            found.append(f"{key}: condition {condition} but expected {compliant} {reason}")
        if not (store / "revisions" / status["revision"]).is_dir():
            found.append(f"{key}: revision {status['revision']} is not in the store")
    governed: dict[str, int] = {}
    violating: dict[str, int] = {}
    for decision in decisions.values():
        for policy in decision["policies"]:
            governed[policy] = governed.get(policy, 0) + 1
        for policy in {v["policy"] for v in decision["violations"] if v["policy"]}:
            violating[policy] = violating.get(policy, 0) + 1
    for key, obj in list_objects(plane, "authpolicies").items():
        status = obj.get("status") or {}
        if not current(obj):
            found.append(f"policy {key}: no current status")
            continue
        counts = (status.get("governedClients"), status.get("violatingClients"))
        if counts != (governed.get(key, 0), violating.get(key, 0)):
            found.append(f"policy {key}: counts {counts} != {(governed.get(key, 0), violating.get(key, 0))}")
    return found


def wait_current(
    plane: ControlPlane, decisions: dict[str, dict[str, Any]], store: Path, timeout: float, what: str
) -> float:
    """Seconds until every status matches `decisions`; on timeout, fails listing what still differs."""
    started = time.monotonic()
    found: list[str] = []
    while time.monotonic() - started < timeout:
        found = mismatches(plane, decisions, store)
        if not found:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: after {timeout} s, {len(found)} statuses differ: {found[:10]}")
