"""A small client of the OCI distribution API: the dozen calls the registry store needs.

Written on `requests` rather than the `oras` package: oras-py is built around pushing and pulling files
(it writes temporary files and validates with jsonschema on every call), its errors are bare
`ValueError`s without the status or the registry's error codes, it has no HEAD-by-tag, and its TLS
setting replaces the system's trust store instead of adding a private CA. Here every failure names the
registry, what was asked and what it answered (401, 403, 404, TLS), and never a credential.

Credentials come from Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else
`~/.docker/config.json`): `auths.<host>.auth` (base64 `user:password`) or `username`/`password`, and
`credHelpers`/`credsStore` through `docker-credential-<helper> get`. A registry that answers 401 with
`WWW-Authenticate: Basic` gets them as basic auth; one that answers `Bearer realm=...,service=...,
scope=...` (the distribution token flow) gets a token from the realm, fetched with them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import subprocess
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import certifi
import requests

from nauthera.store.base import StoreError

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_LINK = re.compile(r"<([^>]+)>\s*;\s*rel=\"?next\"?")
TIMEOUT = 30


@dataclass(frozen=True)
class Reference:
    """`oci://HOST[:PORT]/REPOSITORY` (HTTPS) or `oci+http://HOST:PORT/REPOSITORY` (plain HTTP)."""

    scheme: str
    host: str
    repository: str

    @classmethod
    def parse(cls, url: str) -> Reference:
        scheme, _, rest = url.partition("://")
        host, _, repository = rest.partition("/")
        repository = repository.rstrip("/")
        if scheme not in ("oci", "oci+http") or not host or not repository:
            raise StoreError(f"{url!r}: a registry store is oci://HOST[:PORT]/REPOSITORY or oci+http://...")
        if not _NAME.match(repository):
            raise StoreError(
                f"{url!r}: {repository!r} is not a repository name (lower-case letters, digits, '.', '_', "
                "'-', separated by '/')"
            )
        return cls("https" if scheme == "oci" else "http", host, repository)

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}/v2/{self.repository}"

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}"


def docker_config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def _host_of(key: str) -> str:
    """`https://host:5000/v1/` and `host:5000` both name host:5000 (Docker's config keys vary)."""
    return key.split("://", 1)[-1].split("/", 1)[0]


def docker_credentials(host: str, path: Path | None = None) -> tuple[str, str] | None:
    """(user, password) for `host` from Docker's config.json, or None when it has none."""
    path = path or docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise StoreError(f"{path}: cannot read Docker's credentials: {error}") from error
    if not isinstance(config, dict):
        raise StoreError(f"{path}: not a Docker config.json")
    helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
    for key, entry in (config.get("auths") or {}).items():
        if _host_of(key) != host or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as error:
                raise StoreError(f"{path}: auths.{key}.auth is not base64 of user:password") from error
            return user, password
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    return _from_helper(str(helper), host) if helper else None


def _from_helper(helper: str, host: str) -> tuple[str, str] | None:
    try:
        completed = subprocess.run(
            [f"docker-credential-{helper}", "get"],
            input=host,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise StoreError(
            f"docker-credential-{helper} (Docker's credential helper) failed: {error}"
        ) from error
    if completed.returncode != 0:
        return None  # "credentials not found in native keychain"
    try:
        answer = json.loads(completed.stdout)
        return str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError) as error:
        raise StoreError(f"docker-credential-{helper} answered something that is not credentials") from error


def _trust(registry_ca: Path | None) -> str | bool:
    """What `verify` gets: the system's CAs plus `registry_ca` in one bundle (a private CA is added, not
    substituted), or True for the usual trust (REQUESTS_CA_BUNDLE is honoured then)."""
    if registry_ca is None:
        return True
    try:
        extra = registry_ca.read_bytes()
    except OSError as error:
        raise StoreError(f"{registry_ca}: cannot read the CA: {error.strerror or error}") from error
    if b"-----BEGIN CERTIFICATE-----" not in extra:
        raise StoreError(f"{registry_ca}: not a PEM certificate")
    handle = tempfile.NamedTemporaryFile(prefix="nauthera-ca-", suffix=".pem", delete=False)  # noqa: SIM115
    with handle:
        handle.write(Path(certifi.where()).read_bytes() + b"\n" + extra)
    return handle.name


class Registry:
    """One repository of one registry, with the session, credentials and tokens that reach it."""

    def __init__(self, url: str, registry_ca: Path | None = None) -> None:
        self.reference = Reference.parse(url)
        self.registry_ca = registry_ca
        self._session: requests.Session | None = None
        self._verify: str | bool = True
        self._credentials: tuple[str, str] | None = None
        self._authorization: dict[str, str] = {}

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._verify = _trust(self.registry_ca)
            if isinstance(self._verify, str):
                weakref.finalize(self, os.unlink, self._verify)
            self._credentials = docker_credentials(self.reference.host)
            self._session = requests.Session()
        return self._session

    # --- requests --------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        ok: tuple[int, ...] = (200,),
        missing_ok: bool = False,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> requests.Response | None:
        """`method` on the repository's `path` (or an absolute URL); None for a 404 when `missing_ok`."""
        url = path if "://" in path else self.reference.base + path
        session = self.session
        for attempt in range(2):
            sent = {**(headers or {}), **self._authorization}
            try:
                response = session.request(
                    method,
                    url,
                    headers=sent,
                    data=data,
                    params=params,
                    verify=self._verify,
                    timeout=TIMEOUT,
                    allow_redirects=method in ("GET", "HEAD"),
                )
            except requests.exceptions.SSLError as error:
                hint = "" if self.registry_ca else " (a private CA? pass it with --registry-ca)"
                raise StoreError(
                    f"registry {self.reference.host}: TLS verification failed for {what}{hint}: "
                    f"{_reason(error)}"
                ) from error
            except requests.RequestException as error:
                raise StoreError(
                    f"registry {self.reference.host}: cannot {what}: {_reason(error)}"
                ) from error
            if response.status_code == 401 and attempt == 0 and self._authenticate(response, what):
                continue
            break
        if response.status_code in ok:
            return response
        if response.status_code == 404 and missing_ok:
            return None
        raise self._refused(response, what)

    def _authenticate(self, challenge: requests.Response, what: str) -> bool:
        """Answer a 401's challenge once: basic credentials, or a bearer token from the realm."""
        header = challenge.headers.get("www-authenticate", "")
        scheme = header.split(" ", 1)[0].lower()
        if self._credentials is None and scheme != "bearer":
            return False
        if scheme == "basic":
            assert self._credentials is not None
            token = base64.b64encode(":".join(self._credentials).encode()).decode()
            if self._authorization.get("Authorization") == f"Basic {token}":
                return False  # these were refused already
            self._authorization = {"Authorization": f"Basic {token}"}
            return True
        if scheme != "bearer":
            return False
        params = dict(_CHALLENGE.findall(header))
        realm = params.pop("realm", None)
        if not realm:
            return False
        try:
            answer = self.session.get(
                realm,
                params=params,
                auth=self._credentials,
                verify=self._verify,
                timeout=TIMEOUT,
            )
        except requests.RequestException as error:
            raise StoreError(
                f"registry {self.reference.host}: cannot get a token for {what} from {realm}: "
                f"{_reason(error)}"
            ) from error
        if answer.status_code != 200:
            raise self._refused(answer, f"a token for {what} (from {realm})")
        bearer: str | None = None
        with contextlib.suppress(ValueError, AttributeError):
            body = answer.json()
            bearer = body.get("token") or body.get("access_token")
        if not bearer:
            raise StoreError(f"registry {self.reference.host}: {realm} answered no token for {what}")
        self._authorization = {"Authorization": f"Bearer {bearer}"}
        return True

    def _refused(self, response: requests.Response, what: str) -> StoreError:
        status = response.status_code
        detail = _errors(response)
        host = self.reference.host
        challenge = dict(_CHALLENGE.findall(response.headers.get("www-authenticate", "")))
        if status == 401 and challenge.get("error") == "insufficient_scope":
            return StoreError(
                f"registry {host} refused {what}: 401 insufficient scope (the account lacks "
                f"{challenge.get('scope', 'the right')}){detail}"
            )
        if status == 401:
            source = docker_config_path()
            why = (
                f"no credentials for {host} in {source}"
                if self._credentials is None
                else f"the credentials for {host} in {source} were not accepted"
            )
            return StoreError(f"registry {host} refused {what}: 401 unauthorized ({why}){detail}")
        if status == 403:
            return StoreError(
                f"registry {host} refused {what}: 403 forbidden (the account lacks the right){detail}"
            )
        if status == 404:
            return StoreError(f"registry {host}: {what}: 404 not found{detail}")
        return StoreError(f"registry {host} refused {what}: {status} {response.reason}{detail}")

    # --- the calls the store needs ---------------------------------------------------------------------

    def tags(self) -> list[str]:
        """Every tag of the repository (following pagination); none for a repository not created yet."""
        found: list[str] = []
        url: str | None = "/tags/list"
        params: dict[str, str] | None = {"n": "1000"}
        while url is not None:
            response = self.request("GET", url, "list tags", params=params, missing_ok=True)
            if response is None:
                return found
            found.extend((response.json() or {}).get("tags") or [])
            link = _LINK.search(response.headers.get("link", ""))
            url = urljoin(f"{self.reference.scheme}://{self.reference.host}", link.group(1)) if link else None
            params = None
        return found

    def manifest_digest(self, ref: str) -> str | None:
        response = self.request(
            "HEAD", f"/manifests/{ref}", f"read tag {ref}", headers={"Accept": MANIFEST_TYPE}, missing_ok=True
        )
        if response is None:
            return None
        digest = response.headers.get("docker-content-digest")
        if digest:
            return digest
        fetched = self.manifest(ref)
        return None if fetched is None else fetched[1]

    def manifest(self, ref: str) -> tuple[bytes, str] | None:
        """The manifest's bytes and digest, or None when `ref` (a tag or digest) does not exist."""
        response = self.request(
            "GET", f"/manifests/{ref}", f"read {ref}", headers={"Accept": MANIFEST_TYPE}, missing_ok=True
        )
        if response is None:
            return None
        return response.content, "sha256:" + hashlib.sha256(response.content).hexdigest()

    def put_manifest(self, ref: str, content: bytes) -> str:
        self.request(
            "PUT",
            f"/manifests/{ref}",
            f"write tag {ref}",
            ok=(200, 201),
            headers={"Content-Type": MANIFEST_TYPE},
            data=content,
        )
        return "sha256:" + hashlib.sha256(content).hexdigest()

    def delete_manifest(self, digest: str, what: str) -> None:
        response = self.request("DELETE", f"/manifests/{digest}", what, ok=(200, 202, 405), missing_ok=True)
        if response is not None and response.status_code == 405:
            raise StoreError(
                f"registry {self.reference.host} refused to {what}: 405, it does not allow deletes "
                "(distribution: storage.delete.enabled: true)"
            )

    def put_blob(self, content: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        if self.request("HEAD", f"/blobs/{digest}", "check a blob", missing_ok=True) is not None:
            return digest
        started = self.request("POST", "/blobs/uploads/", "start a blob upload", ok=(202,))
        assert started is not None
        location = started.headers.get("location")
        if not location:
            raise StoreError(f"registry {self.reference.host} started an upload without a Location")
        upload = urljoin(f"{self.reference.scheme}://{self.reference.host}", location)
        self.request(
            "PUT",
            upload,
            f"upload a blob of {len(content)} bytes",
            ok=(201,),
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream"},
            data=content,
        )
        return digest

    def blob(self, digest: str) -> bytes:
        response = self.request("GET", f"/blobs/{digest}", f"read blob {digest[:19]}")
        assert response is not None
        if "sha256:" + hashlib.sha256(response.content).hexdigest() != digest:
            raise StoreError(f"registry {self.reference.host}: blob {digest[:19]} does not match its digest")
        return response.content


def _errors(response: requests.Response) -> str:
    """The registry's own error codes and messages (distribution's `{"errors": [...]}`), if any."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
        return f": {text}" if text else ""
    return ""


def _reason(error: Exception) -> str:
    """The innermost reason of a requests error, without the URL's query (no credentials go there)."""
    reasons = [str(error)]
    cause: BaseException | None = error
    while cause is not None:
        reasons.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = reasons[-1] or reasons[0]
    return text[:300]
