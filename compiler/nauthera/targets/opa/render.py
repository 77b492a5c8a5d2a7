"""The OPA target's files: policy data with a lookup index, the Rego decision modules, generated tests."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from nauthera.compile.diagnostics import Position
from nauthera.compile.mapping import registration_vocabulary
from nauthera.compile.model import Policy
from nauthera.compile.patterns import literal_prefix
from nauthera.compile.schema import API_VERSION, client_json_schema
from nauthera.targets.fixtures import policy_fixture_set, registration_request, schema_fixture, violating_name
from nauthera.targets.opa.bundle import DATA_FILE, Content, policy_digest
from nauthera.targets.opa.datatree import (
    SPLIT_DEPTH,
    DataNode,
    branch,
    build,
    canonical,
    leaf,
    member,
    pieces,
    serialize,
)
from nauthera.targets.parameters import policy_parameters
from nauthera.targets.rego import render_template

ANY_TYPE = "*"
OPA_LIB_PACKAGE = "nauthera.lib"
FIXTURE_ROOT = "nauthera_fixtures"


def _index_keys(policy: Policy) -> list[tuple[str, ...]]:
    """Where the decision looks this policy up: the most selective target dimension it sets."""
    t = policy.targets
    if t.namespaces is not None:
        return [("namespace_prefix", literal_prefix(p)) for p in t.namespaces.source]
    if t.match_labels:
        key, value = t.match_labels[0]
        return [("label", key, value)]
    for requirement in t.match_expressions:
        if requirement.operator == "In":
            return [("label", requirement.key, value) for value in requirement.values]
    return [("unindexed",)]


@dataclass(frozen=True, slots=True)
class PolicyFragment:
    """What the OPA bundle needs of one policy, rendered once: an incremental compile keeps these
    instead of the policies (a fifth of their memory) and reuses them while their source is unchanged."""

    id: str
    position: Position
    #: The policy's parameters as they appear in data.json.
    node: DataNode
    #: (application type, index key) pairs, each once, in the order the index lists them.
    index_entries: tuple[tuple[str, tuple[str, ...]], ...]
    #: sha256 of the parameters as the store records them per policy.
    digest: bytes


def policy_fragment(policy: Policy) -> PolicyFragment:
    params = policy_parameters(policy)
    types = policy.targets.application_types
    entries = [
        (app_type, key)
        for app_type in ([ANY_TYPE] if types is None else types)
        for key in _index_keys(policy)
    ]
    return PolicyFragment(
        policy.id,
        policy.position,
        member(canonical(params), depth=SPLIT_DEPTH),
        tuple(dict.fromkeys(entries)),
        policy_digest(params),
    )


def build_index(fragments: Sequence[PolicyFragment]) -> dict[str, Any]:
    """Buckets per application type ("*" for policies that target every type)."""
    index: dict[str, Any] = {}
    for fragment in sorted(fragments, key=lambda f: f.id):
        for app_type, key in fragment.index_entries:
            bucket = index.setdefault(app_type, {"namespace_prefix": {}, "label": {}, "unindexed": []})
            if key[0] == "unindexed":
                slot = bucket["unindexed"]
            elif key[0] == "label":
                slot = bucket["label"].setdefault(key[1], {}).setdefault(key[2], [])
            else:
                slot = bucket["namespace_prefix"].setdefault(key[1], [])
            slot.append(fragment.id)
    return index


def index_node(fragments: Sequence[PolicyFragment]) -> DataNode:
    return build(build_index(fragments), 1)


def data_tree(
    fragments: Sequence[PolicyFragment], fail_closed: bool, index: DataNode | None = None
) -> DataNode:
    """data.json as a tree; `index` (from `index_node`) when the caller kept it from a previous build."""
    return branch(
        {
            "index": index if index is not None else index_node(fragments),
            "policies": branch({f.id: f.node for f in fragments}),
            "schema": build({"authclient": client_json_schema()}, 1),
            "settings": build({"fail_closed": fail_closed}, 1),
        }
    )


@cache
def rego_modules() -> dict[str, bytes]:
    context = {"lib_package": OPA_LIB_PACKAGE}
    return {
        "nauthera/lib/checks.rego": render_template("checks.rego.j2", **context).encode(),
        "nauthera/authclient/decision.rego": render_template("authclient.rego.j2", **context).encode(),
        "nauthera/admission/review.rego": render_template("admission.rego.j2", **context).encode(),
        "nauthera/registration/decision.rego": render_template(
            "registration.rego.j2", api_version=API_VERSION, vocabulary=registration_vocabulary(), **context
        ).encode(),
    }


@dataclass(frozen=True)
class RenderedOpa:
    """Files of the OPA target, by bundle path (data.json in pieces), and the data as a tree."""

    files: dict[str, Content]
    data: DataNode

    def file(self, name: str) -> bytes:
        content = self.files[name]
        return content if isinstance(content, bytes) else b"".join(content)


def render_fragments(
    fragments: Sequence[PolicyFragment], fail_closed: bool, index: DataNode | None = None
) -> RenderedOpa:
    data = data_tree(fragments, fail_closed, index)
    return RenderedOpa({DATA_FILE: list(pieces(data)), **rego_modules()}, data)


def render_opa(policies: Sequence[Policy], fail_closed: bool) -> RenderedOpa:
    return render_fragments([policy_fragment(p) for p in policies], fail_closed)


def fixture_entry(policy: Policy) -> bytes | None:
    """One policy's entry in the generated tests' data (its compliant client, per constraint the
    `spec` members a violating client changes, and each fixture as an RFC 7591 registration request
    where the metadata can express it), serialized; None when no client can satisfy it."""
    found = policy_fixture_set(policy)
    if found is None:
        return None
    name = violating_name(found.compliant["metadata"]["name"])
    compliant, *violating = found.fixtures()
    registration = {
        "compliant": registration_request(compliant),
        "violations": {fixture.expect: registration_request(fixture) for fixture in violating},
    }
    return canonical(
        {
            "client": found.compliant,
            "violating_name": name,
            "violations": dict(found.violations),
            "registration": registration,
        }
    )


def render_fixture_data(entries: Mapping[str, bytes]) -> dict[str, bytes]:
    """The generated test folder from the policies' entries (policy id → `fixture_entry`): the fixture
    data plus one data-driven Rego test per expectation. Storing violating clients as the members
    they change keeps the data a quarter of what whole clients would take; the test rebuilds them."""
    data = branch(
        {
            "malformed": build(schema_fixture().client, SPLIT_DEPTH),
            "malformed_registration": build(registration_request(schema_fixture()), SPLIT_DEPTH),
            "policies": branch({policy: leaf(entry) for policy, entry in entries.items()}),
        }
    )
    manifest = {"roots": [FIXTURE_ROOT, f"{FIXTURE_ROOT}_test"]}
    return {
        ".manifest": json.dumps(manifest, sort_keys=True).encode(),
        f"{FIXTURE_ROOT}/data.json": serialize(data),
        f"{FIXTURE_ROOT}/generated_test.rego": render_template("fixtures_test.rego.j2").encode(),
    }


def render_fixture_tests(policies: Sequence[Policy]) -> dict[str, bytes]:
    """The generated test folder for `policies` (see `render_fixture_data`)."""
    entries = {p.id: entry for p in policies if (entry := fixture_entry(p)) is not None}
    return render_fixture_data(entries)
