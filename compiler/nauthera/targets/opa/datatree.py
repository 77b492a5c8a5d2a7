"""Bundle data as a tree of canonical JSON fragments, with a digest on every node.

One structure serves three purposes: `nauthera/data.json` is serialized from it (so a compile that
reuses unchanged fragments writes the same bytes as one that renders everything); two revisions are
compared in time proportional to what changed (equal digests end the walk); and a delta bundle takes
its patch values from it.

Canonical JSON is what `json.dumps(value, sort_keys=True, separators=(",", ":"))` writes. Objects
near the top, and objects too large to resend whole, are branches (one child per key); everything
else is a leaf holding its serialized bytes. Where a node is split depends only on its content, so
the same data always gives the same tree, whoever builds it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: Objects at depths below this are always split (data.json's top-level keys and their children).
SPLIT_DEPTH = 2
#: Deeper objects are split when their JSON is longer than this (a map of policies, an index bucket).
SPLIT_BYTES = 4096
_SEPARATORS = (",", ":")
#: How `json.dumps` writes a string (ASCII escapes): an object key in canonical JSON.
_key = json.encoder.encode_basestring_ascii


def canonical(value: Any) -> bytes:
    """The one serialization of data values in bundles: sorted keys, no spaces, ASCII escapes."""
    return json.dumps(value, sort_keys=True, separators=_SEPARATORS).encode()


def digest_of(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()[:16]


@dataclass(frozen=True, eq=False, slots=True)
class DataNode:
    """A JSON value: a leaf with its canonical bytes, or a branch of keyed children (which may also
    carry its bytes, when they were at hand anyway)."""

    digest: bytes
    raw: bytes | None = None
    children: Mapping[str, DataNode] | None = None

    def child(self, key: str) -> DataNode | None:
        return None if self.children is None else self.children.get(key)


def leaf(raw: bytes, digest: bytes | None = None) -> DataNode:
    return DataNode(digest if digest is not None else digest_of(raw), raw=raw)


def branch(children: Mapping[str, DataNode], raw: bytes | None = None) -> DataNode:
    """A JSON object whose members are nodes; its digest covers every key and child digest."""
    ordered = dict(sorted(children.items()))
    listed = b"".join(_key(key).encode() + b":" + node.digest for key, node in ordered.items())
    return DataNode(hashlib.sha256(b"{" + listed).digest()[:16], raw=raw, children=ordered)


def build(value: Any, depth: int = 0, known: Mapping[bytes, DataNode] | None = None) -> DataNode:
    """The tree of a JSON value (as `json.loads` returns it), split by the rules above.

    Nodes equal to one in `known` (see `nodes_by_digest`) are that node: trees of successive
    revisions then share what did not change instead of holding it twice.
    """
    if isinstance(value, dict) and depth < SPLIT_DEPTH:
        node = branch({key: build(child, depth + 1, known) for key, child in value.items()})
    else:
        raw = canonical(value)
        if isinstance(value, dict) and len(raw) > SPLIT_BYTES:
            node = branch({key: build(child, depth + 1, known) for key, child in value.items()}, raw)
        else:
            node = leaf(raw)
    return known.get(node.digest, node) if known is not None else node


def nodes_by_digest(root: DataNode) -> dict[bytes, DataNode]:
    """Every node of a tree by its digest."""
    found: dict[bytes, DataNode] = {}
    pending = [root]
    while pending:
        node = pending.pop()
        found[node.digest] = node
        if node.children is not None:
            pending.extend(node.children.values())
    return found


def member(raw: bytes, digest: bytes | None = None, depth: int = SPLIT_DEPTH) -> DataNode:
    """The node for an already serialized value at `depth`: a leaf, unless `build` would split it."""
    if len(raw) > SPLIT_BYTES and raw.startswith(b"{"):
        return build(json.loads(raw), depth)
    return leaf(raw, digest)


#: Marks, among the pieces of a serialization, where a run of content may end (see `pieces`).
BOUNDARY = b""


def pieces(node: DataNode) -> list[bytes]:
    """The node's canonical JSON, in pieces: the bytes a node carries are used as they are, not
    copied. After about one leaf in 256 (chosen by its digest, so by its content) comes an empty
    `BOUNDARY` piece: a writer that compresses in runs can end one there, so that an edit changes
    only the run it falls in."""
    found: list[bytes] = []
    _append_pieces(node, found)
    return found


def _append_pieces(node: DataNode, found: list[bytes]) -> None:
    if node.raw is not None:
        found.append(node.raw)
        return
    assert node.children is not None
    separator = b"{"
    for key, child in node.children.items():
        found.append(separator + _key(key).encode() + b":")
        separator = b","
        if child.children is not None:
            _append_pieces(child, found)
            continue
        assert child.raw is not None
        found.append(child.raw)
        if child.digest[0] == 0:
            found.append(BOUNDARY)
    found.append(b"}" if separator == b"," else b"{}")


def serialize(node: DataNode) -> bytes:
    return node.raw if node.raw is not None else b"".join(pieces(node))


def at(node: DataNode, path: tuple[str, ...]) -> DataNode | None:
    """The node at `path` below `node`; None where there is none (a leaf is not looked into)."""
    for key in path:
        found = node.child(key)
        if found is None:
            return None
        node = found
    return node


@dataclass(frozen=True)
class Change:
    """A path whose value differs between two trees: present before, after, or both (replaced)."""

    path: tuple[str, ...]
    before: bool
    after: bool


def _addressable(node: DataNode) -> bool:
    """Whether a patch can address this branch's members one by one. OPA trims `/` at both ends of a
    patch path, so an empty key cannot be addressed: such a branch is replaced whole."""
    return node.children is not None and "" not in node.children


def diff(old: DataNode, new: DataNode, path: tuple[str, ...] = ()) -> Iterator[Change]:
    """The smallest set of paths that turns `old` into `new`, visiting only subtrees that differ."""
    if old.digest == new.digest:
        return
    if not (_addressable(old) and _addressable(new)):
        yield Change(path, True, True)
        return
    assert old.children is not None and new.children is not None
    for key in sorted(old.children.keys() | new.children.keys()):
        before, after = old.children.get(key), new.children.get(key)
        if before is None:
            yield Change((*path, key), False, True)
        elif after is None:
            yield Change((*path, key), True, False)
        else:
            yield from diff(before, after, (*path, key))


def first_leaf_path(node: DataNode) -> tuple[str, ...]:
    """Some addressable path of the tree (the first member at each level): a harmless re-upsert."""
    path: tuple[str, ...] = ()
    while node.children and _addressable(node):
        key, node = next(iter(node.children.items()))
        path = (*path, key)
    return path


def pointer(path: tuple[str, ...]) -> str:
    """A patch path as OPA parses it: `%` unescaped first, then JSON Pointer `~1` (/) and `~0` (~)."""
    return "".join("/" + key.replace("~", "~0").replace("/", "~1").replace("%", "%25") for key in path)
