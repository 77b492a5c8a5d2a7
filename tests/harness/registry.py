"""A real OCI registry on loopback: distribution v3.1.2 (`.tools/bin/registry`, built by `make tools`).

`Registry.start` runs `registry serve CONFIG` on a free port with a temporary storage folder and deletes
enabled, either plain HTTP or TLS (a certificate from `pki.CertificateAuthority`) with htpasswd (bcrypt)
basic auth. Tests, `bench/` and demos share it. `stop` asserts a clean exit on SIGTERM.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import requests
import yaml
from nauthera.engines.tools import find_tool

from .pki import CertificateAuthority
from .processes import Process, free_port


@dataclass
class Registry:
    process: Process
    host: str
    folder: Path
    tls: bool
    #: user -> password accepted by htpasswd (empty: no auth).
    users: dict[str, str] = field(default_factory=dict)
    ca: Path | None = None

    def store(self, repository: str) -> str:
        """The `--store` URL of `repository` in this registry."""
        return f"{'oci' if self.tls else 'oci+http'}://{self.host}/{repository}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def docker_config(self, folder: Path, user: str | None = None, password: str | None = None) -> Path:
        """A `DOCKER_CONFIG` folder whose config.json holds basic credentials for this registry."""
        folder.mkdir(parents=True, exist_ok=True)
        auths: dict[str, Any] = {}
        if user is not None:
            secret = password if password is not None else self.users[user]
            auths[self.host] = {"auth": base64.b64encode(f"{user}:{secret}".encode()).decode()}
        (folder / "config.json").write_text(json.dumps({"auths": auths}))
        return folder

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        if self.ca is not None:
            session.verify = str(self.ca)
        if self.users:
            session.auth = next(iter(self.users.items()))
        return session

    def tags(self, repository: str) -> list[str]:
        answer = self.session().get(f"{self.url}/v2/{repository}/tags/list", timeout=10)
        if answer.status_code == 404:
            return []
        answer.raise_for_status()
        return list(answer.json().get("tags") or [])

    def opa_source(
        self, repository: str, channel: str, user: str | None = None
    ) -> tuple[dict[str, Any], str]:
        """OPA's `services.X` (type oci) and `bundles.B.resource` to pull `channel` of `repository`
        (`opa_agent(..., registry=...)`)."""
        service: dict[str, Any] = {"url": self.url, "type": "oci"}
        if user is not None:
            # Basic auth for OCI: "user:password" in plain text, OPA base64-encodes it.
            service["credentials"] = {"bearer": {"scheme": "Basic", "token": f"{user}:{self.users[user]}"}}
        if self.ca is not None:
            service["tls"] = {"ca_cert": str(self.ca)}
        return service, f"{self.host}/{repository}:{channel}"

    def stop(self) -> None:
        self.process.stop()


def start_registry(
    workdir: Path,
    *,
    ca: CertificateAuthority | None = None,
    users: dict[str, str] | None = None,
    delete: bool = True,
    name: str = "registry",
) -> Registry:
    """A registry serving on 127.0.0.1: TLS from `ca` when given, htpasswd auth for `users` when given."""
    port = free_port()
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(folder / "data")},
            "delete": {"enabled": delete},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if ca is not None:
        pair = ca.serving(f"{name}-tls")
        config["http"]["tls"] = {"certificate": str(pair.cert), "key": str(pair.key)}
    if users:
        htpasswd = folder / "htpasswd"
        htpasswd.write_text(
            "".join(
                f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
                for u, p in users.items()
            )
        )
        config["auth"] = {"htpasswd": {"realm": "nauthera-test", "path": str(htpasswd)}}
    config_file = folder / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    # Without this the registry tries to export traces and logs an error every 5 seconds.
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none"}
    process = Process([find_tool("registry"), "serve", config_file], folder / "registry.log", env=env).start()
    registry = Registry(
        process,
        f"127.0.0.1:{port}",
        folder,
        tls=ca is not None,
        users=dict(users or {}),
        ca=ca.cert if ca is not None else None,
    )
    session = registry.session()
    process.wait_ready(
        lambda: session.get(f"{registry.url}/v2/", timeout=2).status_code == 200,
        30,
        "the registry to answer /v2/",
    )
    return registry
