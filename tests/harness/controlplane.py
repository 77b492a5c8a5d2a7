"""A real Kubernetes control plane on loopback: etcd + kube-apiserver, shared by tests, benchmarks and demos.

No kubelet, scheduler or controller manager runs: objects are stored and admitted (CRDs, webhooks,
server-side apply, status subresources, dry runs) but pods never start. Everything binds to free ports
on 127.0.0.1, the PKI is generated per run (tests/harness/pki.py), and `stop` ends every process it
started with SIGTERM and asserts that each exits cleanly.

    with control_plane(workdir) as plane:
        plane.kubectl("apply", "--server-side", "-f", "deploy/crds")
        plane.api.get(f"{plane.server}/apis/auth.nauthera.io/v1alpha1/authclients")

The API server writes an audit log (`plane.audit_log`, JSON lines) of every status write and Event, and of
every request by the user `nauthera-operator` (`plane.operator_kubeconfig`): counting the operator's
writes and its idle traffic from the server's side, not from the operator's own counters.
`restart_apiserver` stops kube-apiserver and starts it again on the same port (etcd keeps the data).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from nauthera.engines.tools import find_tool

from .pki import CertificateAuthority, KeyPair, signing_key
from .processes import Process, free_port, stop_all, wait_until

#: The engines a control plane needs (built by `make tools`); tests/conftest.py fails without them.
ENGINES = ("etcd", "kube-apiserver", "kubectl")
READY_TIMEOUT = 90.0
#: The user (client certificate common name, cluster-admin) that operators run as in tests and benchmarks.
OPERATOR_USER = "nauthera-operator"
#: What the audit log records: writes of our status subresources and Events by anyone, and everything the
#: operator's user does (watches included). Metadata level: who, what, when and the answer's code.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "Metadata", "users": [OPERATOR_USER]},
        {
            "level": "Metadata",
            "verbs": ["patch", "update"],
            "resources": [
                {"group": "auth.nauthera.io", "resources": ["authclients/status", "authpolicies/status"]}
            ],
        },
        {"level": "Metadata", "verbs": ["create"], "resources": [{"group": "", "resources": ["events"]}]},
        {"level": "None"},
    ],
}


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver, a kubeconfig for kubectl and an HTTPS session for the API."""

    workdir: Path
    ca: CertificateAuthority
    admin: KeyPair
    server: str
    kubeconfig: Path
    processes: list[Process]
    start_seconds: float
    operator_kubeconfig: Path
    api: requests.Session = field(init=False)

    def __post_init__(self) -> None:
        self.api = self.session()

    def session(self) -> requests.Session:
        """A keep-alive HTTPS session authenticated as cluster-admin (the admin client certificate)."""
        return self.ca.session(self.admin)

    def kubectl(
        self,
        *args: str | Path,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 120,
        cwd: Path | None = None,
        interleaved: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster; with `check`, a non-zero exit is a failure.

        With `interleaved`, stderr goes into stdout, in the order a terminal would show them.
        """
        command = [str(find_tool("kubectl")), "--kubeconfig", str(self.kubeconfig), *map(str, args)]
        result = subprocess.run(
            command,
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if interleaved else subprocess.PIPE,
            text=True,
            check=False,
            timeout=timeout,
            cwd=cwd,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`kubectl {shlex.join(map(str, args))}` exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr or ''}"
            )
        return result

    def apply(self, documents: Iterable[dict[str, Any]], *flags: str) -> subprocess.CompletedProcess[str]:
        """`kubectl apply --server-side` of in-memory objects, sent as a JSON `List` (so that strings such
        as `0o17` or `y` stay strings: YAML readers disagree on their type)."""
        stream = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)})
        return self.kubectl("apply", "--server-side", "--force-conflicts", *flags, "-f", "-", stdin=stream)

    def url(self, path: str) -> str:
        return f"{self.server}{path}"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def audit_events(self, since: int = 0) -> list[dict[str, Any]]:
        """Audit events written after byte offset `since` (take one with `audit_offset`)."""
        return self.audit_read(since)[0]

    def audit_read(self, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Complete audit events after byte offset `since`, and the offset to read on from (a line the
        API server is still writing is left for the next read)."""
        with self.audit_log.open("rb") as log:
            log.seek(since)
            data = log.read()
        complete = data.rfind(b"\n") + 1
        events = [json.loads(line) for line in data[:complete].splitlines() if line.strip()]
        return events, since + complete

    def audit_offset(self) -> int:
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver (cleanly) and start it again with the same flags and port; returns how many
        seconds it was unreachable. Clients see their connections and watches break, then recover."""
        apiserver = self.processes[-1]
        assert apiserver.name == "kube-apiserver", apiserver.name
        started = time.monotonic()
        apiserver.stop()
        self.api.close()
        replacement = Process(apiserver.args, apiserver.log).start()
        self.processes[-1] = replacement
        self.api = self.session()
        replacement.wait_ready(
            lambda: self.api.get(self.url("/readyz"), timeout=5).status_code == 200,
            READY_TIMEOUT,
            "kube-apiserver /readyz after a restart",
        )
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd; assert both exit cleanly on SIGTERM."""
        self.api.close()
        stop_all(list(reversed(self.processes)))


def _kubeconfig(path: Path, server: str, ca: CertificateAuthority, admin: KeyPair) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "loopback", "cluster": {"server": server, "certificate-authority": str(ca.cert)}}
        ],
        "users": [
            {"name": "admin", "user": {"client-certificate": str(admin.cert), "client-key": str(admin.key)}}
        ],
        "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "admin"}}],
        "current-context": "loopback",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _etcd(workdir: Path) -> tuple[Process, str]:
    client, peer = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    args = [
        str(find_tool("etcd")),
        "--name=loopback",
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=loopback={peer_url}",
        "--unsafe-no-fsync",  # throwaway data: durability costs time and disk for nothing here
        "--log-level=warn",
    ]
    process = Process(args, workdir / "etcd.log").start()
    process.wait_ready(
        lambda: requests.get(f"{client_url}/health", timeout=2).json().get("health") == "true",
        READY_TIMEOUT,
        "etcd to be healthy",
    )
    return process, client_url


