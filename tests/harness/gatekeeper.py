"""The real Gatekeeper controller manager (webhook, audit, status), out of cluster on loopback.

Gatekeeper's CRDs come from the pinned module's own `deploy/gatekeeper.yaml` in the Go module cache
(the version tools/gatekeeper/go.mod pins, the one `make tools` built). Gatekeeper runs with
`--debug-use-fake-pod` against the control plane's kubeconfig, serves its validating webhook on a free
loopback port with a certificate from the control plane's CA, and audits every `--audit-interval`.
Its webhook configuration covers only `auth.nauthera.io` `authclients`, failing closed, so that the
routing of tests/harness/admission.py decides which engine admits AuthClients.
"""

from __future__ import annotations

import base64
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import requests
import yaml
from nauthera.engines.tools import find_tool

from .admission import Compiled
from .controlplane import ControlPlane, ensure_namespaces, install_crds, wait_established
from .processes import Process, free_port

REPO = Path(__file__).resolve().parents[2]
MODULE = "github.com/open-policy-agent/gatekeeper/v3"
NAMESPACE = "gatekeeper-system"
WEBHOOK = "validation.gatekeeper.sh"
CONSTRAINTS_GROUP = "constraints.gatekeeper.sh"
CONSTRAINT_NAME_LABEL = "internal.gatekeeper.sh/constraint-name"


class GatekeeperCrdsMissingError(AssertionError):
    """deploy/gatekeeper.yaml of the pinned Gatekeeper is not in the Go module cache."""


