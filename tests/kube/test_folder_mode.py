"""`nauthera operator --policies DIR`: policies from a folder (a Git checkout), watched like the
sidecar's; AuthClient statuses follow the folder, a broken file keeps the last good policy enforced."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from nauthera.store.base import open_store

from ..conftest import EXAMPLES
from ..harness.controlplane import ControlPlane
from ..harness.operator import list_objects, start_operator
from ..harness.processes import write_policy
from ..harness.registry import start_registry
from .conftest import example_clients, wait_for


def _reason(plane: ControlPlane, key: str) -> str:
    status = list_objects(plane, "authclients")[key].get("status") or {}
    return str(status.get("conditions", [{}])[0].get("reason", ""))


def test_statuses_follow_a_policy_folder(open_cluster: ControlPlane, tmp_path: Path) -> None:
    plane = open_cluster
    folder = tmp_path / "policies"
    shutil.copytree(EXAMPLES / "policies", folder)
    clients = example_clients()
    plane.apply(clients)
    operator = start_operator(plane, tmp_path, "folder-operator", "--policies", str(folder))
    try:
        operator.wait_synced()
        wait_for(
            lambda: _reason(plane, "team-b/legacy-dashboard") == "PolicyViolation", 30, "the first audit"
        )
        assert not list_objects(plane, "authpolicies"), "folder mode reads no AuthPolicy objects"
        spec = yaml.safe_load((folder / "mobile-spa-policy.yaml").read_text())["spec"]
        broken = {**spec, "token": {"accessTokenTTL": "7d"}}
        write_policy(folder, "mobile-spa-policy", broken)
        revision = operator.readiness()["revision"]
        wait_for(lambda: operator.readiness()["stats"]["compiles"] >= 2, 30, "a compile of the broken folder")
        assert operator.readiness()["revision"] == revision, "a broken policy must keep its last good version"
        assert _reason(plane, "team-b/legacy-dashboard") == "PolicyViolation"
        (folder / "mobile-spa-policy.yaml").unlink()
        wait_for(lambda: _reason(plane, "team-b/legacy-dashboard") == "Ungoverned", 30, "the removal to show")
    finally:
        operator.stop()
        for namespace in sorted({c["metadata"]["namespace"] for c in clients}):
            plane.kubectl("delete", "authclients", "--all", "-n", namespace, "--wait=false")


def test_the_operator_publishes_to_and_serves_from_a_registry_store(
    open_cluster: ControlPlane, tmp_path: Path
) -> None:
    """SPEC section 8: `operator --store oci+http://...` records each good compile in the registry."""
    registry = start_registry(tmp_path)
    folder = tmp_path / "policies"
    shutil.copytree(EXAMPLES / "policies", folder)
    store = registry.store("operator/bundles")
    operator = start_operator(
        open_cluster, tmp_path, "registry-operator", "--policies", str(folder), store=store
    )
    try:
        revision = operator.wait_synced()["revision"]
        assert open_store(store).channels() == {"stable": revision}
        served = operator.session.get(f"{operator.url}/bundles/stable", timeout=10)
        assert served.status_code == 200
        assert served.content == open_store(store).bundle_bytes(revision)
    finally:
        operator.stop()
        registry.stop()
