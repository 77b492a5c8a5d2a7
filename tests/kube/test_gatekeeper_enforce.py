"""`nauthera operator --enforce both` with the real Gatekeeper: the generated ConstraintTemplates and
Constraints are server-side applied under the field manager `nauthera`, Gatekeeper enforces them, and
the Constraint of a deleted AuthPolicy is pruned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..harness.admission import Compiled
from ..harness.controlplane import ControlPlane
from ..harness.gatekeeper import CONSTRAINTS_GROUP, Gatekeeper
from ..harness.operator import start_operator
from .conftest import example_policies, wait_for

SELECTOR = "app.kubernetes.io/managed-by=nauthera"


def _constraints(plane: ControlPlane, kind: str) -> dict[str, dict[str, Any]]:
    response = plane.api.get(
        plane.url(f"/apis/{CONSTRAINTS_GROUP}/v1beta1/{kind.lower()}"),
        params={"labelSelector": SELECTOR},
        timeout=30,
    )
    response.raise_for_status()
    return {item["metadata"]["name"]: item for item in response.json()["items"]}


def test_gatekeeper_objects_are_applied_enforced_and_pruned(
    open_cluster: ControlPlane, gatekeeper: Gatekeeper, compiled_examples: Compiled, tmp_path: Path
) -> None:
    plane = open_cluster
    policies = example_policies()
    plane.apply(policies)
    expected = {c["metadata"]["name"]: c for c in compiled_examples.constraints()}
    kinds = {c["kind"] for c in expected.values()}
    operator = start_operator(plane, tmp_path, "gatekeeper-operator", "--enforce", "both")
    try:
        operator.wait_synced()

        def applied() -> dict[str, dict[str, Any]] | None:
            found = {name: c for kind in kinds for name, c in _constraints(plane, kind).items()}
            return found if set(found) == set(expected) else None

        wait_for(applied, 60, "the operator to apply every constraint")
        found = applied()
        assert found is not None
        for name, constraint in found.items():
            assert constraint["spec"] == expected[name]["spec"], name
            managers = {m["manager"] for m in constraint["metadata"]["managedFields"]}
            assert "nauthera" in managers, (name, managers)
        gatekeeper.wait_enforced(
            {k.lower(): {n for n, c in expected.items() if c["kind"] == k} for k in kinds}
        )

        plane.kubectl("delete", "authpolicy", "device-flow-warn", "-n", "security")
        stale = {
            n for n, c in expected.items() if c["spec"]["parameters"].get("id") == "security/device-flow-warn"
        }
        assert len(stale) == 1, stale

        def pruned() -> bool:
            names = {name for kind in kinds for name in _constraints(plane, kind)}
            return not (names & stale) and names == set(expected) - stale

        wait_for(pruned, 30, "the deleted policy's constraint to be pruned")
    finally:
        operator.stop()
        for kind in kinds:
            plane.kubectl(
                "delete", f"{kind.lower()}.{CONSTRAINTS_GROUP}", "-l", SELECTOR, "--ignore-not-found"
            )
        plane.kubectl("delete", "authpolicies", "--all", "-n", "security", "--wait=false")
