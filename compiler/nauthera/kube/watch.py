"""List and watch: each resource's objects mirrored into a bounded queue that keeps the latest change
per object, so a burst of edits to one object costs one evaluation.

A `Reflector` lists, then watches from the list's resourceVersion (with bookmarks, so a quiet resource
still advances it); when the API server says 410 Gone it lists again and emits the differences (deletions
included); when the connection breaks it waits with exponential backoff and resumes from the last
resourceVersion it saw, so an API server restart loses no update.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nauthera.kube.client import KubeClient, KubeError, Resource, object_key

log = logging.getLogger("nauthera.kube.watch")
#: Metadata the operator reads; managedFields and annotations (last-applied-configuration) are dropped
#: on arrival, which keeps 10,000 clients within a small memory budget.
_KEPT_METADATA = ("name", "namespace", "uid", "generation", "resourceVersion", "labels", "deletionTimestamp")


def compact(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    kept: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {key: metadata[key] for key in _KEPT_METADATA if key in metadata},
    }
    for part in ("spec", "status"):
        if part in obj:
            kept[part] = obj[part]
    return kept


@dataclass(frozen=True)
class Change:
    """The latest state of one object: `obj` None means it was deleted."""

    resource: Resource
    key: str
    obj: dict[str, Any] | None


class ChangeQueue:
    """Latest change per (resource, object); producers block while `capacity` distinct objects wait."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._items: dict[tuple[str, str], Change] = {}
        self._condition = threading.Condition()
        self._closed = False
        self.coalesced = 0

    def put(self, change: Change) -> None:
        slot = (change.resource.plural, change.key)
        with self._condition:
            while len(self._items) >= self.capacity and slot not in self._items and not self._closed:
                self._condition.wait(1.0)
            if slot in self._items:
                self.coalesced += 1
            self._items[slot] = change
            self._condition.notify_all()

    def wake(self) -> None:
        """Make a waiting `take` return (possibly empty), e.g. when leadership or policies changed."""
        with self._condition:
            self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def take(self, timeout: float, settle: float = 0.05, longest: float = 0.5) -> list[Change]:
        """Wait up to `timeout` for a change; then keep collecting until the stream has been quiet for
        `settle` seconds or `longest` seconds passed (a burst becomes one batch); return and clear."""
        with self._condition:
            if not self._items and not self._closed:
                self._condition.wait(timeout)
            if self._items:
                started = time.monotonic()
                while not self._closed:
                    size = len(self._items)
                    remaining = longest - (time.monotonic() - started)
                    if remaining <= 0:
                        break
                    self._condition.wait(min(settle, remaining))
                    if len(self._items) == size:
                        break
            batch = list(self._items.values())
            self._items.clear()
            self._condition.notify_all()
            return batch


class Backoff:
    """Exponential backoff with jitter: 0.2 s doubling up to 10 s, reset after a success."""

    def __init__(self, first: float = 0.2, cap: float = 10.0) -> None:
        self.first, self.cap, self.next_delay = first, cap, first

    def reset(self) -> None:
        self.next_delay = self.first

    def delay(self) -> float:
        delay = self.next_delay * random.uniform(0.8, 1.2)
        self.next_delay = min(self.next_delay * 2, self.cap)
        return delay


class _GoneError(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class Reflector:
    """Mirrors one resource into a ChangeQueue from its own thread until `stop` is set."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        queue: ChangeQueue,
        stop: threading.Event,
        watch_seconds: int = 300,
    ) -> None:
        self.client = client
        self.resource = resource
        self.queue = queue
        self.stop = stop
        self.watch_seconds = watch_seconds
        self.synced = threading.Event()
        self.known: dict[str, str] = {}
        self.relists = 0
        self.reconnects = 0
        self._stream_lock = threading.Lock()
        self._stream: Any = None
        self.thread = threading.Thread(target=self._run, name=f"watch-{resource.plural}", daemon=True)

    def start(self) -> Reflector:
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop (with `stop` set) and unblock a watch waiting for the next event."""
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()

    def _run(self) -> None:
        backoff = Backoff()
        resource_version: str | None = None
        while not self.stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                    self.synced.set()
                resource_version = self._watch(resource_version)
                backoff.reset()
            except _GoneError:
                self.relists += 1
                log.info(
                    "%s: resourceVersion %s expired (410 Gone); listing again",
                    self.resource.plural,
                    resource_version,
                )
                resource_version = None
            except KubeError as error:
                if self.stop.is_set():
                    return
                if error.status == 410:
                    self.relists += 1
                    resource_version = None
                    continue
                self.reconnects += 1
                delay = backoff.delay()
                log.warning("%s: %s; retrying in %.1f s", self.resource.plural, error, delay)
                self.stop.wait(delay)
            except Exception:  # an object we cannot read must not end the mirror: list again later
                log.exception("%s: watch crashed; listing again", self.resource.plural)
                resource_version = None
                self.stop.wait(backoff.delay())

    def _emit(self, obj: dict[str, Any] | None, key: str) -> None:
        self.queue.put(Change(self.resource, key, compact(obj) if obj is not None else None))

    def _relist(self) -> str:
        items, resource_version = self.client.list(self.resource, keep=compact)
        listed = {}
        for item in items:
            key = object_key(item)
            listed[key] = str(item["metadata"]["resourceVersion"])
            if self.known.get(key) != listed[key]:
                self.queue.put(Change(self.resource, key, item))
        for key in set(self.known) - set(listed):
            self._emit(None, key)
        self.known = listed
        log.info("%s: listed %d at resourceVersion %s", self.resource.plural, len(items), resource_version)
        return resource_version

    def _watch(self, resource_version: str) -> str:
        stream = self.client.watch(self.resource, resource_version, self.watch_seconds)
        with self._stream_lock:
            self._stream = stream
        try:
            for event in stream:
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _GoneError
                    raise KubeError(
                        int(obj.get("code") or 0), str(obj.get("message")), str(obj.get("reason"))
                    )
                resource_version = str(obj["metadata"]["resourceVersion"])
                if kind == "BOOKMARK":
                    continue
                key = object_key(obj)
                if kind == "DELETED":
                    self.known.pop(key, None)
                    self._emit(None, key)
                else:
                    self.known[key] = resource_version
                    self._emit(obj, key)
                if self.stop.is_set():
                    break
        finally:
            with self._stream_lock:
                self._stream = None
        return resource_version
