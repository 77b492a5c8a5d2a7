"""The bundle store's one interface: immutable revisions and channels that point at them.

`BundleStore` holds every rule that does not depend on where the store lives: what a revision records,
how names are checked (a channel never hides a revision), how `resolve` reads a name, what a channel's
history becomes on a move or a rollback, what gc keeps. A backend (`folder.FolderStore`, a folder with
flock and atomic renames; `oci.RegistryStore`, an OCI registry) implements the small primitives below:
list and read revisions, write one, read and move a channel, delete a revision.
`open_store` picks the backend from `--store`: `oci://` and `oci+http://` URLs are registries,
anything else is a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import tempfile
import weakref
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nauthera.errors import NautheraError
from nauthera.targets.opa.bundle import (
    check_revision_id,
    is_revision_id,
    parse_nauthera_bundle,
    policy_digest,
    read_bundle_file,
)
from nauthera.targets.opa.signing import SIGNATURES_FILE, token_header

CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
#: How many earlier revisions a channel remembers for `rollback`.
HISTORY_LIMIT = 100
#: A revision prefix must be at least this long to name a revision.
MIN_PREFIX = 4


class StoreError(NautheraError):
    """The store cannot do what was asked (unknown revision, conflicting publish, I/O failure)."""


@dataclass(frozen=True)
class RevisionInfo:
    """What the store records about one published bundle."""

    revision: str
    sequence: int
    parent: str | None
    created: str
    digest: str
    size: int
    git_commit: str | None = None
    git_dirty: bool | None = None
    author: str | None = None
    message: str | None = None
    signer_key_id: str | None = None
    compiler: str | None = None
    policies: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "sequence": self.sequence,
            "parent": self.parent,
            "created": self.created,
            "digest": self.digest,
            "size": self.size,
            "git": {"commit": self.git_commit, "dirty": self.git_dirty} if self.git_commit else None,
            "author": self.author,
            "message": self.message,
            "signer_key_id": self.signer_key_id,
            "compiler": self.compiler,
            "policies": dict(sorted(self.policies.items())),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RevisionInfo:
        git = doc.get("git") or {}
        return cls(
            revision=str(doc["revision"]),
            sequence=int(doc["sequence"]),
            parent=doc.get("parent"),
            created=str(doc["created"]),
            digest=str(doc["digest"]),
            size=int(doc["size"]),
            git_commit=git.get("commit"),
            git_dirty=git.get("dirty"),
            author=doc.get("author"),
            message=doc.get("message"),
            signer_key_id=doc.get("signer_key_id"),
            compiler=doc.get("compiler"),
            policies=dict(doc.get("policies") or {}),
        )


@dataclass(frozen=True)
class BundleFacts:
    """What publishing reads out of a bundle before it writes anything."""

    revision: str
    digest: str
    size: int
    metadata: Mapping[str, Any]
    policies: Mapping[str, str]
    signer_key_id: str | None


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def policy_digests(data: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of each policy's canonical JSON in the bundle data's `policies`."""
    policies = data.get("policies") if isinstance(data, Mapping) else None
    if not isinstance(policies, Mapping):
        return {}
    return {str(pid): policy_digest(params).hex() for pid, params in policies.items()}


def bundle_facts(content: bytes, label: str) -> BundleFacts:
    bundle = parse_nauthera_bundle(content, label)
    if bundle.revision is None:
        raise StoreError(f"{label}: the bundle's .manifest has no revision")
    check_revision_id(bundle.revision)
    metadata = bundle.manifest.get("metadata")
    signatures = bundle.files.get(SIGNATURES_FILE)
    kid = token_header(signatures).get("kid") if signatures is not None else None
    return BundleFacts(
        revision=bundle.revision,
        digest=hashlib.sha256(content).hexdigest(),
        size=len(content),
        metadata=metadata if isinstance(metadata, dict) else {},
        policies=policy_digests(bundle.data),
        signer_key_id=kid if isinstance(kid, str) else None,
    )


def shadows(channel: str, revision: str) -> bool:
    """Whether `channel` would be read as `revision` (or the other way round) where both are accepted:
    the same name, or a prefix long enough to name a revision."""
    return channel == revision or (len(channel) >= MIN_PREFIX and revision.startswith(channel))


