"""A real OCI registry on loopback: distribution v3.1.2 (`.tools/bin/registry`, built by `make tools`).

`start_registry` runs `registry serve CONFIG` on a free port with a temporary storage folder and deletes
enabled, either plain HTTP or TLS (a certificate from `pki.CertificateAuthority`) with htpasswd (bcrypt)
basic auth, or with the registry's token auth (`auth.token`) against `TokenIssuer`: the Docker token
flow's issuer, which checks basic credentials and signs JWTs that the registry verifies (x5c chain to
the CA). Tests, `bench/` and demos share it. `stop` asserts a clean exit on SIGTERM.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import bcrypt
import jwt
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
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


class TokenIssuer:
    """The token service of the Docker token flow on loopback: `GET /token?service=..&scope=..` with
    basic credentials answers `{"token": JWT}` granting the asked actions; wrong credentials get 401."""

    SERVICE = "nauthera-test-registry"
    ISSUER = "nauthera-test-issuer"

    def __init__(
        self, ca: CertificateAuthority, users: dict[str, str], readers: frozenset[str] = frozenset()
    ) -> None:
        self.ca = ca
        self.users = users
        #: Users granted `pull` only, whatever they ask for.
        self.readers = readers
        pair = ca.issue("token-issuer", dns_names=["token-issuer"])
        self._key = pair.key.read_bytes()
        der = x509.load_pem_x509_certificate(pair.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
        self._chain = [base64.b64encode(der).decode()]
        self.issued = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = issuer.answer(self.path, self.headers.get("authorization", ""))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                del args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, path: str, authorization: str) -> tuple[int, dict[str, Any]]:
        scheme, _, encoded = authorization.partition(" ")
        user, _, password = (
            base64.b64decode(encoded or "").decode().partition(":") if encoded else ("", "", "")
        )
        expected = self.users.get(user)
        if scheme.lower() != "basic" or expected is None or not hmac.compare_digest(password, expected):
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}
        query = parse_qs(urlparse(path).query)
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            granted = [a for a in actions.split(",") if user not in self.readers or a == "pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.ISSUER, "sub": user, "aud": self.SERVICE, "exp": now + 300, "nbf": now - 10,
            "iat": now, "jti": uuid.uuid4().hex, "access": access,
        }  # fmt: skip
        self.issued += 1
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": self._chain})
        return 200, {"token": token, "access_token": token, "expires_in": 300}

    def config(self) -> dict[str, Any]:
        return {
            "realm": self.realm,
            "service": self.SERVICE,
            "issuer": self.ISSUER,
            "rootcertbundle": str(self.ca.cert),
        }

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the token issuer did not stop"


def start_registry(
    workdir: Path,
    *,
    ca: CertificateAuthority | None = None,
    users: dict[str, str] | None = None,
    delete: bool = True,
    name: str = "registry",
    tokens: TokenIssuer | None = None,
) -> Registry:
    """A registry serving on 127.0.0.1: TLS from `ca` when given, htpasswd auth for `users` when given,
    token auth through `tokens` when given."""
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
    if tokens is not None:
        config["auth"] = {"token": tokens.config()}
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
    # With token auth /v2/ answers 401 and the challenge: that is the registry up, too.
    process.wait_ready(
        lambda: session.get(f"{registry.url}/v2/", timeout=2).status_code in (200, 401),
        30,
        "the registry to answer /v2/",
    )
    return registry
