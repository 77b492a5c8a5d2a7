"""Two operator replicas with --leader-elect (SPEC section 7): only the Lease holder writes; when it is
SIGKILLed the standby takes over within 15 s and writes nothing that is already current; each later
change is written once. Writes are counted in the API server's audit log."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..harness.controlplane import ControlPlane
from ..harness.operator import RunningOperator, generated_client, start_operator
from .conftest import (
    EXAMPLE_NAMESPACES,
    apply_now,
    cli_view,
    example_clients,
    example_policies,
    status_writes,
    wait_current,
    wait_for,
)

TAKEOVER_SECONDS = 15.0


def _lease(plane: ControlPlane) -> dict[str, Any]:
    response = plane.api.get(
        plane.url("/apis/coordination.k8s.io/v1/namespaces/nauthera-system/leases/nauthera-operator"),
        timeout=30,
    )
    response.raise_for_status()
    lease: dict[str, Any] = response.json()
    return lease


def test_the_standby_takes_over_within_15s_and_no_status_is_written_twice(
    open_cluster: ControlPlane, tmp_path: Path
) -> None:
    plane = open_cluster
    started_at = plane.audit_offset()
    policies = example_policies()
    clients = [*example_clients(), *(generated_client(i, EXAMPLE_NAMESPACES, seed=23) for i in range(100))]
    plane.apply(policies)
    plane.apply(clients)
    flags = ("--leader-elect", "--lease-namespace", "nauthera-system")
    replicas: list[RunningOperator] = []
    try:
        for name in ("replica-a", "replica-b"):
            env = {**os.environ, "POD_NAME": name}
            replicas.append(start_operator(plane, tmp_path, name, *flags, env=env, store=tmp_path / "store"))
            replicas[-1].wait_synced()
        holder = _lease(plane)["spec"]["holderIdentity"]
        leader, standby = sorted(replicas, key=lambda r: r.name != holder)
        assert leader.readiness()["leading"] and not standby.readiness()["leading"]
        _, decisions = cli_view(plane, tmp_path / "before")
        wait_current(plane, decisions, leader.store, 60, "statuses from the leader")
        writers = {
            e["user"]["username"]
            for e in plane.audit_events(started_at)
            if e["objectRef"].get("subresource") == "status"
        }
        assert standby.readiness()["stats"]["client_writes"] == 0, "a standby must not write"

        since = plane.audit_offset()
        assert leader.process.handle is not None
        leader.process.handle.kill()
        leader.process.handle.wait()
        killed = time.monotonic()
        wait_for(lambda: standby.readiness()["leading"], TAKEOVER_SECONDS + 5, "the standby to take over")
        took = time.monotonic() - killed
        assert took <= TAKEOVER_SECONDS, f"took over after {took:.1f} s"
        assert _lease(plane)["spec"]["holderIdentity"] == standby.name
        time.sleep(1.5)  # the new leader compares every status with what it decided: nothing is due
        assert not status_writes(plane, since), "the new leader rewrote statuses that were current"

        tightened = next(p for p in policies if p["metadata"]["name"] == "web-apps-policy")
        tightened["spec"]["token"]["accessTokenTTL"] = "5m"
        _, after = cli_view(plane, tmp_path / "after", tightened)
        changed = {k for k in after if after[k] != decisions[k]}
        assert changed
        since = plane.audit_offset()
        apply_now(plane, tightened)
        wait_current(plane, after, standby.store, 30, "statuses from the new leader")
        time.sleep(1.0)
        writes = status_writes(plane, since)
        clients_written = {key: n for (plural, key), n in writes.items() if plural == "authclients"}
        assert set(clients_written) == changed and set(clients_written.values()) == {1}, clients_written
        assert writers == {"nauthera-operator"}
    finally:
        for replica in replicas:
            if replica.process.alive():
                replica.stop()
        for namespace in sorted({o["metadata"]["namespace"] for o in [*policies, *clients]}):
            plane.kubectl("delete", "authclients,authpolicies", "--all", "-n", namespace, "--wait=false")
