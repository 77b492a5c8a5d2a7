"""The operator's control loop: mirror the cluster, compile, evaluate with the real OPA, write what changed.

One thread owns all state. Reflector threads feed a coalescing queue; each round takes a batch of
changes, recompiles when a policy changed (only policies that pass validation compile; an invalid one
keeps its last good generation), evaluates the clients that need it in one `opa eval` per chunk
(everything after a new revision, only the changed clients otherwise), and then, on the leader only,
writes the statuses that differ from what the API server holds, Events for clients that become
non-compliant, and the Gatekeeper objects. Status writes are updates conditional on the observed
resourceVersion, rate-limited, on a small pool; a 409 Conflict means the object moved on, so it is
read again and decided again.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nauthera.compile.loading import SourceDocument
from nauthera.compile.model import build_policy
from nauthera.engines.check import evaluate
from nauthera.errors import NautheraError
from nauthera.kube import status as st
from nauthera.kube.affected import may_govern
from nauthera.kube.client import (
    AUTHCLIENTS,
    AUTHPOLICIES,
    EVENTS,
    KubeClient,
    KubeError,
    Resource,
    object_key,
)
from nauthera.kube.compiler import CompiledBundle, compile_documents
from nauthera.kube.gatekeeper import apply_objects, fingerprint
from nauthera.kube.policies import CheckedPolicy, check_folder, check_object
from nauthera.kube.watch import Change, ChangeQueue, Reflector, compact
from nauthera.store.base import BundleStore

log = logging.getLogger("nauthera.kube.operator")
#: Clients per `opa eval`: bounds the input document and the answer held in memory at once.
EVALUATION_CHUNK = 1_000
WRITE_WORKERS = 8


@dataclass(frozen=True)
class OperatorConfig:
    #: Policy folders (a Git checkout) or, when empty, the AuthPolicy resources of the cluster.
    policy_paths: tuple[Path, ...] = ()
    gatekeeper: bool = False
    channel: str = "stable"
    writes_per_second: float = 100.0
    fail_closed: bool = True
    component: str = "nauthera-operator"
    identity: str = "nauthera-operator"


class RateLimiter:
    """A token bucket shared by the write workers: `rate` writes a second, bursts of `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


@dataclass
class Stats:
    """What the operator did, for /readyz, the log and the benchmarks (the API server's audit log is
    the independent count)."""

    rounds: int = 0
    compiles: int = 0
    evaluations: int = 0
    evaluated_clients: int = 0
    client_writes: int = 0
    policy_writes: int = 0
    events: int = 0
    conflicts: int = 0
    write_errors: int = 0
    last_round_seconds: float = 0.0
    last_compile_errors: list[str] = field(default_factory=list)
    #: Rounds that failed (a policy folder gone, the API server refusing), and the last one's error
    #: until a round succeeds: the last good revision stays served meanwhile.
    failed_rounds: int = 0
    last_round_error: str | None = None


def _decision_input(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What OPA decides on: the object without its status (which never decides)."""
    return {key: value for key, value in obj.items() if key != "status"}


def _summarised(client: dict[str, Any]) -> dict[str, Any]:
    """A client as the operator keeps it: its status reduced to `status.summary`."""
    if "status" in client:
        client["status"] = st.summary(client["status"])
    return client


def _inputs_differ(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    if old is None:
        return True
    return bool(
        old.get("spec") != new.get("spec")
        or (old["metadata"].get("labels") or {}) != (new["metadata"].get("labels") or {})
        or old["metadata"].get("uid") != new["metadata"].get("uid")
    )


class Operator:
    def __init__(
        self,
        client: KubeClient,
        store: BundleStore,
        config: OperatorConfig,
        published: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.config = config
        self.published = published
        #: Called (from the reconcile thread) after each failed round: the server counts it.
        self.failed: Callable[[], None] | None = None
        self.queue = ChangeQueue()
        self.stop_event = threading.Event()
        self.stats = Stats()
        self._counting = threading.Lock()  # write callbacks run on the pool's threads
        self.leading = False
        self.limiter = RateLimiter(config.writes_per_second, max(1, int(config.writes_per_second * 2)))
        self.clients: dict[str, dict[str, Any]] = {}
        self.decisions: dict[str, tuple[dict[str, Any], str]] = {}  # key → (decision, revision)
        self.policy_objects: dict[str, dict[str, Any]] = {}
        self.checked: dict[str, tuple[tuple[Any, ...], CheckedPolicy]] = {}
        self.last_good: dict[str, tuple[int | None, SourceDocument]] = {}
        self.compiled: CompiledBundle | None = None
        #: Policy id → the document content the current revision was compiled from.
        self.compiled_documents: dict[str, Any] = {}
        self.revision: str | None = None
        self.gatekeeper_applied: str | None = None
        self._to_evaluate: set[str] = set()
        self._to_write: set[str] = set()
        self._policies_changed = True
        self._policy_status_due = True
        self._leadership_gained = False
        self.ready = threading.Event()
        reflected = [AUTHCLIENTS] if config.policy_paths else [AUTHCLIENTS, AUTHPOLICIES]
        self.reflectors = [Reflector(client, r, self.queue, self.stop_event) for r in reflected]
        self.thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._folder_thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Operator:
        for reflector in self.reflectors:
            reflector.start()
        if self.config.policy_paths:
            self._folder_thread = threading.Thread(
                target=self._watch_folder, name="watch-folder", daemon=True
            )
            self._folder_thread.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.queue.close()
        for reflector in self.reflectors:
            reflector.close()
        self.thread.join(timeout=60)

    def set_leading(self, leading: bool) -> None:
        """Called by the leader elector (or once with True when there is no election)."""
        if leading and not self.leading:
            self._leadership_gained = True
        self.leading = leading
        self.queue.wake()

    def readiness(self) -> dict[str, Any]:
        return {
            "operator": {
                "synced": self.ready.is_set(),
                "leading": self.leading,
                "revision": self.revision,
                "clients": len(self.clients),
                "policies": len(self.policy_objects) if not self.config.policy_paths else len(self.last_good),
                "stats": dict(vars(self.stats)),
            }
        }

    def _watch_folder(self) -> None:
        from watchfiles import watch  # noqa: PLC0415 - only the folder mode needs it

        for _ in watch(*self.config.policy_paths, stop_event=self.stop_event, debounce=100, step=20):
            self._policies_changed = True
            self.queue.wake()

    # --- the loop --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not all(r.synced.is_set() for r in self.reflectors):
            if self.stop_event.wait(0.05):
                return
        while not self.stop_event.is_set():
            changes = self.queue.take(timeout=1.0)
            if self.stop_event.is_set():
                return
            started = time.monotonic()
            try:
                self._round(changes)
                self.stats.last_round_error = None
            except NautheraError as error:
                log.error("reconcile round failed, retrying: %s", error)
                self.stats.failed_rounds += 1
                self.stats.last_round_error = str(error)[:500]
                if self.failed is not None:
                    self.failed()
                self.stop_event.wait(1.0)
                self._policies_changed = True
            except Exception:  # a bug must not stop the audit for good: report it, retry the round
                log.exception("reconcile round crashed, retrying in 5 s")
                self.stop_event.wait(5.0)
                self._policies_changed = True
            self.stats.last_round_seconds = time.monotonic() - started

    def _round(self, changes: Sequence[Change]) -> None:
        self.stats.rounds += 1
        for change in changes:
            self._absorb(change)
        if self._policies_changed:
            self._policies_changed = False
            self._recompile()
        if self._to_evaluate and self.revision is not None:
            self._evaluate(sorted(self._to_evaluate))
        self.ready.set()
        if not self.leading:
            return
        if self._leadership_gained:
            self._leadership_gained = False
            self._to_write.update(self.clients)
            self._policy_status_due = True
            self.gatekeeper_applied = None
        self._apply_gatekeeper()
        self._write_clients()
        if self._policy_status_due and not self.config.policy_paths:
            self._write_policies()

    def _absorb(self, change: Change) -> None:
        if change.resource is AUTHCLIENTS:
            if change.obj is None:
                self.clients.pop(change.key, None)
                self._policy_status_due |= self.decisions.pop(change.key, None) is not None
                self._to_evaluate.discard(change.key)
                self._to_write.discard(change.key)
                return
            if _inputs_differ(self.clients.get(change.key), change.obj):
                self._to_evaluate.add(change.key)
            self.clients[change.key] = _summarised(change.obj)
            self._to_write.add(change.key)
            return
        if change.obj is None:
            self.policy_objects.pop(change.key, None)
            self._policies_changed = True
            return
        old = self.policy_objects.get(change.key)
        if old is None or old.get("spec") != change.obj.get("spec"):
            self._policies_changed = True
        self.policy_objects[change.key] = change.obj
        self._policy_status_due = True

    # --- compile ---------------------------------------------------------------------------------------

    def _checked_policies(self) -> list[tuple[CheckedPolicy, int | None]]:
        if self.config.policy_paths:
            checked, loose = check_folder(self.config.policy_paths)
            self.stats.last_compile_errors = [f"{d.position}: {d.message}" for d in loose][:50]
            return [(c, None) for c in checked]
        found = []
        for key, obj in self.policy_objects.items():
            metadata = obj["metadata"]
            stamp = (
                metadata.get("uid"),
                metadata.get("generation"),
                json.dumps(obj.get("spec"), sort_keys=True),
            )
            cached = self.checked.get(key)
            if cached is None or cached[0] != stamp:
                cached = (stamp, check_object(obj))
                self.checked[key] = cached
            found.append((cached[1], metadata.get("generation")))
        for key in set(self.checked) - set(self.policy_objects):
            del self.checked[key]
        return found

    def _recompile(self) -> None:
        checked = self._checked_policies()
        present = {c.id for c, _ in checked}
        for ident in set(self.last_good) - present:
            del self.last_good[ident]
        for policy, generation in checked:
            if policy.ok and policy.document is not None:
                self.last_good[policy.id] = (generation, policy.document)
            elif policy.errors:
                log.warning("AuthPolicy %s is invalid: %s", policy.id, "; ".join(policy.errors))
        documents = [doc for _, doc in self.last_good.values()]
        with tempfile.TemporaryDirectory(prefix="nauthera-operator-") as scratch:
            compiled = compile_documents(
                documents,
                Path(scratch),
                sources=self.config.policy_paths,
                gatekeeper=self.config.gatekeeper,
                fail_closed=self.config.fail_closed,
            )
            self.stats.compiles += 1
            if compiled.revision != self.store.channel_revision(self.config.channel):
                self.store.publish(compiled.bundle, self.config.channel, message="operator compile")
        self.compiled = compiled
        self._policy_status_due = True
        if compiled.revision != self.revision:
            log.info("%d policies enforced by revision %s", len(compiled.policies), compiled.revision)
            self._to_evaluate.update(self._affected(documents))
            self.revision = compiled.revision
            if self.published is not None:
                self.published(self.config.channel)

    def _affected(self, documents: Sequence[SourceDocument]) -> set[str]:
        """Clients whose decision the new policy set may change: every client on the first compile,
        then those the changed policies governed or may govern now (see nauthera.kube.affected)."""
        contents = {
            f"{d.content['metadata']['namespace']}/{d.content['metadata']['name']}": d for d in documents
        }
        previous, self.compiled_documents = (
            self.compiled_documents,
            {k: d.content for k, d in contents.items()},
        )
        if self.revision is None:
            return set(self.clients)
        changed = {
            k for k in set(previous) | set(contents) if previous.get(k) != self.compiled_documents.get(k)
        }
        if not changed:  # the same policies, yet another bundle (a new compiler version): decide everything
            return set(self.clients)
        edited = [build_policy(contents[k]) for k in sorted(changed) if k in contents]
        affected = set()
        for key, obj in self.clients.items():
            entry = self.decisions.get(key)
            if (
                entry is None
                or changed & set(entry[0].get("policies") or [])
                or any(may_govern(policy, obj) for policy in edited)
            ):
                affected.add(key)
        log.info(
            "policies changed: %s; %d of %d clients to evaluate",
            sorted(changed),
            len(affected),
            len(self.clients),
        )
        return affected

    # --- evaluate --------------------------------------------------------------------------------------

    def _evaluate(self, keys: list[str]) -> None:
        assert self.revision is not None
        revision = self.revision
        started = time.monotonic()
        bundle = self.store.bundle_path(revision)
        for start in range(0, len(keys), EVALUATION_CHUNK):
            chunk = [k for k in keys[start : start + EVALUATION_CHUNK] if k in self.clients]
            decisions = evaluate(bundle, [_decision_input(self.clients[k]) for k in chunk])
            self.stats.evaluations += 1
            self.stats.evaluated_clients += len(chunk)
            for key, decision in zip(chunk, decisions, strict=True):
                previous = self.decisions.get(key)
                self.decisions[key] = (decision, revision)
                if previous is None or previous[0] != decision:
                    self._policy_status_due = True
        self._to_evaluate.clear()
        self._to_write.update(keys)
        log.info("evaluated %d clients in %.2f s", len(keys), time.monotonic() - started)

    # --- write -----------------------------------------------------------------------------------------

    def _write_clients(self) -> None:
        pending = []
        at = st.now()
        for key in sorted(self._to_write):
            obj, entry = self.clients.get(key), self.decisions.get(key)
            if obj is None or entry is None:
                continue
            observed = obj.get("status")
            desired = st.client_status(
                entry[0], int(obj["metadata"].get("generation") or 0), entry[1], observed, at
            )
            if observed is None or st.digest(desired) != observed["digest"]:
                pending.append((key, obj, desired))
        self._to_write.clear()
        if pending:
            # Clients whose compliance flips go first: that is what their owners and the audit wait for.
            pending.sort(key=lambda item: st.is_compliant(item[1].get("status")) == st.is_compliant(item[2]))
            started = time.monotonic()
            self._write_all(AUTHCLIENTS, pending, self._client_written)
            log.info("wrote %d client statuses in %.2f s", len(pending), time.monotonic() - started)

    def _client_written(self, key: str, before: Mapping[str, Any], written: dict[str, Any]) -> None:
        with self._counting:
            self.stats.client_writes += 1
        self.clients[key] = _summarised(written)
        if (
            st.is_compliant(before.get("status")) is not False
            and st.is_compliant(written.get("status")) is False
        ):
            self._event(written)

    def _write_policies(self) -> None:
        self._policy_status_due = False
        governed: Counter[str] = Counter()
        violating: Counter[str] = Counter()
        for decision, _ in self.decisions.values():
            governed.update(set(decision.get("policies") or []))
            violating.update({v["policy"] for v in decision.get("violations") or [] if v.get("policy")})
        enforced = set(self.compiled.policies) if self.compiled else set()
        at = st.now()
        pending = []
        for key, obj in sorted(self.policy_objects.items()):
            checked = self.checked.get(key)
            generation = int(obj["metadata"].get("generation") or 0)
            ready = self._readiness(key, checked[1] if checked else None, generation, enforced)
            revision = self.revision if key in enforced else None
            observed = obj.get("status")
            desired = st.policy_status(
                generation, revision, governed[key], violating[key], ready, observed, at
            )
            if not st.same(desired, observed):
                pending.append((key, obj, desired))
        if pending:
            self._write_all(AUTHPOLICIES, pending, self._policy_written)

    def _policy_written(self, key: str, _: Mapping[str, Any], written: dict[str, Any]) -> None:
        with self._counting:
            self.stats.policy_writes += 1
        self.policy_objects[key] = written

    def _readiness(
        self, key: str, checked: CheckedPolicy | None, generation: int, enforced: set[str]
    ) -> tuple[bool, str, str]:
        if checked is not None and checked.errors:
            good = self.last_good.get(key)
            kept = (
                f"generation {good[0]} stays enforced"
                if good is not None
                else "no generation of this policy was ever valid, so none is enforced"
            )
            return False, "Invalid", f"{'; '.join(checked.errors)} ({kept})"
        if checked is None or key not in enforced:
            return False, "Pending", "not compiled yet"
        message = f"generation {generation} is enforced"
        if checked.warnings:
            message += f"; warnings: {'; '.join(checked.warnings)}"
        return True, "Enforced", message

    def _write_all(
        self,
        resource: Resource,
        pending: list[tuple[str, dict[str, Any], dict[str, Any]]],
        written: Callable[[str, Mapping[str, Any], dict[str, Any]], None],
    ) -> None:
        """Update every status (conditional on the observed resourceVersion), rate-limited, on a pool.

        `written` runs in the pool's threads (it may record an Event); state it touches is per key.
        Answers are compacted there too, so 10,000 full API responses never sit in memory at once.
        """

        def write(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
            key, obj, desired = item
            if not self.leading or self.stop_event.is_set():
                outcome: dict[str, Any] | KubeError = KubeError(0, "no longer the leader")
            else:
                self.limiter.acquire()
                metadata = obj["metadata"]
                try:
                    outcome = compact(
                        self.client.replace_status(
                            resource,
                            metadata["namespace"],
                            metadata["name"],
                            desired,
                            str(metadata["resourceVersion"]),
                        )
                    )
                except KubeError as error:
                    outcome = error
            if isinstance(outcome, dict):
                written(key, obj, outcome)
            else:
                failures.append((key, obj, outcome))

        failures: list[tuple[str, dict[str, Any], KubeError]] = []
        with ThreadPoolExecutor(WRITE_WORKERS, thread_name_prefix="write") as pool:
            for _ in pool.map(write, pending):
                pass
        for key, obj, error in failures:
            if error.status == 404:
                continue
            if error.status == 409:
                self.stats.conflicts += 1
                self._reread(resource, obj)
                continue
            if error.status:
                self.stats.write_errors += 1
                log.warning("cannot write the status of %s %s: %s", resource.kind, key, error)
            if resource is AUTHCLIENTS:
                self._to_write.add(key)
            else:
                self._policy_status_due = True

    def _reread(self, resource: Resource, obj: Mapping[str, Any]) -> None:
        """After a 409 Conflict: fetch the current object and decide again on it."""
        metadata = obj["metadata"]
        try:
            current = self.client.request("GET", resource.path(metadata["namespace"], metadata["name"]))
        except KubeError as error:
            if error.status != 404:
                log.warning("cannot re-read %s %s: %s", resource.kind, object_key(obj), error)
            return
        self.queue.put(Change(resource, object_key(current), compact(current)))

    def _event(self, client: Mapping[str, Any]) -> None:
        metadata = client["metadata"]
        condition = next(c for c in client["status"]["conditions"] if c["type"] == st.COMPLIANT)
        at = st.now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {
                "apiVersion": client.get("apiVersion") or AUTHCLIENTS.api_version,
                "kind": AUTHCLIENTS.kind,
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": "Warning",
            "reason": "PolicyViolation",
            "message": f"{condition['reason']}: {condition['message']}",
            "source": {"component": self.config.component},
            "reportingComponent": self.config.component,
            "reportingInstance": self.config.identity,
            "firstTimestamp": at,
            "lastTimestamp": at,
            "count": 1,
        }
        try:
            self.limiter.acquire()
            self.client.request("POST", EVENTS.path(metadata["namespace"]), body=event)
            with self._counting:
                self.stats.events += 1
        except KubeError as error:
            log.warning("cannot record an Event for %s: %s", object_key(client), error)

    def _apply_gatekeeper(self) -> None:
        objects = self.compiled.gatekeeper if self.compiled else None
        if objects is None:
            return
        stamp = fingerprint(objects)
        if stamp == self.gatekeeper_applied:
            return
        try:
            pruned = apply_objects(self.client, objects)
        except KubeError as error:
            log.warning("Gatekeeper objects not applied yet (retrying): %s", error)
            self.queue.wake()
            time.sleep(0.5)
            return
        self.gatekeeper_applied = stamp
        log.info("applied %d Gatekeeper constraints, pruned %d", len(objects.constraints) + 1, pruned)
