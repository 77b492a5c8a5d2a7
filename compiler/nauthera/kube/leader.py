"""Leader election on a `coordination.k8s.io` Lease named `nauthera-operator` (client-go's algorithm).

The holder renews every `retry` seconds; a candidate takes the Lease over once it has seen the same
record unchanged for `lease_seconds` (measured on its own clock, so clock skew between nodes does not
matter). Every change is an update with the resourceVersion it read, so two candidates never both win.
A holder that cannot renew within `renew_deadline` stops writing at once, before anyone can take over.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nauthera.kube.client import LEASES, KubeClient, KubeError

log = logging.getLogger("nauthera.kube.leader")
LEASE_NAME = "nauthera-operator"
DEFAULT_NAMESPACE = "nauthera-system"


def lease_namespace(option: str | None) -> str:
    return option or os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE


def identity() -> str:
    """Unique per process: the pod's name, else the host name with a random suffix."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{secrets.token_hex(4)}"


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        on_change: Callable[[bool], None],
        *,
        lease_seconds: int = 10,
        renew_deadline: float = 7.0,
        retry: float = 2.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.on_change = on_change
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry = retry
        self.leading = False
        self.holder: str | None = None
        self._observed: tuple[str, float] | None = None  # (resourceVersion, monotonic time first seen)
        self._renewed = 0.0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> LeaderElector:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop campaigning; a holder releases the Lease so that a standby takes over at once."""
        self._stop.set()
        self.thread.join(timeout=self.retry + 10)
        if self.leading:
            self._set_leading(False)
            try:
                self._release()
            except KubeError as error:
                log.warning("could not release the lease: %s", error)

    def _set_leading(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info(
                "%s %s the lease %s/%s", self.name, "holds" if leading else "lost", self.namespace, LEASE_NAME
            )
            self.on_change(leading)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._try_acquire_or_renew()
            except KubeError as error:
                log.warning("lease %s/%s: %s", self.namespace, LEASE_NAME, error)
            if self.leading and time.monotonic() - self._renewed > self.renew_deadline:
                self._set_leading(False)  # cannot prove we still hold it: stop writing now
            self._stop.wait(self.retry)

    def _path(self, name: str | None = None) -> str:
        return LEASES.path(self.namespace, name)

    def _try_acquire_or_renew(self) -> None:
        try:
            lease: dict[str, Any] = self.client.request("GET", self._path(LEASE_NAME), timeout=5)
        except KubeError as error:
            if error.status != 404:
                raise
            self._create()
            return
        spec = lease.get("spec") or {}
        version = str(lease["metadata"]["resourceVersion"])
        self.holder = spec.get("holderIdentity") or None
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, time.monotonic())
        expired = time.monotonic() - self._observed[1] > float(
            spec.get("leaseDurationSeconds") or self.lease_seconds
        )
        if self.holder not in (None, self.name) and not expired:
            self._set_leading(False)
            return
        now = _micro_time()
        transitions = int(spec.get("leaseTransitions") or 0)
        if self.holder != self.name:
            transitions += 1
            spec["acquireTime"] = now
        spec.update(
            holderIdentity=self.name,
            leaseDurationSeconds=self.lease_seconds,
            renewTime=now,
            leaseTransitions=transitions,
        )
        lease["spec"] = spec
        try:
            updated = self.client.request("PUT", self._path(LEASE_NAME), body=lease, timeout=5)
        except KubeError as error:
            if error.status == 409:  # someone else changed it first: look again next round
                return
            raise
        self._won(updated)

    def _create(self) -> None:
        now = _micro_time()
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            created = self.client.request("POST", self._path(), body=lease, timeout=5)
        except KubeError as error:
            if error.status == 409:
                return
            raise
        self._won(created)

    def _won(self, lease: dict[str, Any]) -> None:
        self._renewed = time.monotonic()
        self._observed = (str(lease["metadata"]["resourceVersion"]), self._renewed)
        self.holder = self.name
        self._set_leading(True)

    def _release(self) -> None:
        lease: dict[str, Any] = self.client.request("GET", self._path(LEASE_NAME), timeout=5)
        if (lease.get("spec") or {}).get("holderIdentity") != self.name:
            return
        lease["spec"].update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro_time())
        self.client.request("PUT", self._path(LEASE_NAME), body=lease, timeout=5)