def _apiserver(workdir: Path, etcd_url: str, ca: CertificateAuthority) -> tuple[Process, str]:
    port = free_port()
    audit_policy = workdir / "audit-policy.yaml"
    audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
    serving = ca.serving("kube-apiserver")
    account_public, account_private = signing_key(ca.folder, "service-accounts")
    args = [
        str(find_tool("kube-apiserver")),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        # Loopback is a "public IP" to the endpoint reconciler, which then refuses to start.
        "--endpoint-reconciler-type=none",
        f"--tls-cert-file={serving.cert}",
        f"--tls-private-key-file={serving.key}",
        f"--client-ca-file={ca.cert}",
        "--authorization-mode=RBAC",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={account_public}",
        f"--service-account-signing-key-file={account_private}",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        "--profiling=false",
        f"--audit-policy-file={audit_policy}",
        f"--audit-log-path={workdir / 'audit.log'}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
        "--audit-log-maxsize=0",
        # On SIGTERM, end open watches after 2 s: otherwise a stop waits for every client's watch to time
        # out (minutes) before the process exits.
        "--shutdown-watch-termination-grace-period=2s",
        "--v=0",
    ]
    process = Process(args, workdir / "kube-apiserver.log").start()
    return process, f"https://127.0.0.1:{port}"


