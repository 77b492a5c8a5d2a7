"""Every manifest under deploy/kubernetes is accepted by the real API server (`kubectl apply
--dry-run=server`: decoded, defaulted, validated and admitted, never stored). No kubelet runs, so pods
never start; the objects must still be valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import REPO
from ..harness.controlplane import ControlPlane, documents, ensure_namespaces

MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))


def test_there_are_manifests_to_check() -> None:
    assert {path.name for path in MANIFESTS} >= {"opa-webhook.yaml", "central-server.yaml"}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_manifest_is_accepted_by_the_api_server(cluster: ControlPlane, manifest: Path) -> None:
    objects = documents(manifest)
    # Namespaced objects need their namespace to exist, even in a dry run.
    ensure_namespaces(cluster, {o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"]})
    applied = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", manifest, check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    lines = applied.stdout.splitlines()
    assert len(lines) == len(objects), applied.stdout
    assert all(line.endswith("(server dry run)") for line in lines), applied.stdout
