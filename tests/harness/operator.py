"""`nauthera operator` as a process against the loopback control plane, for tests, benchmarks and demos.

It runs as the user `nauthera-operator` (its own client certificate), so the API server's audit log
(tests/harness/controlplane.py) tells its requests apart from everyone else's.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .controlplane import ControlPlane
from .pki import KeyPair
from .processes import Process, free_port

GROUP_PATH = "/apis/auth.nauthera.io/v1alpha1"


@dataclass
class RunningOperator:
    process: Process
    url: str
    store: Path | str
    name: str
    session: requests.Session = field(default_factory=requests.Session)

    def readiness(self) -> dict[str, Any]:
        """The operator's part of /readyz (synced, leading, revision, stats); 503 is fine here."""
        body: dict[str, Any] = self.session.get(f"{self.url}/readyz", timeout=5).json()
        operator: dict[str, Any] = body["operator"]
        return operator

    def wait_synced(self, timeout: float = 60) -> dict[str, Any]:
        state: dict[str, Any] = self.process.wait_ready(
            lambda: (r := self.readiness())["synced"] and r["revision"] and r, timeout, f"{self.name} to sync"
        )
        return state

    def stop(self) -> None:
        self.session.close()  # an idle keep-alive connection would hold uvicorn's graceful shutdown
        self.process.stop()


def start_operator(
    plane: ControlPlane,
    workdir: Path,
    name: str = "operator",
    *flags: str,
    env: dict[str, str] | None = None,
    store: Path | str | None = None,
    tls: KeyPair | None = None,
) -> RunningOperator:
    """Start `nauthera operator` on a free port: plain HTTP, or HTTPS with `tls` (the webhook needs it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    store = store or workdir / f"{name}-store"
    args = [
        sys.executable,
        "-m",
        "nauthera",
        "operator",
        "--kubeconfig",
        str(plane.operator_kubeconfig),
        "--store",
        str(store),
        "--listen",
        f"127.0.0.1:{port}",
        *flags,
    ]
    if tls is not None:
        args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    process = Process(args, workdir / f"{name}.log", env=env).start()
    session = plane.ca.session() if tls is not None else requests.Session()
    scheme = "https" if tls is not None else "http"
    return RunningOperator(process, f"{scheme}://127.0.0.1:{port}", store, name, session)


def list_objects(plane: ControlPlane, plural: str) -> dict[str, dict[str, Any]]:
    """`namespace/name` → object, for every object of `plural` (authclients, authpolicies)."""
    deadline = time.monotonic() + 60
    response = plane.api.get(plane.url(f"{GROUP_PATH}/{plural}"), timeout=30)
    while response.status_code == 429 and time.monotonic() < deadline:
        # A restarted API server throttles until its priority-and-fairness config is loaded; like kubectl,
        # wait for its Retry-After and ask again.
        time.sleep(float(response.headers.get("Retry-After", "1")))
        response = plane.api.get(plane.url(f"{GROUP_PATH}/{plural}"), timeout=30)
    response.raise_for_status()
    return {f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in response.json()["items"]}


def current(obj: dict[str, Any], revision: str | None = None) -> bool:
    """Whether the object's status describes its current generation (and, if given, `revision`)."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return False
    return revision is None or status.get("revision") == revision


_TTLS = ["5m", "10m", "15m", "1h", "12h", "7d"]
_HOSTS = [
    "https://app.example.com/cb",
    "https://shop.example.com/cb",
    "http://localhost:8080/cb",
    "http://127.0.0.1:8080/cb",
    "https://evil.test/cb",
    "https://*.example.com/cb",
]
_SCOPES = ["openid", "profile", "email", "api:read", "api:orders.write", "admin"]
_GRANTS = {
    "web": ["authorization_code", "refresh_token", "implicit"],
    "spa": ["authorization_code", "refresh_token", "implicit"],
    "native": ["authorization_code", "refresh_token"],
    "service": ["client_credentials", "urn:ietf:params:oauth:grant-type:jwt-bearer"],
    "device": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
}
_METHODS = ["none", "client_secret_basic", "private_key_jwt", "tls_client_auth"]


def generated_client(index: int, namespaces: list[str], seed: int = 11) -> dict[str, Any]:
    """A seeded, varied AuthClient (compliant or not) in one of `namespaces`: client `index` depends only
    on the seed and `index`."""
    rng = random.Random(seed * 1_000_003 + index)
    app_type = rng.choice(list(_GRANTS))
    spec: dict[str, Any] = {
        "applicationType": app_type,
        "grantTypes": sorted(set(rng.sample(_GRANTS[app_type], rng.randint(1, 2)))),
        "scopes": sorted(set(rng.sample(_SCOPES, rng.randint(1, 3)))),
        "redirectUris": sorted(set(rng.sample(_HOSTS, rng.randint(1, 2)))),
        "pkce": {"required": rng.random() < 0.8, "method": "S256"},
        "token": {"accessTokenTTL": rng.choice(_TTLS), "idTokenTTL": rng.choice(_TTLS[:3])},
    }
    if rng.random() < 0.5:
        spec["tokenEndpointAuthMethod"] = rng.choice(_METHODS)
    labels = {"tier": rng.choice(["prod", "dev"])}
    if rng.random() < 0.5:
        labels["env"] = rng.choice(["prod", "staging", "test"])
    return {
        "apiVersion": "auth.nauthera.io/v1alpha1",
        "kind": "AuthClient",
        "metadata": {"name": f"generated-{index:05d}", "namespace": rng.choice(namespaces), "labels": labels},
        "spec": spec,
    }
