"""The OPA target's files: policy data with a lookup index, the Rego decision modules, generated tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nauthera.compile.mapping import registration_vocabulary
from nauthera.compile.model import Policy
from nauthera.compile.patterns import literal_prefix
from nauthera.compile.schema import API_VERSION, client_json_schema
from nauthera.targets.fixtures import all_fixtures
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


def build_index(policies: Sequence[Policy]) -> dict[str, Any]:
    """Buckets per application type ("*" for policies that target every type)."""
    index: dict[str, Any] = {}
    for policy in sorted(policies, key=lambda p: p.id):
        types = policy.targets.application_types
        for app_type in [ANY_TYPE] if types is None else types:
            bucket = index.setdefault(app_type, {"namespace_prefix": {}, "label": {}, "unindexed": []})
            for key in _index_keys(policy):
                if key[0] == "unindexed":
                    slot = bucket["unindexed"]
                elif key[0] == "label":
                    slot = bucket["label"].setdefault(key[1], {}).setdefault(key[2], [])
                else:
                    slot = bucket["namespace_prefix"].setdefault(key[1], [])
                if policy.id not in slot:
                    slot.append(policy.id)
    return index


@dataclass(frozen=True)
class RenderedOpa:
    """Files of the OPA target, by bundle path."""

    files: dict[str, bytes]


def render_opa(policies: Sequence[Policy], fail_closed: bool) -> RenderedOpa:
    data = {
        "policies": {p.id: policy_parameters(p) for p in policies},
        "index": build_index(policies),
        "schema": {"authclient": client_json_schema()},
        "settings": {"fail_closed": fail_closed},
    }
    context = {"lib_package": OPA_LIB_PACKAGE}
    files = {
        "nauthera/data.json": json.dumps(data, sort_keys=True, separators=(",", ":")).encode(),
        "nauthera/lib/checks.rego": render_template("checks.rego.j2", **context).encode(),
        "nauthera/authclient/decision.rego": render_template("authclient.rego.j2", **context).encode(),
        "nauthera/admission/review.rego": render_template("admission.rego.j2", **context).encode(),
        "nauthera/registration/decision.rego": render_template(
            "registration.rego.j2", api_version=API_VERSION, vocabulary=registration_vocabulary(), **context
        ).encode(),
    }
    return RenderedOpa(files)


def render_fixture_tests(policies: Sequence[Policy]) -> dict[str, bytes]:
    """The generated test folder: fixture data plus one data-driven Rego test per expectation."""
    fixtures = all_fixtures(policies)
    data = {"cases": [f.as_data() for f in fixtures]}
    manifest = {"roots": [FIXTURE_ROOT, f"{FIXTURE_ROOT}_test"]}
    return {
        ".manifest": json.dumps(manifest, sort_keys=True).encode(),
        f"{FIXTURE_ROOT}/data.json": json.dumps(data, sort_keys=True, separators=(",", ":")).encode(),
        f"{FIXTURE_ROOT}/generated_test.rego": render_template("fixtures_test.rego.j2").encode(),
    }
