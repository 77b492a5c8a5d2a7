"""The registry backend of the bundle store (SPEC section 8): revisions and channels as OCI tags.

- A revision is an image manifest tagged with the revision id: config `{}`
  (`application/vnd.oci.image.config.v1+json`), one layer that is the bundle.tar.gz bytes unchanged
  (`application/vnd.oci.image.layer.v1.tar+gzip`), and the revision's metadata (`RevisionInfo` as JSON)
  in the manifest annotation `io.nauthera.revision.info`. OPA pulls exactly this.
- A channel is the tag named after it, pointing at its revision's manifest (same digest).
- A channel's history is a log of immutable records, one per move, each its own tag
  `_ch.<channel>.<generation>.<nonce>` (tags starting with `_` are neither revisions nor channels).
  A record holds the move (`move` to a revision, or `rollback`) and the channel document after it.

The registry has no locks and no compare-and-swap, so a move never overwrites shared state: it adds a
record under a tag nobody else can write. Readers order the records by (generation, nonce) and replay
them; a record's snapshot is used when its writer had seen every record ordered before it (its
`position`), otherwise its move is replayed onto the state before it. So racing writers can order
their moves only one way for every reader, and no move or revision is ever lost. After writing its
record a writer points the channel tag at the replayed state's revision and repeats that until the
record log stops changing under it, so the channel tag ends where the log does.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nauthera.store.base import (
    CHANNEL_NAME,
    BundleStore,
    RevisionInfo,
    StoreError,
    canonical_json,
    conflicting,
    next_pointer,
    no_lock,
)
from nauthera.store.registry import MANIFEST_TYPE, Registry
from nauthera.targets.opa.bundle import is_revision_id

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
INFO_ANNOTATION = "io.nauthera.revision.info"
RECORD_ANNOTATION = "io.nauthera.channel.record"
EMPTY_CONFIG = b"{}"
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_RECORD = re.compile(r"^_ch\.(?P<channel>.+)\.(?P<generation>\d{10})\.(?P<nonce>[0-9a-f]{16})$")
#: Channel records gc keeps per channel (each holds the whole history, so a few are plenty).
RECORDS_KEPT = 10
#: How many times a writer re-points a channel tag while other writers keep adding records.
SETTLE_ROUNDS = 20


def _record_order(tag: str) -> tuple[int, str]:
    match = _RECORD.match(tag)
    assert match is not None
    return int(match["generation"]), match["nonce"]


class RegistryStore(BundleStore):
    """A bundle store in one repository of an OCI registry (see the module docstring)."""

    poll_interval = 2.0

    def __init__(self, url: str, *, registry_ca: Path | None = None) -> None:
        self.registry = Registry(url, registry_ca)
        self.location = url
        #: Channel records by tag (immutable; only those still listed are kept).
        self._records: dict[str, dict[str, Any]] = {}
        self._tag_cache: tuple[float, list[str]] | None = None

    # --- tags ------------------------------------------------------------------------------------------

    def _tags(self, *, fresh: bool = False) -> list[str]:
        """The repository's tags; reused for a second by the reads of one command, re-listed by writers."""
        if fresh or self._tag_cache is None or time.monotonic() - self._tag_cache[0] > 1.0:
            tags = self.registry.tags()
            self._tag_cache = (time.monotonic(), tags)
            for gone in self._records.keys() - set(tags):
                del self._records[gone]
        return self._tag_cache[1]

    def _records_of(self, channel: str, *, fresh: bool = False) -> list[str]:
        tags = [t for t in self._tags(fresh=fresh) if (m := _RECORD.match(t)) and m["channel"] == channel]
        return sorted(tags, key=_record_order)

    @staticmethod
    def _tag(revision: str) -> str:
        if not _TAG.match(revision):
            raise StoreError(
                f"revision {revision!r} cannot be a registry tag (letters, digits, '_', '.', '-'; no '+'): "
                "compile with another --revision"
            )
        return revision

    def _document(self, ref: str, what: str) -> tuple[dict[str, Any], str] | None:
        fetched = self.registry.manifest(ref)
        if fetched is None:
            return None
        content, digest = fetched
        try:
            doc = json.loads(content)
        except ValueError as error:
            raise StoreError(f"registry {self.registry.reference}: {what} is not a manifest") from error
        return (doc if isinstance(doc, dict) else {}), digest

    # --- revisions -------------------------------------------------------------------------------------

    def revision_names(self) -> list[str]:
        return sorted(t for t in self._tags() if is_revision_id(t) and t not in self.channel_names())

    def _info_of(self, manifest: dict[str, Any], ref: str) -> RevisionInfo:
        text = (manifest.get("annotations") or {}).get(INFO_ANNOTATION)
        if text is None:
            raise StoreError(
                f"{self.registry.reference}:{ref} is not a Nauthera revision (no {INFO_ANNOTATION})"
            )
        try:
            return RevisionInfo.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(
                f"{self.registry.reference}:{ref}: unreadable revision metadata: {error}"
            ) from error

    def read_info(self, revision: str) -> RevisionInfo | None:
        if not _TAG.match(revision):
            return None
        found = self._document(revision, f"revision {revision}")
        return None if found is None else self._info_of(found[0], revision)

    def read_infos(self, revisions: list[str]) -> list[RevisionInfo | None]:
        """One manifest read per revision, 8 at a time: a fresh machine lists 100 revisions in a blink."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(self.read_info, revisions))

    def bundle_bytes(self, revision: str) -> bytes:
        found = self._document(self._tag(revision), f"revision {revision}")
        if found is None:
            raise StoreError(f"unknown revision {revision!r} in store {self.location}")
        layers = [layer for layer in found[0].get("layers") or [] if layer.get("mediaType") == LAYER_TYPE]
        if not layers:
            raise StoreError(f"{self.registry.reference}:{revision} has no {LAYER_TYPE} layer")
        return self.registry.blob(str(layers[0]["digest"]))

    def bundle_reference(self, revision: str) -> str:
        return f"{self.registry.reference}:{self._tag(revision)}"

    def newest(self, channel: str | None) -> tuple[int, str | None]:
        """A registry has no counter: the sequence is the publish time in microseconds."""
        return time.time_ns() // 1000, self.channel_revision(channel) if channel is not None else None

    def store_revision(self, content: bytes, info: RevisionInfo) -> RevisionInfo:
        tag = self._tag(info.revision)
        config = self.registry.put_blob(EMPTY_CONFIG)
        layer = self.registry.put_blob(content)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config, "size": len(EMPTY_CONFIG)},
            "layers": [
                {
                    "mediaType": LAYER_TYPE,
                    "digest": layer,
                    "size": len(content),
                    "annotations": {"org.opencontainers.image.title": "bundle.tar.gz"},
                }
            ],
            "annotations": {
                "org.opencontainers.image.created": info.created,
                "org.opencontainers.image.revision": info.git_commit or info.revision,
                INFO_ANNOTATION: canonical_json(info.as_json()).decode(),
            },
        }
        self.registry.put_manifest(tag, canonical_json(manifest))
        self._tag_cache = None
        # Re-read: a writer racing on the same revision id may have tagged its manifest after ours.
        stored = self.read_info(info.revision)
        if stored is None:
            raise StoreError(
                f"registry {self.registry.reference}: tag {tag} vanished right after it was written"
            )
        if stored.digest != info.digest:
            raise conflicting(info.revision, stored.digest, info.digest)
        return stored

    def delete_revision(self, revision: str) -> None:
        digest = self.registry.manifest_digest(self._tag(revision))
        if digest is not None:
            self.registry.delete_manifest(digest, f"delete revision {revision} ({digest[:19]})")
        self._tag_cache = None

    # --- channels --------------------------------------------------------------------------------------

    def channel_names(self) -> list[str]:
        names = {m["channel"] for t in self._tags() if (m := _RECORD.match(t))}
        return sorted(name for name in names if CHANNEL_NAME.match(name))

    def channel_revision(self, channel: str) -> str | None:
        """What the channel tag points at: what OPA pulls."""
        found = self._document(channel, f"channel {channel}") if CHANNEL_NAME.match(channel) else None
        return None if found is None else self._info_of(found[0], channel).revision

    def channel_stamps(self) -> dict[str, Hashable]:
        """The digest each channel tag points at (one HEAD per channel)."""
        stamps: dict[str, Hashable] = {}
        for channel in self.channel_names():
            digest = self.registry.manifest_digest(channel)
            if digest is not None:
                stamps[channel] = digest
        return stamps

    def _record(self, tag: str) -> dict[str, Any]:
        if tag not in self._records:
            found = self._document(tag, f"channel record {tag}")
            for _ in range(40):
                if found is not None:
                    break
                # A registry may list a tag a moment before it serves it (distribution's filesystem
                # driver creates the tag's folder, then its link file).
                time.sleep(0.05)
                found = self._document(tag, f"channel record {tag}")
            if found is None:
                raise StoreError(f"registry {self.registry.reference}: channel record {tag} vanished")
            try:
                self._records[tag] = json.loads((found[0].get("annotations") or {})[RECORD_ANNOTATION])
            except (KeyError, ValueError) as error:
                raise StoreError(f"{self.registry.reference}:{tag} is not a channel record") from error
        return self._records[tag]

    def _replay(self, channel: str, records: list[str]) -> dict[str, Any] | None:
        """The channel document after every record (see the module docstring)."""
        if not records:
            return None
        offset = int(self._record(records[0])["position"])
        start = len(records) - 1
        while start > 0 and int(self._record(records[start])["position"]) != offset + start:
            start -= 1  # its writer had not seen every record before it: replay from an earlier one
        state: dict[str, Any] | None = self._record(records[start])["state"]
        for tag in records[start + 1 :]:
            record = self._record(tag)
            if int(record["position"]) == offset + records.index(tag):
                state = record["state"]
                continue
            with contextlib.suppress(StoreError):  # a rollback with nothing to go back to does nothing
                state = (
                    next_pointer(state, channel, record["revision"], updated=record["state"]["updated"])
                    or state
                )
        return state

    def channel_pointer(self, channel: str) -> dict[str, Any] | None:
        return self._replay(channel, self._records_of(channel))

    def writing(self) -> contextlib.AbstractContextManager[None]:
        return no_lock()

    def move_channel(self, channel: str, revision: str | None) -> str:
        records = self._records_of(channel, fresh=True)
        state = self._replay(channel, records)
        doc = next_pointer(state, channel, revision)
        if doc is not None:
            generation = max((_record_order(t)[0] for t in records), default=0) + 1
            offset = int(self._record(records[0])["position"]) if records else 0
            record = {"revision": revision, "position": offset + len(records), "state": doc}
            tag = f"_ch.{channel}.{generation:010d}.{secrets.token_hex(8)}"
            self._put_record(tag, record)
        self._settle(channel, records)
        return str(doc["revision"]) if doc is not None else str(revision)

    def _put_record(self, tag: str, record: dict[str, Any]) -> None:
        config = self.registry.put_blob(EMPTY_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": "application/vnd.nauthera.channel-record.v1+json",
            "config": {"mediaType": CONFIG_TYPE, "digest": config, "size": len(EMPTY_CONFIG)},
            "layers": [],
            "annotations": {RECORD_ANNOTATION: canonical_json(record).decode()},
        }
        self.registry.put_manifest(tag, canonical_json(manifest))
        self._records[tag] = record

    def _settle(self, channel: str, seen: list[str]) -> None:
        """Point the channel tag at the replayed revision until the record log stops changing."""
        pointed: str | None = None
        for _ in range(SETTLE_ROUNDS):
            records = self._records_of(channel, fresh=True)
            if pointed is not None and records == seen:
                return
            seen = records
            state = self._replay(channel, records)
            if state is None:
                return
            target = self._tag(str(state["revision"]))
            found = self.registry.manifest(target)
            if found is None:
                raise StoreError(f"channel {channel!r}: revision {target} is not in {self.location}")
            if self.registry.manifest_digest(channel) != found[1]:
                self.registry.put_manifest(channel, found[0])
            pointed = target
        raise StoreError(f"channel {channel!r} kept moving under {SETTLE_ROUNDS} rounds of writers; retry")

    def gc_leftovers(self) -> None:
        """Old channel records: each record holds the whole history, so only the newest few matter."""
        for channel in self.channel_names():
            for tag in self._records_of(channel, fresh=True)[:-RECORDS_KEPT]:
                digest = self.registry.manifest_digest(tag)
                if digest is not None:
                    self.registry.delete_manifest(digest, f"delete channel record {tag}")
        self._tag_cache = None