def start_control_plane(workdir: Path) -> ControlPlane:
    """Generate the PKI, start etcd and kube-apiserver, and wait until `/readyz` says ok.

    If anything fails on the way, what was already started is stopped before the error propagates.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ca = CertificateAuthority(workdir / "pki")
    admin = ca.issue("nauthera-admin", organization="system:masters", client=True)
    processes: list[Process] = []
    try:
        etcd, etcd_url = _etcd(workdir)
        processes.append(etcd)
        apiserver, server = _apiserver(workdir, etcd_url, ca)
        processes.append(apiserver)
        kubeconfig = _kubeconfig(workdir / "kubeconfig", server, ca, admin)
        operator = ca.issue(OPERATOR_USER, organization="system:masters", client=True)
        operator_kubeconfig = _kubeconfig(workdir / "operator-kubeconfig", server, ca, operator)
        plane = ControlPlane(workdir, ca, admin, server, kubeconfig, processes, 0.0, operator_kubeconfig)
        apiserver.wait_ready(
            lambda: plane.api.get(plane.url("/readyz"), timeout=5).status_code == 200,
            READY_TIMEOUT,
            "kube-apiserver /readyz",
        )
        # /readyz turns ok before the default namespace exists; tests create objects right away.
        apiserver.wait_ready(
            lambda: plane.api.get(plane.url("/api/v1/namespaces/default"), timeout=5).status_code == 200,
            READY_TIMEOUT,
            "the default namespace",
        )
    except BaseException:
        stop_all(list(reversed(processes)))
        raise
    plane.start_seconds = time.monotonic() - started
    return plane


@contextmanager
def control_plane(workdir: Path) -> Iterator[ControlPlane]:
    """A control plane for the duration of the block, stopped (and checked) however the block ends."""
    plane = start_control_plane(workdir)
    try:
        yield plane
    finally:
        plane.stop()


# --- objects ----------------------------------------------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def install_crds(plane: ControlPlane, crds: list[dict[str, Any]], timeout: float = 60) -> list[str]:
    """Apply CRDs server-side and wait until every one is Established; returns their names."""
    assert crds, "no CustomResourceDefinitions to install"
    assert all(c.get("kind") == "CustomResourceDefinition" for c in crds), "install_crds takes only CRDs"
    plane.apply(crds)
    names = [crd["metadata"]["name"] for crd in crds]
    wait_established(plane, names, timeout)
    wait_published(plane, crds, timeout)
    return names


def wait_established(plane: ControlPlane, names: list[str], timeout: float = 60) -> None:
    plane.kubectl(
        "wait",
        "--for=condition=Established",
        f"--timeout={timeout:.0f}s",
        *(f"customresourcedefinition/{name}" for name in names),
        timeout=timeout + 30,
    )


def wait_published(plane: ControlPlane, crds: list[dict[str, Any]], timeout: float = 60) -> None:
    """Wait until the API server's OpenAPI v3 document describes every kind of `crds` (it is rebuilt
    asynchronously after a CRD is Established; `kubectl explain` and client-side tools read it)."""
    wanted: dict[str, set[str]] = {}
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                wanted.setdefault(f"apis/{group}/{version['name']}", set()).add(kind)

    def published() -> bool:
        for path, kinds in wanted.items():
            response = plane.api.get(plane.url(f"/openapi/v3/{path}"), timeout=30)
            if response.status_code != 200:
                return False
            described = {
                entry["kind"]
                for schema in response.json().get("components", {}).get("schemas", {}).values()
                for entry in schema.get("x-kubernetes-group-version-kind", [])
            }
            if not kinds <= described:
                return False
        return True

    wait_until(
        published, timeout, f"the OpenAPI document to describe {sorted(set().union(*wanted.values()))}"
    )


def ensure_namespaces(plane: ControlPlane, names: Iterable[str]) -> None:
    """Create the namespaces that do not exist yet (server-side apply is idempotent)."""
    wanted = sorted(set(names))
    if wanted:
        plane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in wanted)


def status_details(response: requests.Response) -> dict[str, Any]:
    """The `Status` object of a refused API request (message, reason, code), or {} if there is none."""
    try:
        body = response.json()
    except json.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) and body.get("kind") == "Status" else {}
