"""The OPA admission webhook of deploy/kubernetes/opa-webhook.yaml, run out of cluster on loopback.

The Deployment's own containers run as processes: `nauthera sidecar` compiles a policy folder and
serves the bundle with long polling; `opa run` (the Deployment's arguments, the ConfigMap's config and
authorization policy) pulls it and serves the admission entrypoint over TLS with a certificate from
the control plane's CA. Paths and addresses of the pod are mapped to a work folder and free loopback
ports, nothing else changes, so the tests exercise the shipped manifest. The webhook configuration is
the manifest's, pointed at `https://127.0.0.1:PORT/v0/...` with the CA as `caBundle`.
"""

from __future__ import annotations

import base64
import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from nauthera.engines.tools import find_tool

from .admission import Compiled
from .controlplane import documents
from .pki import CertificateAuthority
from .processes import Process, free_port, stop_all

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kubernetes" / "opa-webhook.yaml"
SIDECAR_PORT = 8282  # where the manifest's OPA config expects the sidecar, inside the pod


def manifest_objects() -> dict[str, dict[str, Any]]:
    """The manifest's objects by kind."""
    return {doc["kind"]: doc for doc in documents(MANIFEST)}


def _container(name: str) -> dict[str, Any]:
    containers = manifest_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _mapped(args: list[str], mapping: dict[str, str]) -> list[str]:
    """The container's arguments with pod paths and addresses replaced by their loopback counterparts."""
    result = []
    for arg in args:
        local = arg
        for pod_value, local_value in mapping.items():
            local = local.replace(pod_value, local_value)
        result.append(local)
    return result


def webhook_name() -> str:
    return str(manifest_objects()["ValidatingWebhookConfiguration"]["webhooks"][0]["name"])


@dataclass
class OpaWebhook:
    """The sidecar and OPA of the webhook pod; `configuration` routes the API server to this OPA."""

    workdir: Path
    ca: CertificateAuthority
    policies: Path
    sidecar_url: str
    opa_url: str
    diagnostics_url: str
    sidecar: Process
    opa_args: list[str]
    opa: Process | None = None
    configuration: dict[str, Any] = field(default_factory=dict)
    https: requests.Session = field(init=False)
    opa_started: float = 0.0

    def __post_init__(self) -> None:
        self.https = self.ca.session()

    @property
    def name(self) -> str:
        return str(self.configuration["webhooks"][0]["name"])

    def start_opa(self) -> None:
        assert self.opa is None or not self.opa.alive(), "OPA is already running"
        self.opa_started = time.time()
        self.opa = Process(self.opa_args, self.workdir / "opa.log").start()
        self.wait_synced()

    def stop_opa(self) -> None:
        assert self.opa is not None
        self.opa.stop()

    def channel_revision(self) -> str | None:
        channels = requests.get(f"{self.sidecar_url}/v1/channels", timeout=5).json()
        revision: str | None = channels.get("stable", {}).get("revision")
        return revision

    def active_revisions(self) -> set[str]:
        """The revisions the running OPA reported active to the sidecar (through OPA's status API);
        reports older than this OPA process (a previous one, before a restart) do not count."""
        agents = requests.get(f"{self.sidecar_url}/v1/agents", timeout=5).json()["agents"]
        return {
            bundle["active_revision"]
            for agent in agents
            if agent["last_seen"] >= self.opa_started
            for bundle in agent.get("bundles", {}).values()
            if bundle.get("active_revision")
        }

    def wait_synced(self, revision: str | None = None, timeout: float = 60) -> str:
        """Wait until the channel serves `revision` (default: whatever it serves) and OPA runs it."""
        assert self.opa is not None

        def synced() -> str | None:
            current = self.channel_revision()
            if current is None or (revision is not None and current != revision):
                return None
            health = self.https.get(f"{self.diagnostics_url}/health?bundles", timeout=5)
            healthy = health.status_code == 200
            return current if healthy and current in self.active_revisions() else None

        what = f"OPA to run revision {revision or 'of the channel'}"
        return str(self.opa.wait_ready(synced, timeout, what))

    def load(self, compiled: Compiled) -> None:
        """Make the sidecar's policy folder hold exactly the YAML files of `compiled.policies` (each
        written beside and renamed into place, as an editor or a Git checkout does), and wait until OPA
        runs `compiled.revision` (the revision depends on the content only, not on the folder)."""
        source = compiled.policies
        wanted = {path.relative_to(source): path.read_bytes() for path in sorted(source.rglob("*.yaml"))}
        for stale in sorted(self.policies.rglob("*.yaml")):
            if stale.relative_to(self.policies) not in wanted:
                stale.unlink()
        for relative, content in wanted.items():
            target = self.policies / relative
            if not target.exists() or target.read_bytes() != content:
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = target.with_name(f".{target.name}.tmp")
                temporary.write_bytes(content)
                temporary.replace(target)
        self.wait_synced(compiled.revision)

    def stop(self) -> None:
        stop_all([p for p in (self.opa, self.sidecar) if p is not None])


