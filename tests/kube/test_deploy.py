"""deploy/kubernetes/operator.yaml on the real API server: every object passes a server-side dry run, and
the ServiceAccount's RBAC grants exactly what the operator needs (checked with `kubectl auth can-i`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..harness.controlplane import ControlPlane

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "operator.yaml"
ACCOUNT = "system:serviceaccount:nauthera-system:nauthera-operator"
ALLOWED = [
    ("list", "authclients.auth.nauthera.io", "-A"),
    ("watch", "authpolicies.auth.nauthera.io", "-A"),
    ("update", "authclients.auth.nauthera.io", "--subresource=status", "-n", "team-a"),
    ("update", "authpolicies.auth.nauthera.io", "--subresource=status", "-n", "security"),
    ("create", "events", "-n", "team-a"),
    ("create", "leases.coordination.k8s.io", "-n", "nauthera-system"),
    ("update", "leases.coordination.k8s.io/nauthera-operator", "-n", "nauthera-system"),
]
REFUSED = [
    ("update", "authclients.auth.nauthera.io", "-n", "team-a"),
    ("delete", "authpolicies.auth.nauthera.io", "-n", "security"),
    ("get", "secrets", "-n", "nauthera-system"),
    ("update", "leases.coordination.k8s.io/other", "-n", "nauthera-system"),
    ("create", "leases.coordination.k8s.io", "-n", "team-a"),
    ("patch", "constrainttemplates.templates.gatekeeper.sh"),
]


def test_the_manifest_passes_a_server_side_dry_run(open_cluster: ControlPlane) -> None:
    result = open_cluster.kubectl("apply", "--dry-run=server", "-f", MANIFEST)
    kinds = [doc["kind"] for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    assert result.stdout.count("(server dry run)") == len(kinds), result.stdout


def test_rbac_grants_only_what_the_operator_needs(open_cluster: ControlPlane) -> None:
    rbac = [
        doc
        for doc in yaml.safe_load_all(MANIFEST.read_text())
        if doc
        and doc["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    ]
    open_cluster.apply(rbac)
    try:
        for check in ALLOWED:
            answer = open_cluster.kubectl("auth", "can-i", *check, f"--as={ACCOUNT}", check=False)
            assert answer.stdout.strip() == "yes", (check, answer.stdout, answer.stderr)
        for check in REFUSED:
            answer = open_cluster.kubectl("auth", "can-i", *check, f"--as={ACCOUNT}", check=False)
            assert answer.stdout.strip() == "no", (check, answer.stdout, answer.stderr)
    finally:
        for doc in rbac:
            namespace = doc["metadata"].get("namespace")
            flags = ["-n", namespace] if namespace else []
            open_cluster.kubectl(
                "delete", doc["kind"].lower(), doc["metadata"]["name"], *flags, "--ignore-not-found"
            )