def check_channel_name(channel: str) -> str:
    if not CHANNEL_NAME.match(channel):
        raise StoreError(
            f"channel name {channel!r} is invalid: use letters, digits, '.', '_', '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return channel


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def next_pointer(
    current: Mapping[str, Any] | None, channel: str, revision: str | None, *, updated: str | None = None
) -> dict[str, Any] | None:
    """The channel document after a move to `revision` (None: a rollback), or None when nothing moves.

    History holds earlier revisions, newest first: a move pushes the current revision onto it, a
    rollback pops its head. Both backends build every channel document with this one function."""
    history = [str(r) for r in (current or {}).get("history") or []]
    previous = str(current["revision"]) if current else None
    if revision is None:
        if not history:
            raise StoreError(f"channel {channel!r} has no earlier revision to roll back to")
        revision, history = history[0], history[1:]
    elif revision == previous:
        return None
    elif previous is not None:
        history = [previous, *history][:HISTORY_LIMIT]
    return {
        "channel": channel,
        "revision": revision,
        "history": history,
        "updated": updated or now(),
        "generation": int((current or {}).get("generation", 0)) + 1,
    }


def git_details(commit: str, folder: Path) -> tuple[str | None, str | None]:
    """Author and subject of `commit`, when `folder` sits in a checkout that has it."""
    try:
        completed = subprocess.run(
            ["git", "-C", str(folder), "log", "-1", "--format=%an <%ae>%x00%s", commit, "--"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    if completed.returncode != 0 or "\0" not in completed.stdout:
        return None, None
    author, subject = completed.stdout.rstrip("\n").split("\0", 1)
    return author or None, subject or None


class BundleStore(ABC):
    """Immutable bundle revisions and channels pointing at them, wherever they are kept."""

    #: Where the store is, for messages (a folder path or a registry URL).
    location: str
    #: How often (seconds) a bundle server looks for moved channels: a stat is cheap, a request is not.
    poll_interval: float = 0.05

    # --- primitives a backend implements ---------------------------------------------------------------

    @abstractmethod
    def revision_names(self) -> list[str]:
        """Ids of every stored revision (any order)."""

    @abstractmethod
    def read_info(self, revision: str) -> RevisionInfo | None:
        """A revision's metadata, or None when it is not stored."""

    @abstractmethod
    def bundle_bytes(self, revision: str) -> bytes:
        """A stored revision's bundle, byte for byte as published."""

    @abstractmethod
    def bundle_reference(self, revision: str) -> str:
        """Where a revision's bundle is, for people and scripts (a file path, or a registry reference)."""

    @abstractmethod
    def channel_pointer(self, channel: str) -> dict[str, Any] | None:
        """The channel document (revision, history, updated, generation), or None for no such channel."""

    @abstractmethod
    def channel_names(self) -> list[str]:
        """Names of every channel (sorted)."""

    @abstractmethod
    def channel_stamps(self) -> dict[str, Hashable]:
        """Per channel, a value that changes whenever the channel moves: what the bundle server polls."""

    @abstractmethod
    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Around each write: the folder serialises writers on a lock; a registry has none."""

    @abstractmethod
    def store_revision(self, content: bytes, info: RevisionInfo) -> RevisionInfo:
        """Write a new revision; return what ends up stored (a racing writer of the same bytes may win)."""

    @abstractmethod
    def move_channel(self, channel: str, revision: str | None) -> str:
        """Point `channel` at `revision` (None: roll it back, see `next_pointer`); return its revision."""

    @abstractmethod
    def delete_revision(self, revision: str) -> None:
        """Remove a revision (gc); raise StoreError when the store refuses."""

    @abstractmethod
    def newest(self, channel: str | None) -> tuple[int, str | None]:
        """The sequence number a new revision gets, and its parent (the channel's or newest revision)."""

    @abstractmethod
    def gc_leftovers(self) -> None:
        """Remove what writers leave behind: a crashed writer's staging files, old channel records."""

    # --- reading ---------------------------------------------------------------------------------------

    def bundle_path(self, revision: str) -> Path:
        """A local file holding a stored revision's bundle (a registry's goes into a temporary folder)."""
        content = self.bundle_bytes(revision)
        folder = getattr(self, "_downloads", None)
        if folder is None:
            folder = tempfile.TemporaryDirectory(prefix="nauthera-bundles-")
            weakref.finalize(self, folder.cleanup)
            self._downloads = folder
        path = Path(folder.name) / check_revision_id(revision) / "bundle.tar.gz"
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
        return path

    def read_infos(self, revisions: list[str]) -> list[RevisionInfo | None]:
        """`read_info` of many revisions (a registry reads them in parallel)."""
        return [self.read_info(revision) for revision in revisions]

    def info(self, revision: str) -> RevisionInfo:
        info = self.read_info(check_revision_id(revision))
        if info is None:
            raise StoreError(f"unknown revision {revision!r} in store {self.location}")
        return info

    def verified_bundle(self, revision: str) -> bytes:
        """The revision's bundle, checked against the sha256 and size its metadata records: what a server
        may hand out. StoreError when the revision is missing, its metadata unreadable or it changed."""
        info = self.info(revision)
        try:
            content = self.bundle_bytes(revision)
        except OSError as error:
            raise StoreError(
                f"revision {revision}: cannot read its bundle: {error.strerror or error}"
            ) from error
        if info.revision != revision:
            raise StoreError(f"revision {revision}: its metadata names {info.revision}")
        if len(content) != info.size or hashlib.sha256(content).hexdigest() != info.digest:
            raise StoreError(f"revision {revision}: bundle does not match its recorded sha256")
        return content

    def revisions(self) -> list[RevisionInfo]:
        """Every stored revision, newest (highest sequence) first."""
        found = [info for info in self.read_infos(sorted(self.revision_names())) if info is not None]
        return sorted(found, key=lambda info: (info.sequence, info.created), reverse=True)

    def channel_revision(self, channel: str) -> str | None:
        doc = self.channel_pointer(check_channel_name(channel))
        return None if doc is None else str(doc["revision"])

    def channel_history(self, channel: str) -> list[str]:
        """Earlier revisions of `channel`, newest first: where `rollback` goes."""
        doc = self.channel_pointer(check_channel_name(channel))
        return [] if doc is None else [str(r) for r in doc.get("history") or []]

    def channels(self) -> dict[str, str]:
        result = {}
        for name in self.channel_names():
            revision = self.channel_revision(name)
            if revision is not None:
                result[name] = revision
        return result

    def resolve(self, ref: str) -> str:
        """A revision id from a revision, a channel name, or a unique revision prefix (4+ characters)."""
        if is_revision_id(ref) and self.read_info(ref) is not None:
            return ref
        if CHANNEL_NAME.match(ref):
            revision = self.channel_revision(ref)
            if revision is not None:
                return revision
        if len(ref) >= MIN_PREFIX:
            matches = sorted(name for name in self.revision_names() if name.startswith(ref))
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise StoreError(f"{ref!r} is ambiguous: {', '.join(matches[:5])}")
        short = (
            f" (a revision prefix needs at least {MIN_PREFIX} characters)" if len(ref) < MIN_PREFIX else ""
        )
        raise StoreError(f"{ref!r} is neither a revision nor a channel in store {self.location}{short}")

    # --- writing ---------------------------------------------------------------------------------------

    def publish(
        self,
        bundle: Path,
        channel: str | None = "stable",
        *,
        message: str | None = None,
        author: str | None = None,
        facts: BundleFacts | None = None,
    ) -> RevisionInfo:
        """Record `bundle` as an immutable revision (its `.manifest` revision) and point `channel` at it.

        Publishing the same bytes again is a no-op (apart from moving `channel`); different bytes under an
        existing revision id are refused. `facts`, when the caller built the bundle and knows them, saves
        reading the bundle back (they must be what `bundle_facts` would find: a test holds the compiler
        to that).
        """
        if channel is not None:
            check_channel_name(channel)
        content = read_bundle_file(Path(bundle))
        facts = facts or bundle_facts(content, str(bundle))
        git = facts.metadata.get("nauthera", {}).get("git") if isinstance(facts.metadata, dict) else None
        commit = git.get("commit") if isinstance(git, dict) else None
        if commit and (author is None or message is None):
            git_author, git_subject = git_details(str(commit), Path(bundle).resolve().parent)
            if git_author is None:
                git_author, git_subject = git_details(str(commit), Path.cwd())
            author = author if author is not None else git_author
            message = message if message is not None else git_subject
        with self.writing():
            existing = self._existing(facts)
            self._check_names(channel, facts.revision if existing is None else None)
            if existing is None:
                sequence, parent = self.newest(channel)
                nauthera_meta = facts.metadata.get("nauthera") if isinstance(facts.metadata, dict) else None
                compiler = nauthera_meta.get("compiler") if isinstance(nauthera_meta, dict) else None
                info = RevisionInfo(
                    revision=facts.revision,
                    sequence=sequence,
                    parent=parent,
                    created=now(),
                    digest=facts.digest,
                    size=facts.size,
                    git_commit=str(commit) if commit else None,
                    git_dirty=bool(git.get("dirty")) if isinstance(git, dict) and commit else None,
                    author=author,
                    message=message,
                    signer_key_id=facts.signer_key_id,
                    compiler=str(compiler) if compiler else None,
                    policies=facts.policies,
                )
                existing = self.store_revision(content, info)
            if channel is not None:
                self.move_channel(channel, existing.revision)
            return existing

    def _check_names(self, channel: str | None, new_revision: str | None) -> None:
        """Channels and revisions never hide each other: `show NAME` takes a revision before a channel
        and a channel before a revision prefix, so a channel may be neither a revision nor a prefix of
        one, and a new revision may not be named like a channel."""
        revisions: Iterable[str] = self.revision_names() + ([new_revision] if new_revision else [])
        if channel is not None:
            hidden = next((r for r in revisions if shadows(channel, r)), None)
            if hidden is not None:
                raise StoreError(
                    f"channel name {channel!r} would be read as revision {hidden}; "
                    "choose another channel name"
                )
        if new_revision is not None and new_revision in self.channel_names():
            raise StoreError(
                f"revision {new_revision!r} would hide the channel {new_revision!r}; compile with another "
                "--revision"
            )

    def _existing(self, facts: BundleFacts) -> RevisionInfo | None:
        info = self.read_info(facts.revision)
        if info is not None and info.digest != facts.digest:
            raise conflicting(facts.revision, info.digest, facts.digest)
        return info

    def promote(self, revision: str, channel: str) -> None:
        """Point `channel` at an already stored `revision`."""
        check_channel_name(channel)
        with self.writing():
            self.info(revision)
            self._check_names(channel, None)
            self.move_channel(channel, revision)

    def rollback(self, channel: str) -> str:
        """Move `channel` back to the revision it pointed at before its last move; return that revision."""
        check_channel_name(channel)
        with self.writing():
            pointer = self.channel_pointer(channel)
            if pointer is None:
                raise StoreError(f"unknown channel {channel!r} in store {self.location}")
            target = next_pointer(pointer, channel, None)
            assert target is not None  # a rollback always moves (or raises)
            if self.read_info(str(target["revision"])) is None:
                raise StoreError(
                    f"channel {channel!r}: previous revision {target['revision']} is no longer stored"
                )
            return self.move_channel(channel, None)

    def protected(self) -> set[str]:
        """Revisions gc never deletes: what each channel points at, and where its rollback would go."""
        keep = set()
        for name in self.channel_names():
            pointer = self.channel_pointer(name)
            if pointer is not None:
                keep.add(str(pointer["revision"]))
                keep.update(str(r) for r in (pointer.get("history") or [])[:1])
        return keep

    def gc(self, keep: int, *, dry_run: bool = False) -> list[str]:
        """Delete all but the newest `keep` revisions, never one a channel points at (or rolls back to).

        Also removes what crashed writers left behind. Returns the deleted revisions, newest first.
        """
        if keep < 0:
            raise StoreError("gc --keep must be 0 or more")
        if dry_run:  # only reads, like list and show: works on a store this user cannot write
            return self._doomed(keep)
        with self.writing():
            doomed = self._doomed(keep)
            for done, revision in enumerate(doomed):
                try:
                    self.delete_revision(revision)
                except StoreError as error:
                    deleted = f"deleted {done} of {len(doomed)} before this" if done else "deleted nothing"
                    raise StoreError(f"gc: {error} ({deleted})") from error
            self.gc_leftovers()
            return doomed

    def _doomed(self, keep: int) -> list[str]:
        protected = self.protected()
        return [
            info.revision
            for index, info in enumerate(self.revisions())
            if index >= keep and info.revision not in protected
        ]

    def fsck(self) -> list[str]:
        """Integrity problems: channels naming missing revisions, bundles not matching their digest."""
        problems = []
        stored = set(self.revision_names())
        for name in sorted(stored):
            try:
                self.verified_bundle(name)
            except StoreError as error:
                message = str(error)
                problems.append(
                    message if message.startswith(f"revision {name}") else f"revision {name}: {message}"
                )
        try:
            channels = self.channels()
        except StoreError as error:
            return [*problems, str(error)]
        for channel, revision in channels.items():
            if revision not in stored:
                problems.append(f"channel {channel}: points at missing revision {revision}")
        return problems


def conflicting(revision: str, stored: str, offered: str) -> StoreError:
    return StoreError(
        f"revision {revision} is already published with different content "
        f"(sha256 {stored[:12]}…, this bundle {offered[:12]}…); a revision is immutable: "
        "compile with another --revision (signed and unsigned builds, or ES/PS signatures, "
        "differ in bytes)"
    )


@contextlib.contextmanager
def no_lock() -> Iterator[None]:
    yield


def open_store(location: str | Path, *, registry_ca: Path | None = None) -> BundleStore:
    """The store at `location`: `oci://HOST[:PORT]/REPO` or `oci+http://...` is a registry, else a folder."""
    text = str(location)
    if text.startswith(("oci://", "oci+http://")):
        from nauthera.store.oci import RegistryStore  # noqa: PLC0415 - only registry stores need it

        return RegistryStore(text, registry_ca=registry_ca)
    if registry_ca is not None:
        raise StoreError(f"--registry-ca applies to oci:// stores, not to the folder {text}")
    from nauthera.store.folder import FolderStore  # noqa: PLC0415 - the common case stays light

    return FolderStore(Path(text))