def start_opa_webhook(ca: CertificateAuthority, policies: Path, workdir: Path) -> OpaWebhook:
    """Start the sidecar on `policies` and OPA, wait until OPA runs the sidecar's first revision."""
    workdir.mkdir(parents=True, exist_ok=True)
    objects = manifest_objects()
    sidecar_port, opa_port, diagnostics_port = free_port(), free_port(), free_port()
    config_dir = workdir / "config"
    config_dir.mkdir(exist_ok=True)
    for name, text in objects["ConfigMap"]["data"].items():
        (config_dir / name).write_text(
            text.replace(f"127.0.0.1:{SIDECAR_PORT}", f"127.0.0.1:{sidecar_port}"), encoding="utf-8"
        )
    serving = ca.serving("opa-webhook")
    mapping = {
        "/config/": f"{config_dir}/",
        "/tls/tls.crt": str(serving.cert),
        "/tls/tls.key": str(serving.key),
        "/var/opa": str(workdir / "opa-persistence"),
        "/policies": str(policies),
        "/var/nauthera/store": str(workdir / "store"),
        "0.0.0.0:8443": f"127.0.0.1:{opa_port}",
        "0.0.0.0:8181": f"127.0.0.1:{diagnostics_port}",
        f"127.0.0.1:{SIDECAR_PORT}": f"127.0.0.1:{sidecar_port}",
    }
    sidecar_args = [sys.executable, "-m", "nauthera", *_mapped(_container("nauthera")["args"], mapping)]
    sidecar_args += ["--debounce", "50ms"]
    opa_args = [str(find_tool("opa")), *_mapped(_container("opa")["args"], mapping)]
    sidecar = Process(sidecar_args, workdir / "sidecar.log").start()
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    configuration = copy.deepcopy(objects["ValidatingWebhookConfiguration"])
    path = configuration["webhooks"][0]["clientConfig"]["service"]["path"]
    configuration["webhooks"][0]["clientConfig"] = {
        "url": f"https://127.0.0.1:{opa_port}{path}",
        "caBundle": base64.b64encode(ca.pem).decode(),
    }
    configuration["metadata"].pop("annotations", None)  # no cert-manager here: caBundle is set
    webhook = OpaWebhook(
        workdir,
        ca,
        policies,
        sidecar_url,
        f"https://127.0.0.1:{opa_port}",
        f"https://127.0.0.1:{diagnostics_port}",
        sidecar,
        opa_args,
        configuration=configuration,
    )
    try:
        sidecar.wait_ready(
            lambda: requests.get(f"{sidecar_url}/readyz", timeout=2).status_code == 200,
            60,
            "the nauthera sidecar to serve its first revision",
        )
        webhook.start_opa()
    except BaseException:
        webhook.stop()
        raise
    return webhook
