"""Measure 5: the operator at scale: 10,000 AuthClients and 1,000 AuthPolicies on a real kube-apiserver.

The control plane of tests/harness (etcd + kube-apiserver on loopback, with an audit log) holds the
1,000 generated policies (bench/generate.py) and 10,000 generated clients (tests/harness/operator.py,
spread over the policies' team namespaces). One `nauthera operator` runs as the user
`nauthera-operator`; everything it sends is counted from the API server's audit log, not from its own
counters. Figures:

- initial audit: from start to every client and policy carrying a status;
- one policy edit (the deny policy of the team with the most governed clients: access-token maximum
  1m, scopes `openid` only) to every affected status current, and how many status writes that took
  (only changed ones are written);
- the operator process's peak RSS (VmHWM; the `opa eval` children are transient and reported apart);
- requests per second it sends while idle (30 s), by verb: the goal is none beyond its watches and the
  Lease renewals.

Anchor: `nauthera check` (`opa eval` of the same bundle) on the affected clients alone, in the same run:
the evaluation time any audit pays.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nauthera.engines.check import evaluate
from nauthera.kube.policies import exported

from bench.common import Budget, Result, Row, Ui, Workspace
from bench.generate import policy, team
from tests.harness.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    control_plane,
    documents,
    ensure_namespaces,
    install_crds,
)
from tests.harness.operator import RunningOperator, current, generated_client, list_objects, start_operator

REPO = Path(__file__).resolve().parents[1]
IDLE_SECONDS = 30


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait(condition: Any, timeout: float, what: str, interval: float = 0.5) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Cluster:
    plane: ControlPlane
    policies: list[dict[str, Any]]
    clients: list[dict[str, Any]]


def _populate(plane: ControlPlane, policies_count: int, clients_count: int) -> Cluster:
    install_crds(plane, [d for p in sorted((REPO / "deploy" / "crds").glob("*.yaml")) for d in documents(p)])
    policies = [policy(i) for i in range(policies_count)]
    namespaces = [team(i) for i in range(policies_count)]
    ensure_namespaces(plane, [*namespaces, "security", "nauthera-system"])
    for start in range(0, policies_count, 500):
        plane.apply(policies[start : start + 500])
    clients = [generated_client(i, namespaces, seed=5) for i in range(clients_count)]
    for start in range(0, clients_count, 1_000):
        plane.apply(clients[start : start + 1_000])
    return Cluster(plane, policies, clients)


def _idle_requests(plane: ControlPlane) -> Counter[str]:
    """What the operator's user sends in IDLE_SECONDS with nothing to do, by verb and resource."""
    since = plane.audit_offset()
    time.sleep(IDLE_SECONDS)
    return Counter(
        f"{e['verb']} {e['objectRef'].get('resource')}"
        for e in plane.audit_events(since)
        if e["user"]["username"] == OPERATOR_USER
    )


