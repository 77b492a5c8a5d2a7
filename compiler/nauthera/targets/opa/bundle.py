"""Package stage: a reproducible OPA bundle (sorted entries, fixed times and owners, no gzip timestamp)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nauthera.errors import InputError, NautheraError, NotABundleError

#: The Rego packages' root and the policy data's (see `DATA_ROOT`).
ROOTS = ("nauthera", "nauthera_data")
MANIFEST = ".manifest"
#: The policy data lives in its own root, beside the Rego's `nauthera`: OPA applies a delta patch
#: under a root that also holds Rego packages by deep-copying that root's data for every rule it checks
#: for conflicts (storage.NonEmpty reads each rule path's nearest existing prefix), which at 10,000
#: policies did not finish in a minute; under its own root the same patch activates within a second.
DATA_ROOT = "nauthera_data"
DATA_FILE = f"{DATA_ROOT}/data.json"
#: Where bundles compiled before the data had its own root kept it.
LEGACY_DATA_FILE = "nauthera/data.json"
#: A file's content: its bytes, or the pieces that concatenate to them (a large data.json).
Content = bytes | Sequence[bytes]
_COMPRESS_LEVEL = 9
#: gzip header: magic, deflate, no flags, mtime 0, "maximum compression", OS unknown (as `gzip` writes it).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
#: A chunk of the tar stream ends where a file's pieces hold an empty piece (a content-chosen place,
#: see `datatree.pieces`), or once it is this large.
_MAX_CHUNK = 1024 * 1024
#: Revisions name folders in a bundle store and travel in ETags: no separators, no dot-files, bounded.
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def data_file(files: Mapping[str, object]) -> str | None:
    """The name of a Nauthera bundle's data file among `files` (new or legacy layout), if any."""
    return next((name for name in (DATA_FILE, LEGACY_DATA_FILE) if name in files), None)


def pieces_of(content: Content) -> Sequence[bytes]:
    return (content,) if isinstance(content, bytes) else content


def content_size(content: Content) -> int:
    return sum(len(piece) for piece in pieces_of(content))


def joined(content: Content) -> bytes:
    return content if isinstance(content, bytes) else b"".join(content)


class RevisionError(NautheraError):
    """A revision id that a bundle store could not keep."""


def is_revision_id(text: str) -> bool:
    return bool(_REVISION.match(text))


def check_revision_id(revision: str) -> str:
    """`revision` unchanged when it is a valid revision id; the one rule for compile and the store."""
    if not is_revision_id(revision):
        raise RevisionError(
            f"revision {revision!r} cannot be stored: use letters, digits, '.', '_', '+', '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return revision


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def policy_digest(parameters: Any) -> bytes:
    """sha256 of one policy's parameters in canonical JSON: what the store records per policy."""
    return hashlib.sha256(_canonical(parameters)).digest()


def content_revision(files: Mapping[str, Content], metadata: Mapping[str, Any]) -> str:
    """Same files and metadata, same revision: a digest over every entry in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        file_digest = hashlib.sha256()
        for piece in pieces_of(files[name]):
            file_digest.update(piece)
        digest.update(name.encode() + b"\0" + file_digest.digest())
    digest.update(_canonical(metadata))
    return digest.hexdigest()[:24]


def git_source(paths: list[Path]) -> dict[str, Any] | None:
    """The commit the inputs come from, when they sit in a Git checkout."""
    folder = paths[0] if paths[0].is_dir() else paths[0].parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def manifest(
    files: Mapping[str, Content], metadata: Mapping[str, Any], revision: str | None
) -> dict[str, Any]:
    return {
        "revision": check_revision_id(revision)
        if revision is not None
        else content_revision(files, metadata),
        "roots": list(ROOTS),
        "rego_version": 1,
        "metadata": dict(metadata),
    }


def _tar_stream(files: Mapping[str, Content]) -> Iterator[bytes]:
    """The uncompressed tar, piece by piece, exactly as `tarfile` writes it (USTAR, entries in name
    order, mode 0644, mtime 0, owner 0, padded to whole records)."""
    offset = 0
    for name in sorted(files):
        info = tarfile.TarInfo(name)
        info.size = content_size(files[name])
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        yield header
        yield from pieces_of(files[name])
        padding = -info.size % tarfile.BLOCKSIZE
        if padding:
            yield tarfile.NUL * padding
        offset += len(header) + info.size + padding
    end = tarfile.BLOCKSIZE * 2
    yield tarfile.NUL * (end + -(offset + end) % tarfile.RECORDSIZE)


def _chunks(stream: Iterable[bytes]) -> Iterator[bytes]:
    """Runs of pieces whose ends are chosen by content, so an edit changes only the runs it touches."""
    run: list[bytes] = []
    size = 0
    for piece in stream:
        if piece:
            run.append(piece)
            size += len(piece)
            if size < _MAX_CHUNK:
                continue
        elif not run:
            continue
        yield b"".join(run)
        run, size = [], 0
    if run:
        yield b"".join(run)


class TarballWriter:
    """Writes reproducible `.tar.gz` bytes, and compresses again only the parts that changed.

    The gzip stream is one member whose deflate data is the concatenation of independently compressed
    chunks (each ends with a sync flush), so a chunk's compressed bytes depend on that chunk alone.
    A writer remembers the chunks of its last tarball: the next one, after an edit of one policy,
    recompresses a few hundred kilobytes instead of the whole bundle. Every writer, fresh or not,
    produces the same bytes for the same files.
    """

    def __init__(self) -> None:
        self._compressed: dict[bytes, bytes] = {}

    def write(self, files: Mapping[str, Content]) -> bytes:
        output = [_GZIP_HEADER]
        crc, length = 0, 0
        kept: dict[bytes, bytes] = {}
        for chunk in _chunks(_tar_stream(files)):
            key = hashlib.sha256(chunk).digest()
            compressed = self._compressed.get(key)
            if compressed is None:
                compressor = zlib.compressobj(_COMPRESS_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
                compressed = compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)
            kept[key] = compressed
            output.append(compressed)
            crc = zlib.crc32(chunk, crc)
            length += len(chunk)
        finish = zlib.compressobj(_COMPRESS_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        output.append(finish.flush(zlib.Z_FINISH))
        output.append(crc.to_bytes(4, "little") + (length & 0xFFFFFFFF).to_bytes(4, "little"))
        self._compressed = kept
        return b"".join(output)


def write_tarball(files: Mapping[str, Content], target: Path) -> None:
    """Write entries in name order with fixed metadata so equal inputs give equal bytes."""
    target.write_bytes(TarballWriter().write(files))


def bundle_bytes(
    files: Mapping[str, Content],
    metadata: Mapping[str, Any],
    revision: str | None,
    writer: TarballWriter | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The bundle (with its `.manifest`) as bytes, and the manifest."""
    bundle_manifest = manifest(files, metadata, revision)
    entries = {**files, MANIFEST: _canonical(bundle_manifest)}
    return (writer or TarballWriter()).write(entries), bundle_manifest


def build_bundle(
    files: Mapping[str, Content], metadata: Mapping[str, Any], revision: str | None, target: Path
) -> dict[str, Any]:
    """Write the bundle with its `.manifest`; return the manifest."""
    content, bundle_manifest = bundle_bytes(files, metadata, revision)
    target.write_bytes(content)
    return bundle_manifest


def bundle_entries(content: bytes, label: str) -> dict[str, bytes]:
    """All regular files of a `.tar.gz` bundle, by name without a leading slash."""
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
            files = {}
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    files[member.name.lstrip("/")] = handle.read()
            return files
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise NotABundleError(f"{label}: not a Nauthera bundle (not a readable .tar.gz: {error})") from error


def read_bundle_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such bundle") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the bundle: {error.strerror or error}") from error


