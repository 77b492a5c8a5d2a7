"""Measure 5: the operator at scale: 10,000 AuthClients and 1,000 AuthPolicies on a real kube-apiserver.

The control plane of tests/harness (etcd + kube-apiserver on loopback, with an audit log) holds the
1,000 generated policies (bench/generate.py) and 10,000 generated clients (tests/harness/operator.py,
spread over the policies' team namespaces). One `nauthera operator` runs as the user
`nauthera-operator`; everything it sends is counted from the API server's audit log, not from its own
counters. Figures:

- initial audit: from start to every client and policy carrying a status;
- one policy edit (the team-0005 policy's access-token maximum, so its clients flip) to every affected
  status current, and how many status writes that took (only changed ones are written);
- the operator process's peak RSS (VmHWM; the `opa eval` children are transient and reported apart);
- requests per second it sends while idle (30 s), by verb: the goal is none beyond its watches and the
  Lease renewals.

Anchor: `nauthera check` (`opa eval` of the same bundle) on the affected clients alone, in the same run:
the evaluation time any audit pays.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from nauthera.engines.check import evaluate
from nauthera.kube.policies import exported

from bench.common import Budget, Result, Row, Ui, Workspace
from bench.generate import policy, team
from tests.harness.controlplane import (
    OPERATOR_USER,
    control_plane,
    documents,
    ensure_namespaces,
    install_crds,
)
from tests.harness.operator import current, generated_client, list_objects, start_operator

REPO = Path(__file__).resolve().parents[1]
IDLE_SECONDS = 30
EDITED = 5  # bench/generate.CLIENT_TEAM: an exact, deny policy on team-0005


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


def run(ws: Workspace, ui: Ui, budget: Budget) -> Result:
    del budget
    policies_count, clients_count = (100, 1_000) if ws.quick else (1_000, 10_000)
    result = Result("operator", f"Operator: {clients_count:,} AuthClients, {policies_count:,} AuthPolicies")
    result.config = {"policies": policies_count, "clients": clients_count, "idle_seconds": IDLE_SECONDS}
    step = ui.task("operator: set-up", total=5)
    with control_plane(ws.scratch("operator-plane")) as plane:
        install_crds(
            plane, [d for p in sorted((REPO / "deploy" / "crds").glob("*.yaml")) for d in documents(p)]
        )
        policies = [policy(i) for i in range(policies_count)]
        namespaces = [team(i) for i in range(policies_count)]
        ensure_namespaces(plane, [*namespaces, "security", "nauthera-system"])
        step.advance(description="operator: applying policies")
        for start in range(0, policies_count, 500):
            plane.apply(policies[start : start + 500])
        step.advance(description="operator: applying clients")
        clients = [generated_client(i, namespaces, seed=5) for i in range(clients_count)]
        for start in range(0, clients_count, 1_000):
            plane.apply(clients[start : start + 1_000])
        step.advance(description="operator: initial audit")
        operator = start_operator(
            plane, ws.scratch("operator"), "operator", "--leader-elect", "--writes-per-second", "400"
        )
        try:
            started = time.monotonic()

            def audited() -> bool:
                listed = list_objects(plane, "authclients")
                return len(listed) == clients_count and all(current(o) for o in listed.values())

            initial = _wait(audited, 900, "the initial audit")
            ui.log(f"operator: initial audit of {clients_count} clients in {initial:.1f} s")
            step.advance(description="operator: idle")
            _wait(
                lambda: all(current(o) for o in list_objects(plane, "authpolicies").values()),
                300,
                "policy statuses",
            )
            time.sleep(3)
            since = plane.audit_offset()
            time.sleep(IDLE_SECONDS)
            idle = Counter(
                f"{e['verb']} {e['objectRef'].get('resource')}"
                for e in plane.audit_events(since)
                if e["user"]["username"] == OPERATOR_USER
            )
            idle_requests = sum(n for k, n in idle.items() if not k.startswith("watch "))
            lease_requests = sum(n for k, n in idle.items() if k.endswith(" leases"))

            step.advance(description="operator: one policy edit")
            edited = exported(policies[EDITED])
            edited["spec"]["token"]["accessTokenTTL"] = "1m"
            edited["spec"]["allowedScopes"] = ["openid"]
            bundle = operator.store / "revisions" / operator.readiness()["revision"] / "bundle.tar.gz"
            in_team = {
                f"{c['metadata']['namespace']}/{c['metadata']['name']}": c
                for c in clients
                if c["metadata"]["namespace"] == team(EDITED)
            }
            anchor_started = time.monotonic()
            evaluate(bundle, list(in_team.values()))
            anchor = time.monotonic() - anchor_started
            before = {k: o["status"] for k, o in list_objects(plane, "authclients").items() if k in in_team}
            since = plane.audit_offset()
            edit_started = time.monotonic()
            plane.apply([edited])
            revision_before = operator.readiness()["revision"]

            def edit_done() -> bool:
                state = operator.readiness()
                if state["revision"] == revision_before:
                    return False
                listed = list_objects(plane, "authclients")
                return all(
                    listed[k]["status"]["revision"] == state["revision"] or listed[k]["status"] == before[k]
                    for k in in_team
                )

            _wait(edit_done, 300, "the edit's statuses", interval=0.1)
            edit_seconds = time.monotonic() - edit_started
            time.sleep(2)
            writes = Counter(
                e["objectRef"]["resource"]
                for e in plane.audit_events(since)
                if e["user"]["username"] == OPERATOR_USER and e["objectRef"].get("subresource") == "status"
            )
            after = list_objects(plane, "authclients")
            flipped = sum(
                1
                for k in in_team
                if after[k]["status"]["conditions"][0]["status"] != before[k]["conditions"][0]["status"]
            )
            peak = _peak_rss_mib(operator.process.pid)
            state = operator.readiness()
        finally:
            operator.stop()
        step.finish()
    non_compliant = sum(1 for c in after.values() if c["status"]["conditions"][0]["status"] != "True")
    result.rows = [
        Row(
            "initial audit (all statuses written)",
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
            edit_seconds,
            None,
            f"opa eval of the {len(in_team)} affected clients",
            anchor,
            goal="≤ 30 s",
            goal_met=edit_seconds <= 30,
        ),
        Row(
            "status writes for that edit",
            "writes",
            float(writes["authclients"] + writes["authpolicies"]),
            None,
            "clients in the edited policy's namespace",
            float(len(in_team)),
            note=f"{writes['authclients']} clients ({flipped} flipped), {writes['authpolicies']} policies",
        ),
        Row("operator peak RSS", "MiB", peak, None, "", None, goal="≤ 300 MiB", goal_met=peak <= 300),
        Row(
            "requests/s while idle (not watches)",
            "req/s",
            idle_requests / IDLE_SECONDS,
            None,
            "Lease renewals alone",
            lease_requests / IDLE_SECONDS,
            goal="only watches and the Lease",
            goal_met=idle_requests == lease_requests,
        ),
    ]
    result.series = {
        "idle_requests": dict(idle),
        "edit_writes": dict(writes),
        "operator_stats": state["stats"],
    }
    result.notes = [
        f"{non_compliant:,} of {clients_count:,} generated clients are not compliant after the edit "
        "(the generator mixes compliant and violating clients on purpose).",
        "RSS is the operator process's own peak (VmHWM); each `opa eval` child lives for one batch.",
    ]
    return result
