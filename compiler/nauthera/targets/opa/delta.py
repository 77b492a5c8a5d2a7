"""OPA delta bundles: what changed in a bundle's data, sent as `patch.json` instead of the whole bundle.

A delta bundle holds a `.manifest` (the new revision, the same roots) and `patch.json`:
`{"data": [{"op": "upsert" | "remove", "path": "/a/b", "value": ...}]}`. OPA applies it to the data it
holds, so it must start from exactly the revision the delta was computed from, and a delta can only
change data: a bundle whose Rego, roots or data layout changed, a signed bundle (OPA cannot verify a
delta), or one whose data is not in one `data.json` always goes as a snapshot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from nauthera.targets.opa.bundle import MANIFEST, Content, TarballWriter, joined
from nauthera.targets.opa.datatree import (
    DataNode,
    at,
    build,
    diff,
    first_leaf_path,
    pointer,
    serialize,
)
from nauthera.targets.opa.signing import SIGNATURES_FILE

PATCH_FILE = "patch.json"
_DATA_NAMES = ("data.json", "data.yaml", "data.yml")
#: Manifest members a delta cannot change (`revision` and `metadata` it carries itself).
_SHAPE_KEYS = ("roots", "rego_version", "file_rego_versions", "wasm")


@dataclass(frozen=True)
class BundleState:
    """What a server keeps of a revision to answer agents with deltas."""

    revision: str
    manifest: Mapping[str, Any]
    #: Where the data file sits in `data`, and its tree; None when this bundle goes as snapshots only.
    mount: tuple[str, ...] | None
    data: DataNode | None
    #: Digest of everything a delta cannot change: modules, roots, Rego version, the data layout.
    shape: bytes

    @property
    def patchable(self) -> bool:
        return self.data is not None


def bundle_state(
    files: Mapping[str, Content],
    data: DataNode | None = None,
    known: Mapping[bytes, DataNode] | None = None,
) -> BundleState:
    """The state of a bundle from its files (`.manifest` included): `data` when the caller has the tree,
    else it is built from data.json, sharing the nodes of `known` (another revision's)."""
    manifest = json.loads(joined(files[MANIFEST]))
    data_files = [name for name in files if PurePosixPath(name).name in _DATA_NAMES]
    shape = hashlib.sha256(json.dumps({k: manifest.get(k) for k in _SHAPE_KEYS}, sort_keys=True).encode())
    for name in sorted(files):
        if name not in (MANIFEST, *data_files):
            shape.update(name.encode() + b"\0" + hashlib.sha256(joined(files[name])).digest())
    mount: tuple[str, ...] | None = None
    if SIGNATURES_FILE not in files and len(data_files) == 1 and data_files[0].endswith("/data.json"):
        mount = tuple(PurePosixPath(data_files[0]).parent.parts)
        shape.update(b"data:" + data_files[0].encode())
        if data is None:
            data = build(json.loads(joined(files[data_files[0]])), known=known)
    return BundleState(
        str(manifest.get("revision", "")), manifest, mount, data if mount else None, shape.digest()
    )


def patch_operations(before: BundleState, after: BundleState) -> list[bytes] | None:
    """JSON patch operations (serialized) that take an agent holding `before` to `after`; None when
    only a snapshot can (see the module docstring)."""
    if before.data is None or after.data is None or before.shape != after.shape:
        return None
    assert after.mount is not None
    found: list[bytes] = []
    for change in diff(before.data, after.data):
        path = json.dumps(pointer((*after.mount, *change.path))).encode()
        node = at(after.data, change.path) if change.after else None
        if node is not None:
            found.append(b'{"op":"upsert","path":' + path + b',"value":' + serialize(node) + b"}")
        else:
            found.append(b'{"op":"remove","path":' + path + b"}")
    if not found:
        # OPA reads an empty patch list as "delete everything": re-send one unchanged value instead.
        keep = first_leaf_path(after.data)
        value = at(after.data, keep)
        assert value is not None
        path = json.dumps(pointer((*after.mount, *keep))).encode()
        found.append(b'{"op":"upsert","path":' + path + b',"value":' + serialize(value) + b"}")
    return found


def delta_bundle(
    operations: Iterable[bytes], current: BundleState, writer: TarballWriter | None = None
) -> bytes:
    """The delta bundle: the current revision's `.manifest` and the patch."""
    patch = b'{"data":[' + b",".join(operations) + b"]}"
    manifest = json.dumps(dict(current.manifest), sort_keys=True, separators=(",", ":")).encode()
    return (writer or TarballWriter()).write({MANIFEST: manifest, PATCH_FILE: patch})