def _findings(status: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(status.get(name) for name in ("violations", "warnings", "dryrun", "policies"))


def _edited_team(cluster: Cluster) -> int:
    """The team whose own (deny) policy governs the most generated clients: the edit to measure."""
    counts: Counter[int] = Counter()
    for client in cluster.clients:
        index = int(client["metadata"]["namespace"].removeprefix("team-"))
        spec = cluster.policies[index]["spec"]
        governed = client["spec"]["applicationType"] in spec["targets"].get("applicationTypes", [])
        if governed and spec.get("enforcementAction", "deny") == "deny":
            counts[index] += 1
    return counts.most_common(1)[0][0]


def _team_clients(plane: ControlPlane, index: int) -> dict[str, dict[str, Any]]:
    """The clients of the edited policy's namespace only: a cheap list to poll."""
    response = plane.api.get(
        plane.url(f"/apis/auth.nauthera.io/v1alpha1/namespaces/{team(index)}/authclients"), timeout=30
    )
    response.raise_for_status()
    return {f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in response.json()["items"]}


def _edit(cluster: Cluster, operator: RunningOperator) -> dict[str, Any]:
    """Tighten one team's policy; time until every client in its namespace shows the new decision."""
    plane = cluster.plane
    index = _edited_team(cluster)
    edited = exported(cluster.policies[index])
    edited["spec"]["token"]["accessTokenTTL"] = "1m"
    edited["spec"]["allowedScopes"] = ["openid"]
    affected = {
        f"{c['metadata']['namespace']}/{c['metadata']['name']}": {k: v for k, v in c.items() if k != "status"}
        for c in cluster.clients
        if c["metadata"]["namespace"] == team(index)
    }
    before = {k: o["status"] for k, o in _team_clients(plane, index).items()}
    assert set(before) == set(affected)
    revision_before = operator.readiness()["revision"]
    since = plane.audit_offset()
    started = time.monotonic()
    plane.apply([edited])
    _wait(lambda: operator.readiness()["revision"] != revision_before, 300, "the new revision", 0.05)
    bundle = operator.store / "revisions" / operator.readiness()["revision"] / "bundle.tar.gz"
    anchor_started = time.monotonic()
    decisions = dict(zip(affected, evaluate(bundle, list(affected.values())), strict=True))
    anchor = time.monotonic() - anchor_started
    expected = {
        k: (d["violations"], d["warnings"], d["dryrun"], sorted(d["policies"])) for k, d in decisions.items()
    }

    def current_now() -> bool:
        listed = _team_clients(plane, index)
        return all(_findings(listed[k]["status"]) == expected[k] for k in affected)

    _wait(current_now, 300, "the edit's statuses", 0.05)
    seconds = time.monotonic() - started
    time.sleep(2)  # writes still coming in would show in the count
    writes = Counter(
        e["objectRef"]["resource"]
        for e in plane.audit_events(since)
        if e["user"]["username"] == OPERATOR_USER and e["objectRef"].get("subresource") == "status"
    )
    changed = sum(1 for k in affected if _findings(before[k]) != expected[k])
    return {
        "seconds": seconds,
        "anchor": anchor,
        "writes": writes,
        "affected": len(affected),
        "changed": changed,
    }


def run(ws: Workspace, ui: Ui, budget: Budget) -> Result:
    del budget
    policies_count, clients_count = (100, 1_000) if ws.quick else (1_000, 10_000)
    result = Result("operator", f"Operator: {clients_count:,} AuthClients, {policies_count:,} AuthPolicies")
    result.config = {"policies": policies_count, "clients": clients_count, "idle_seconds": IDLE_SECONDS}
    step = ui.task("operator: populating the cluster", total=4)
    with control_plane(ws.scratch("operator-plane")) as plane:
        cluster = _populate(plane, policies_count, clients_count)
        step.advance(description="operator: initial audit")
        operator = start_operator(
            plane, ws.scratch("operator"), "operator", "--leader-elect", "--writes-per-second", "400"
        )
        try:
            written: set[tuple[str, str]] = set()
            offset = 0

            def audited() -> bool:
                # Progress from the audit log (a local file): polling lists of 10,000 objects would load
                # the API server more than the operator does.
                nonlocal offset
                events, offset = plane.audit_read(offset)
                written.update(
                    (e["objectRef"]["resource"], f"{e['objectRef']['namespace']}/{e['objectRef']['name']}")
                    for e in events
                    if e["user"]["username"] == OPERATOR_USER
                    and e["objectRef"].get("subresource") == "status"
                )
                return len(written) >= clients_count + policies_count

            initial = _wait(audited, 1800, "the initial audit", interval=1.0)
            listed = [
                *list_objects(plane, "authclients").values(),
                *list_objects(plane, "authpolicies").values(),
            ]
            assert all(current(o) for o in listed), "an object without a current status after the audit"
            ui.log(f"operator: initial audit of {clients_count} clients in {initial:.1f} s")
            step.advance(description="operator: idle")
            time.sleep(3)
            idle = _idle_requests(plane)
            step.advance(description="operator: one policy edit")
            edit = _edit(cluster, operator)
            peak = _peak_rss_mib(operator.process.pid)
            stats = operator.readiness()["stats"]
        finally:
            operator.stop()
        step.finish()
    idle_requests = sum(n for k, n in idle.items() if not k.startswith("watch "))
    lease_requests = sum(n for k, n in idle.items() if k.endswith(" leases"))
    writes = edit["writes"]
    result.rows = [
        Row(
            "initial audit (every status written)",
            "s",
            initial,
            None,
            "",
            None,
            note=f"{clients_count:,} clients",
        ),
        Row(
            "one policy edit → affected statuses current",
            "s",
            edit["seconds"],
            None,
            f"opa eval of the {edit['affected']} clients in its namespace",
            edit["anchor"],
            goal="≤ 30 s",
            goal_met=edit["seconds"] <= 30,
        ),
        Row(
            "status writes for that edit",
            "writes",
            float(writes["authclients"] + writes["authpolicies"]),
            None,
            "clients whose decision changed + 1 policy",
            float(edit["changed"] + 1),
            note=f"{writes['authclients']} client and {writes['authpolicies']} policy statuses",
        ),
        Row("operator peak RSS (VmHWM)", "MiB", peak, None, "", None, goal="≤ 300 MiB", goal_met=peak <= 300),
        Row(
            "requests/s while idle, watches aside",
            "req/s",
            idle_requests / IDLE_SECONDS,
            None,
            "its Lease requests alone",
            lease_requests / IDLE_SECONDS,
            goal="only watches and the Lease",
            goal_met=idle_requests == lease_requests,
        ),
    ]
    result.series = {
        "idle_requests": dict(idle),
        "edit": {**edit, "writes": dict(writes)},
        "operator_stats": stats,
    }
    result.notes = [
        "The operator runs as its own user; every request it sends is counted in the API server's audit log.",
        "RSS is the operator process's own peak (VmHWM); each `opa eval` child lives for one batch.",
    ]
    return result