def pinned_version() -> str:
    """The Gatekeeper version tools/gatekeeper/go.mod pins (the controller `make tools` builds)."""
    go_mod = REPO / "tools" / "gatekeeper" / "go.mod"
    match = re.search(rf"^\s*{re.escape(MODULE)}\s+(v\S+)", go_mod.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{go_mod} does not require {MODULE}"
    return match.group(1)


@cache
def crd_manifest() -> Path:
    """`$(go env GOMODCACHE)/<module>@<version>/deploy/gatekeeper.yaml`; fails loudly when absent."""
    try:
        cache_dir = subprocess.run(
            ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        raise GatekeeperCrdsMissingError(
            f"cannot run `go env GOMODCACHE` to find Gatekeeper's CRDs: {error}"
        ) from error
    version = pinned_version()
    path = Path(cache_dir) / f"{MODULE}@{version}" / "deploy" / "gatekeeper.yaml"
    if not path.is_file():
        raise GatekeeperCrdsMissingError(
            f"Gatekeeper's CRDs are not at {path}: run `make tools` (building tools/gatekeeper downloads "
            f"the module), or `cd tools/gatekeeper && go mod download {MODULE}`"
        )
    return path


def gatekeeper_crds() -> list[dict[str, Any]]:
    """The CustomResourceDefinitions of the pinned Gatekeeper release."""
    documents = yaml.safe_load_all(crd_manifest().read_text(encoding="utf-8"))
    return [doc for doc in documents if doc and doc.get("kind") == "CustomResourceDefinition"]


@dataclass
class Gatekeeper:
    """A running Gatekeeper; `configuration` routes the API server's AuthClient admission to it."""

    plane: ControlPlane
    process: Process
    health_url: str
    configuration: dict[str, Any]
    start_seconds: float
    applied: dict[str, set[str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The webhook's name, as the API server quotes it in denials."""
        return str(self.configuration["webhooks"][0]["name"])

    def stop(self) -> None:
        self.process.stop()

    def apply_templates(self, templates: Iterable[dict[str, Any]], timeout: float = 90) -> None:
        """Apply ConstraintTemplates; wait until Gatekeeper created each one's constraint CRD, Established."""
        templates = list(templates)
        self.plane.apply(templates)
        names = [f"{t['metadata']['name']}.{CONSTRAINTS_GROUP}" for t in templates]

        def created() -> bool:
            listed = self.plane.kubectl("get", "customresourcedefinitions", "-o", "name", check=False)
            return all(f"customresourcedefinition.apiextensions.k8s.io/{n}" in listed.stdout for n in names)

        self.process.wait_ready(created, timeout, f"Gatekeeper to create the constraint CRDs {names}")
        wait_established(self.plane, names, timeout)

    def replace_constraints(self, constraints: Iterable[dict[str, Any]], timeout: float = 90) -> None:
        """Make `constraints` the only constraints of their kinds and wait until Gatekeeper enforces each
        one at its current generation (its `status.byPod` says so) and has dropped the removed ones."""
        constraints = list(constraints)
        wanted: dict[str, set[str]] = {}
        for constraint in constraints:
            wanted.setdefault(constraint["kind"].lower(), set()).add(constraint["metadata"]["name"])
        removed = set()
        for kind, names in self.applied.items():
            stale = sorted(names - wanted.get(kind, set()))
            if stale:
                self.plane.kubectl("delete", f"{kind}.{CONSTRAINTS_GROUP}", *stale, "--wait=true")
                removed.update(stale)
        # Gatekeeper deletes a constraint's pod status once it stopped enforcing the constraint.
        self.process.wait_ready(
            lambda: not removed & self._pod_statuses(), timeout, "Gatekeeper to drop the removed constraints"
        )
        self.plane.apply(constraints)
        self.applied = wanted
        self.wait_enforced(wanted, timeout)

    def wait_enforced(self, wanted: dict[str, set[str]], timeout: float = 90) -> None:
        """Wait until Gatekeeper enforces each named constraint (kind in lower case → names) at its
        current generation, whoever applied it (the harness or the operator)."""
        self.process.wait_ready(
            lambda: self._enforced(wanted), timeout, "Gatekeeper to enforce every constraint"
        )

    def _pod_statuses(self) -> set[str]:
        """Names of the constraints this Gatekeeper reports a ConstraintPodStatus for."""
        url = self.plane.url(
            f"/apis/status.gatekeeper.sh/v1beta1/namespaces/{NAMESPACE}/constraintpodstatuses"
        )
        listed = self.plane.api.get(url, timeout=30)
        listed.raise_for_status()
        return {item["metadata"]["labels"][CONSTRAINT_NAME_LABEL] for item in listed.json()["items"]}

    def _enforced(self, wanted: dict[str, set[str]]) -> bool:
        for kind, names in wanted.items():
            url = self.plane.url(f"/apis/{CONSTRAINTS_GROUP}/v1beta1/{kind}")
            listed = self.plane.api.get(url, timeout=30)
            listed.raise_for_status()
            items = {item["metadata"]["name"]: item for item in listed.json()["items"]}
            for name in names:
                item = items.get(name)
                if item is None:
                    return False
                generation = item["metadata"]["generation"]
                by_pod = (item.get("status") or {}).get("byPod") or []
                if not any(p.get("enforced") and p.get("observedGeneration") == generation for p in by_pod):
                    return False
        return True

    def load(self, compiled: Compiled) -> None:
        """Enforce the constraints of `compiled` (the templates are the same for every policy set)."""
        self.replace_constraints(compiled.constraints())

    def constraint(self, kind: str, name: str) -> dict[str, Any]:
        response = self.plane.api.get(
            self.plane.url(f"/apis/{CONSTRAINTS_GROUP}/v1beta1/{kind.lower()}/{name}"), timeout=30
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def start_gatekeeper(plane: ControlPlane, workdir: Path, audit_interval: int = 2) -> Gatekeeper:
    """Install Gatekeeper's CRDs, start the controller manager and wait until it is ready."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    install_crds(plane, gatekeeper_crds())
    ensure_namespaces(plane, [NAMESPACE])
    cert_dir = workdir / "certs"
    cert_dir.mkdir(exist_ok=True)
    serving = plane.ca.serving("gatekeeper-webhook")
    (cert_dir / "tls.crt").write_bytes(serving.cert.read_bytes())
    (cert_dir / "tls.key").write_bytes(serving.key.read_bytes())
    (cert_dir / "ca.crt").write_bytes(plane.ca.pem)
    (workdir / "audit").mkdir(exist_ok=True)  # --api-cache-dir: audit fails on every run without it
    port, health, metrics = free_port(), free_port(), free_port()
    args = [
        str(find_tool("gatekeeper")),
        f"--kubeconfig={plane.kubeconfig}",
        "--debug-use-fake-pod",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--cert-dir={cert_dir}",
        "--disable-cert-rotation",
        f"--health-addr=127.0.0.1:{health}",
        f"--prometheus-port={metrics}",
        "--operation=webhook",
        "--operation=audit",
        "--operation=status",
        "--operation=generate",  # creates each template's constraint CRD
        f"--api-cache-dir={workdir / 'audit'}",
        f"--audit-interval={audit_interval}",
        "--constraint-violations-limit=100",
        "--log-level=WARNING",
        # In a cluster the delay lets a Service drop the pod's endpoint first; on loopback it only makes
        # every stop take 10 s.
        "--shutdown-delay=0",
    ]
    environment = {
        "POD_NAMESPACE": NAMESPACE,
        "POD_NAME": "gatekeeper-loopback",
        "NAMESPACE": NAMESPACE,
        "CONTAINER_NAME": "manager",
        "PATH": "/usr/bin:/bin",
    }
    process = Process(args, workdir / "gatekeeper.log", env=environment).start()
    health_url = f"http://127.0.0.1:{health}"
    try:
        process.wait_ready(
            lambda: requests.get(f"{health_url}/readyz", timeout=2).status_code == 200,
            120,
            "Gatekeeper /readyz",
        )
    except BaseException:
        process.stop()
        raise
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "nauthera-gatekeeper"},
        "webhooks": [
            {
                "name": WEBHOOK,
                "rules": [
                    {
                        "apiGroups": ["auth.nauthera.io"],
                        "apiVersions": ["v1alpha1"],
                        "resources": ["authclients"],
                        "operations": ["CREATE", "UPDATE"],
                        "scope": "Namespaced",
                    }
                ],
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/v1/admit",
                    "caBundle": base64.b64encode(plane.ca.pem).decode(),
                },
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "sideEffects": "None",
                "timeoutSeconds": 3,
                "admissionReviewVersions": ["v1"],
            }
        ],
    }
    return Gatekeeper(plane, process, health_url, configuration, time.monotonic() - started)