def read_bundle(path: Path) -> dict[str, bytes]:
    """All regular files of the bundle at `path` (any bundle, ours or not)."""
    return bundle_entries(read_bundle_file(path), str(path))


@dataclass(frozen=True)
class NautheraBundle:
    """A bundle checked to be one the compiler wrote: its bytes, files, manifest and policy data."""

    content: bytes
    files: Mapping[str, bytes]
    manifest: Mapping[str, Any]
    data: Mapping[str, Any]

    @property
    def revision(self) -> str | None:
        revision = self.manifest.get("revision")
        return revision if isinstance(revision, str) and revision else None


def _json_object(files: Mapping[str, bytes], name: str, label: str) -> dict[str, Any]:
    if name not in files:
        raise NotABundleError(f"{label}: not a Nauthera bundle (no {name})")
    try:
        value = json.loads(files[name])
    except ValueError as error:
        raise NotABundleError(f"{label}: not a Nauthera bundle ({name} is not JSON: {error})") from error
    if not isinstance(value, dict):
        raise NotABundleError(f"{label}: not a Nauthera bundle ({name} is not a JSON object)")
    return value


def parse_nauthera_bundle(content: bytes, label: str) -> NautheraBundle:
    """The one check that bytes are a Nauthera bundle: a readable .tar.gz whose `.manifest` claims the
    `nauthera` root and which carries the policy data in `nauthera_data/data.json` (`nauthera/data.json`
    in bundles compiled before the data had its own root; once `opa build` has rebuilt it, in the top
    `data.json`). Anything else is a NotABundleError saying what is missing, so no command evaluates,
    compares, verifies or publishes a stranger's file."""
    files = bundle_entries(content, label)
    bundle_manifest = _json_object(files, MANIFEST, label)
    roots = bundle_manifest.get("roots")
    if not isinstance(roots, list) or "nauthera" not in roots:
        raise NotABundleError(f"{label}: not a Nauthera bundle (its .manifest roots do not include nauthera)")
    name = data_file(files)
    if name is None and "data.json" in files:
        top = _json_object(files, "data.json", label)
        data = top.get(DATA_ROOT, top.get("nauthera"))
        if isinstance(data, dict):
            return NautheraBundle(content, files, bundle_manifest, data)
    return NautheraBundle(content, files, bundle_manifest, _json_object(files, name or DATA_FILE, label))


def open_nauthera_bundle(path: Path) -> NautheraBundle:
    """Read `path` and check that it is a Nauthera bundle (`parse_nauthera_bundle`)."""
    return parse_nauthera_bundle(read_bundle_file(path), str(path))
