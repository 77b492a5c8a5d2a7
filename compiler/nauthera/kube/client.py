"""The Kubernetes API as raw JSON, on the official client's configuration and connection pool.

`kubernetes.config` loads a kubeconfig (certificates, tokens, exec plugins) or the in-cluster service
account (with token rotation); requests go through its `ApiClient`, so authentication and TLS are the
official client's. Bodies stay plain dicts: the typed models cost time and memory at 10,000 objects and
custom resources have none anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from nauthera import __version__
from nauthera.compile.schema import GROUP, VERSION
from nauthera.errors import NautheraError

log = logging.getLogger("nauthera.kube")
JSON = "application/json"
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "nauthera"


class KubeError(NautheraError):
    """The API server refused a request (`status` is its HTTP code) or could not be reached (status 0)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Resource:
    """One resource type: where its objects live in the API."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        path = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{self.plural}"
        if name:
            path += f"/{name}"
        return f"{path}/{subresource}" if subresource else path


AUTHCLIENTS = Resource(GROUP, VERSION, "authclients", "AuthClient")
AUTHPOLICIES = Resource(GROUP, VERSION, "authpolicies", "AuthPolicy")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
EVENTS = Resource("", "v1", "events", "Event")


def object_key(obj: Mapping[str, Any]) -> str:
    """`namespace/name`, the id the decision document and statuses use."""
    metadata = obj["metadata"]
    return f"{metadata.get('namespace', '')}/{metadata['name']}"


class KubeClient:
    """One API server connection pool; safe to share between threads (urllib3 pools are)."""

    def __init__(self, kubeconfig: Path | None, pool_size: int = 16) -> None:
        configuration = k8s.Configuration()
        try:
            if kubeconfig is not None:
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(kubeconfig), client_configuration=configuration
                )
            else:
                k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
        except (ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, KeyError) as error:
            where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster service account"
            raise NautheraError(f"cannot load {where}: {error}") from error
        configuration.connection_pool_maxsize = pool_size
        self.server: str = configuration.host
        self.api = k8s.ApiClient(configuration)
        self.api.user_agent = f"nauthera-operator/{__version__}"

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str | int] | None,
        body: Any,
        content_type: str,
        timeout: float | tuple[float, float],
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": JSON, "Content-Type": content_type}
        serialized = self.api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        method, url, headers, payload = serialized[:4]
        try:
            response = self.api.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=timeout
            )
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as error:
            raise KubeError(0, f"cannot reach the API server at {self.server}: {error}") from error
        raw: urllib3.BaseHTTPResponse = response.response
        return raw

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float = 30.0,
    ) -> Any:
        """Send one request; the decoded JSON answer, or KubeError with the API server's Status message."""
        raw = self._send(method, path, query, body, content_type, timeout)
        try:
            data = raw.read()
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubeError(0, f"connection to {self.server} broke: {error}") from error
        finally:
            raw.release_conn()
        if raw.status >= 300:
            raise _status_error(raw.status, data)
        try:
            return json.loads(data) if data else {}
        except ValueError as error:
            raise KubeError(0, f"{self.server}{path} answered something that is not JSON: {error}") from error

    def list(
        self,
        resource: Resource,
        page_size: int = 500,
        keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object of `resource` in all namespaces (paged) and the list's resourceVersion. `keep`
        reduces each object as its page arrives, so 10,000 full objects never sit in memory at once."""
        items: list[dict[str, Any]] = []
        query: dict[str, str | int] = {"limit": page_size}
        while True:
            page = self.request("GET", resource.path(), query=query, timeout=60)
            found = page.get("items") or []
            items.extend(map(keep, found) if keep else found)
            token = page.get("metadata", {}).get("continue")
            if not token:
                return items, str(page["metadata"]["resourceVersion"])
            query["continue"] = token

    def watch(self, resource: Resource, resource_version: str, seconds: int) -> WatchStream:
        """A watch from `resource_version` that the API server ends after `seconds`, with bookmarks."""
        query: dict[str, str | int] = {
            "watch": 1,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": seconds,
        }
        raw = self._send("GET", resource.path(), query, None, JSON, (10.0, seconds + 30.0))
        if raw.status >= 300:
            data = raw.read()
            raw.release_conn()
            raise _status_error(raw.status, data)
        return WatchStream(raw, self.server)

    def replace_status(
        self, resource: Resource, namespace: str, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        """Replace `status` through the status subresource, only if the object is still at
        `resource_version` (409 Conflict otherwise: the caller decides again on the newer object).

        An update, not a merge patch: a JSON merge patch would drop the `"policy": null` of fail-closed
        findings, which the decision document has and the status must keep.
        """
        body = {
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": resource_version},
            "status": dict(status),
        }
        result: dict[str, Any] = self.request("PUT", resource.path(namespace, name, "status"), body=body)
        return result

    def apply(self, path: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under the field manager `nauthera`, taking over conflicting fields."""
        result: dict[str, Any] = self.request(
            "PATCH",
            path,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=dict(document),
            content_type=APPLY_PATCH,
        )
        return result


class WatchStream:
    """The events of one watch response, decoded line by line; `close` from another thread ends it."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, server: str) -> None:
        self.raw = raw
        self.server = server

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending = b""
        try:
            for chunk in self.raw.stream(amt=None, decode_content=False):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            raise KubeError(0, f"watch on {self.server} broke: {error}") from error
        finally:
            self.raw.release_conn()

    def close(self) -> None:
        """Unblock a reader waiting on the socket (urllib3 `shutdown`), then drop the connection."""
        shutdown = getattr(self.raw, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.raw.close()


def _status_error(code: int, data: bytes) -> KubeError:
    try:
        status = json.loads(data)
    except ValueError:
        return KubeError(code, data.decode(errors="replace")[:500])
    if not isinstance(status, dict):
        return KubeError(code, str(status)[:500])
    return KubeError(code, str(status.get("message", "")), str(status.get("reason", "")))
