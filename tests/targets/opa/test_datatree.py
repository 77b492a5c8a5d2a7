"""The data tree behind data.json and delta bundles: one serialization, and patches that reproduce."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st
from nauthera.targets.opa.bundle import read_bundle
from nauthera.targets.opa.datatree import build, canonical, pieces, serialize
from nauthera.targets.opa.delta import bundle_state, delta_bundle, patch_operations

#: Keys with the characters a patch path escapes, and the empty key (which a patch cannot address).
KEYS = st.sampled_from(["a", "b", "security/p1", "x~1", "~0", "p%2F", "%", "", "ü", "k/ey~"])
SCALARS = st.none() | st.booleans() | st.integers(-10, 10**12) | st.text(max_size=8)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=12,
)
#: A big object (serialized longer than the split threshold) to get deep branches too.
BIG = st.dictionaries(
    st.text(min_size=1, max_size=6), st.text(min_size=60, max_size=80), min_size=80, max_size=90
)
DATA = st.fixed_dictionaries(
    {
        "policies": st.dictionaries(KEYS, VALUES, max_size=5),
        "index": st.dictionaries(KEYS, VALUES | BIG, max_size=3),
    }
)


@settings(max_examples=60, deadline=None)
@given(DATA)
def test_the_tree_serializes_to_the_canonical_json(value: dict[str, Any]) -> None:
    tree = build(value)
    assert serialize(tree) == b"".join(pieces(tree)) == canonical(value)
    assert json.loads(serialize(tree)) == value


def _unescape(segment: str) -> str:
    """What OPA does with a patch path segment: URL-unescape, then JSON Pointer `~1` and `~0`."""
    return unquote(segment, errors="strict").replace("~1", "/").replace("~0", "~")


def _apply(data: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply a delta's patch as OPA does: `upsert` creates missing parents, `remove` deletes."""
    result = copy.deepcopy(data)
    for operation in operations:
        path = [_unescape(s) for s in operation["path"].strip("/").split("/")]
        assert path[0] == "nauthera_data"
        path = path[1:]
        if not path:
            result = copy.deepcopy(operation["value"])
            continue
        parent = result
        for key in path[:-1]:
            parent = parent.setdefault(key, {})
        if operation["op"] == "upsert":
            parent[path[-1]] = copy.deepcopy(operation["value"])
        else:
            assert operation["op"] == "remove"
            del parent[path[-1]]
    return result


def _state(value: dict[str, Any], revision: str) -> Any:
    manifest = json.dumps({"revision": revision, "roots": ["nauthera"]}).encode()
    return bundle_state({".manifest": manifest, "nauthera_data/data.json": canonical(value)})


@settings(max_examples=100, deadline=None)
@given(DATA, DATA)
def test_a_delta_takes_the_old_data_to_the_new_data(old: dict[str, Any], new: dict[str, Any]) -> None:
    operations = patch_operations(_state(old, "a"), _state(new, "b"))
    assert operations is not None and operations, "a delta is never empty (OPA would wipe its data)"
    patch = json.loads(b'{"data":[' + b",".join(operations) + b"]}")
    assert _apply(old, patch["data"]) == new


@settings(max_examples=100, deadline=None)
@given(DATA, st.data())
def test_a_small_edit_gives_a_small_delta(old: dict[str, Any], draw: st.DataObject) -> None:
    new = copy.deepcopy(old)
    key = draw.draw(KEYS)
    new["policies"][key] = draw.draw(VALUES)
    operations = patch_operations(_state(old, "a"), _state(new, "b"))
    assert operations is not None and len(operations) == 1
    assert _apply(old, json.loads(operations[0].join((b"[", b"]")))) == new


def test_a_delta_bundle_carries_the_manifest_and_the_patch(tmp_path: Any) -> None:
    after = _state({"policies": {"security/p1": {"id": "security/p1"}}}, "b")
    before = _state({"policies": {}}, "a")
    operations = patch_operations(before, after)
    assert operations is not None
    target = tmp_path / "delta.tar.gz"
    target.write_bytes(delta_bundle(operations, after))
    files = read_bundle(target)
    assert set(files) == {".manifest", "patch.json"}
    assert json.loads(files[".manifest"])["revision"] == "b"
    assert json.loads(files["patch.json"]) == {
        "data": [
            {"op": "upsert", "path": "/nauthera_data/policies/security~1p1", "value": {"id": "security/p1"}}
        ]
    }


def test_bundles_that_a_delta_cannot_reach_have_no_patch() -> None:
    plain = _state({"policies": {}}, "a")
    signed = bundle_state(
        {
            ".manifest": b'{"revision": "b", "roots": ["nauthera"]}',
            "nauthera_data/data.json": b"{}",
            ".signatures.json": b'{"signatures": []}',
        }
    )
    other_rego = bundle_state(
        {
            ".manifest": b'{"revision": "c", "roots": ["nauthera"]}',
            "nauthera_data/data.json": b"{}",
            "nauthera/x.rego": b"package nauthera.x\n",
        }
    )
    assert patch_operations(plain, signed) is None
    assert patch_operations(plain, other_rego) is None
