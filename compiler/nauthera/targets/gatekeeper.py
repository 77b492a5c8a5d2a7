"""Gatekeeper target: ConstraintTemplates, one Constraint per AuthPolicy, and gator suites.

The checks are not translated: the shared library (`checks.rego.j2`) that the OPA bundle uses is
rendered as `lib.nauthera` and shipped in each template's `libs`, and every Constraint's `parameters`
are exactly the `policy_parameters` the OPA bundle carries as data, so both targets decide alike.

`match` only narrows what Gatekeeper sends to the Rego, never what a policy governs: it carries the
targets Gatekeeper can express with the same meaning (exact and `prefix*` namespaces, valid label
selectors); the Rego re-checks every target with `targets_match`, including the parts left out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nauthera.compile.kubernetes import kubectl_yaml, valid_label_key, valid_label_value
from nauthera.compile.model import Policy
from nauthera.compile.patterns import PatternSet
from nauthera.compile.schema import GROUP, client_json_schema
from nauthera.targets.base import CompileOptions, StagedOutput, write_tree
from nauthera.targets.fixtures import COMPLIANT, policy_fixtures, schema_fixture
from nauthera.targets.parameters import policy_parameters
from nauthera.targets.rego import render_template

LIB_PACKAGE = "lib.nauthera"
TEMPLATE_API = "templates.gatekeeper.sh/v1"
CONSTRAINT_API = "constraints.gatekeeper.sh/v1beta1"
SUITE_API = "test.gatekeeper.sh/v1alpha1"
TARGET = "admission.k8s.gatekeeper.sh"
MATCH_KINDS = [{"apiGroups": [GROUP], "kinds": ["AuthClient"]}]
#: On every object nauthera generates, so `kubectl apply --prune -l ...` can remove retired ones.
MANAGED_BY = {"app.kubernetes.io/managed-by": "nauthera"}

POLICY_KIND = "NautheraAuthClientPolicy"
GOVERNED_KIND = "NautheraAuthClientGoverned"
GOVERNED_CONSTRAINT = "nauthera-authclient-governed"
TEMPLATES_DIR = "templates"
CONSTRAINTS_DIR = "constraints"
#: The suite folder beside the per-policy ones, which are named after Constraints: those always hold
#: a `-` and never start with `_`, so the name cannot clash with a policy's folder.
GOVERNED_SUITE_DIR = "_governed"
#: From a suite folder (DIR/tests/gatekeeper/<suite>/) to DIR/gatekeeper/: suites test the very
#: templates and Constraints that `kubectl apply` applies (gator resolves paths from `/`, so `..` works).
_APPLIED = "../../../gatekeeper"
#: Gatekeeper refuses Constraint names longer than a label value (frameworks PR #92).
MAX_NAME = 63
_HASH_LENGTH = 8
#: What a Constraint name may be: a DNS subdomain that is also a label value.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
#: An exact name or `prefix*` that the Constraint CRD accepts in match.namespaces (which allows
#: `^\*?[-:a-z0-9]*\*?$`), or `*` alone.
_GATEKEEPER_NAMESPACE = re.compile(r"^([-:a-z0-9]+\*?|\*)$")


def _document(value: Mapping[str, Any]) -> bytes:
    """Every other document (Constraints, gator suites and their samples) as one line of JSON, which
    is YAML.

    kubectl and gator read a document that starts with `{` with a JSON decoder, so the values are
    exactly these; and at 10,000 policies there are some 150,000 such documents, which PyYAML's
    emitter needed minutes for (its C emitter, ~0.5 ms a document, still over a minute) and `json`'s
    C encoder writes in seconds (it is used only without `indent`). ASCII escapes keep every YAML
    reader on the same characters.
    """
    return (json.dumps(value, sort_keys=True) + "\n").encode()


# --- ConstraintTemplates ---------------------------------------------------------------------------


def _string() -> dict[str, Any]:
    return {"type": "string"}


def _strings() -> dict[str, Any]:
    return {"type": "array", "items": _string()}


def _object(properties: Mapping[str, Any], description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    if description:
        schema["description"] = description
    return schema


def _pattern_set_schema(description: str) -> dict[str, Any]:
    return _object(
        {"patterns": _strings(), "exact": _strings(), "regexes": _strings()},
        f"{description}: the source globs, the entries without `*`, and the globs as anchored RE2.",
    )


def targets_schema() -> dict[str, Any]:
    requirement = _object({"key": _string(), "operator": _string(), "values": _strings()})
    return _object(
        {
            "types": _strings(),
            "namespaces": _pattern_set_schema("targets.namespaces"),
            "excluded_namespaces": _pattern_set_schema("targets.excludedNamespaces"),
            "match_labels": {"type": "object", "additionalProperties": _string()},
            "match_expressions": {"type": "array", "items": requirement},
        },
        "The policy's targets; an absent key matches every client.",
    )


def policy_parameters_schema() -> dict[str, Any]:
    """The OpenAPI v3 schema of `policy_parameters(policy)`: typed, so the API server checks it."""
    limit = _object({"max_ns": {"type": "integer", "format": "int64"}, "max": _string()})
    return _object(
        {
            "id": _string(),
            "action": {"type": "string", "enum": ["deny", "warn", "dryrun"]},
            "targets": targets_schema(),
            "token": {
                "type": "object",
                "description": "Maximum TTL per field (token.accessTokenTTL, ...), in ns and as written.",
                "additionalProperties": limit,
            },
            "enforce_pkce": {"type": "boolean"},
            "require_par": {"type": "boolean"},
            "allowed_grant_types": _strings(),
            "required_scopes": _strings(),
            "allowed_response_types": _strings(),
            "allowed_auth_methods": _strings(),
            "sender_constrained_tokens": _strings(),
            "allowed_signing_algorithms": _strings(),
            "allowed_scopes": _pattern_set_schema("allowedScopes"),
            "redirects": _object(
                {
                    "require_https": {"type": "boolean"},
                    "allow_loopback": {"type": "boolean"},
                    "forbid_wildcards": {"type": "boolean"},
                    "allow_private_use_schemes": {"type": "boolean"},
                    "forbid_fragments": {"type": "boolean"},
                    "allowed_hosts": _pattern_set_schema("redirectUris.allowedHosts"),
                    "allowed_schemes": _pattern_set_schema("redirectUris.allowedSchemes"),
                }
            ),
            "baselines": {
                "type": "object",
                "description": "Per constraint a baseline decides, how findings name it (baseline oauth2.1).",
                "additionalProperties": _string(),
            },
        },
        "One AuthPolicy, as compiled by nauthera (render.policy_parameters).",
    )


def governed_parameters_schema() -> dict[str, Any]:
    entry = _object({"id": _string(), "targets": targets_schema()})
    return _object(
        {"fail_closed": {"type": "boolean"}, "policies": {"type": "array", "items": entry}},
        "Every AuthPolicy's targets, and whether an AuthClient none of them governs is denied.",
    )


def render_lib() -> str:
    return render_template("checks.rego.j2", lib_package=LIB_PACKAGE)


def render_template_rego(template: str) -> str:
    return render_template(template, schema=client_json_schema())


def _constraint_template(
    kind: str, rego_template: str, parameters: dict[str, Any], about: str
) -> dict[str, Any]:
    return {
        "apiVersion": TEMPLATE_API,
        "kind": "ConstraintTemplate",
        "metadata": {
            "name": kind.lower(),
            "labels": dict(MANAGED_BY),
            "annotations": {"description": about, "metadata.gatekeeper.sh/version": "1.0.0"},
        },
        "spec": {
            "crd": {"spec": {"names": {"kind": kind}, "validation": {"openAPIV3Schema": parameters}}},
            "targets": [
                {
                    "target": TARGET,
                    "code": [
                        {
                            "engine": "Rego",
                            "source": {
                                "version": "v1",
                                "rego": render_template_rego(rego_template),
                                "libs": [render_lib()],
                            },
                        }
                    ],
                }
            ],
        },
    }


def constraint_templates() -> dict[str, dict[str, Any]]:
    return {
        POLICY_KIND: _constraint_template(
            POLICY_KIND,
            "gatekeeper_policy.rego.j2",
            policy_parameters_schema(),
            "Generated by nauthera: one Constraint per AuthPolicy; its AuthClient violations.",
        ),
        GOVERNED_KIND: _constraint_template(
            GOVERNED_KIND,
            "gatekeeper_governed.rego.j2",
            governed_parameters_schema(),
            "Generated by nauthera: AuthClients that break their schema or that no AuthPolicy governs.",
        ),
    }


# --- Constraints -----------------------------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]


def _plain_name(policy: Policy) -> str:
    return f"{policy.namespace}-{policy.name}"


def _hashed_name(policy: Policy) -> str:
    stem = _plain_name(policy)[: MAX_NAME - _HASH_LENGTH - 1].rstrip("-.")
    return f"{stem}-{_short_hash(policy.id)}"


def constraint_names(policies: Sequence[Policy]) -> dict[str, str]:
    """Policy id → Constraint name: `<namespace>-<name>`, hashed when too long or ambiguous.

    `a-b/c` and `a/b-c` would both read `a-b-c`; such pairs (and names over 63 characters) get a
    suffix from the policy id instead, so every name is unique and a valid Constraint name.
    """
    plain: dict[str, list[str]] = {}
    for policy in policies:
        plain.setdefault(_plain_name(policy), []).append(policy.id)
    names: dict[str, str] = {}
    for policy in sorted(policies, key=lambda p: p.id):
        name = _plain_name(policy)
        if len(name) > MAX_NAME or len(plain[name]) > 1 or not _NAME.match(name):
            name = _hashed_name(policy)
        names[policy.id] = name
    if len(set(names.values())) != len(names):  # pragma: no cover - a sha256 prefix collision
        raise ValueError("two AuthPolicies map to the same Constraint name")
    return names


def _gatekeeper_namespaces(patterns: PatternSet | None) -> list[str] | None:
    """The globs as Gatekeeper namespace matchers, or None when one of them has no exact equivalent.

    Gatekeeper reads a trailing `*` as a prefix match and a name without `*` literally, which is
    what the SPEC glob means for those two forms. A `*` anywhere else, or a character the Constraint
    CRD refuses, leaves the whole list to the Rego.
    """
    if patterns is None or not patterns.source:
        return None
    if not all(_GATEKEEPER_NAMESPACE.match(pattern) for pattern in patterns.source):
        return None
    return sorted(patterns.source)


def _label_selector(policy: Policy) -> dict[str, Any] | None:
    """The clientSelector as a Kubernetes label selector, or None when Gatekeeper would refuse it."""
    t = policy.targets
    keys = [k for k, _ in t.match_labels] + [e.key for e in t.match_expressions]
    values = [v for _, v in t.match_labels] + [v for e in t.match_expressions for v in e.values]
    if not keys or not all(map(valid_label_key, keys)) or not all(map(valid_label_value, values)):
        return None
    selector: dict[str, Any] = {}
    if t.match_labels:
        selector["matchLabels"] = dict(t.match_labels)
    if t.match_expressions:
        selector["matchExpressions"] = [
            {"key": e.key, "operator": e.operator, **({"values": list(e.values)} if e.values else {})}
            for e in t.match_expressions
        ]
    return selector


def policy_match(policy: Policy) -> dict[str, Any]:
    """What Gatekeeper can pre-filter for this policy; the Rego re-checks all of the targets."""
    match: dict[str, Any] = {"kinds": MATCH_KINDS, "scope": "Namespaced"}
    namespaces = _gatekeeper_namespaces(policy.targets.namespaces)
    if namespaces is not None:
        match["namespaces"] = namespaces
    excluded = _gatekeeper_namespaces(policy.targets.excluded_namespaces)
    if excluded is not None:
        match["excludedNamespaces"] = excluded
    selector = _label_selector(policy)
    if selector is not None:
        match["labelSelector"] = selector
    return match


def policy_constraint(policy: Policy, name: str) -> dict[str, Any]:
    return {
        "apiVersion": CONSTRAINT_API,
        "kind": POLICY_KIND,
        "metadata": {
            "name": name,
            "labels": dict(MANAGED_BY),
            "annotations": {"auth.nauthera.io/policy": policy.id},
        },
        "spec": {
            "enforcementAction": policy.enforcement_action,
            "match": policy_match(policy),
            "parameters": policy_parameters(policy),
        },
    }


def governed_constraint(policies: Sequence[Policy], fail_closed: bool) -> dict[str, Any]:
    entries = [
        {"id": p.id, "targets": policy_parameters(p)["targets"]} for p in sorted(policies, key=lambda p: p.id)
    ]
    return {
        "apiVersion": CONSTRAINT_API,
        "kind": GOVERNED_KIND,
        "metadata": {"name": GOVERNED_CONSTRAINT, "labels": dict(MANAGED_BY)},
        "spec": {
            "enforcementAction": "deny",
            "match": {"kinds": MATCH_KINDS},
            "parameters": {"fail_closed": fail_closed, "policies": entries},
        },
    }


@dataclass(frozen=True)
class GatekeeperObjects:
    templates: dict[str, dict[str, Any]]
    #: Constraint name → Constraint, for the per-policy constraints.
    constraints: dict[str, dict[str, Any]]
    governed: dict[str, Any]


def gatekeeper_objects(policies: Sequence[Policy], fail_closed: bool) -> GatekeeperObjects:
    names = constraint_names(policies)
    constraints = {names[p.id]: policy_constraint(p, names[p.id]) for p in policies}
    return GatekeeperObjects(
        constraint_templates(), dict(sorted(constraints.items())), governed_constraint(policies, fail_closed)
    )


def render_gatekeeper(policies: Sequence[Policy], fail_closed: bool) -> dict[str, bytes]:
    """Files under DIR/gatekeeper/: only what `kubectl apply -f DIR/gatekeeper --recursive` applies."""
    objects = gatekeeper_objects(policies, fail_closed)
    files = {f"{TEMPLATES_DIR}/{kind.lower()}.yaml": kubectl_yaml(t) for kind, t in objects.templates.items()}
    files.update(
        {f"{CONSTRAINTS_DIR}/policy-{name}.yaml": _document(c) for name, c in objects.constraints.items()}
    )
    files[f"{CONSTRAINTS_DIR}/governed.yaml"] = _document(objects.governed)
    return dict(sorted(files.items()))


# --- gator suites ----------------------------------------------------------------------------------


def _case_name(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _suite(name: str, kind: str, constraint: str, cases: list[dict[str, Any]]) -> bytes:
    template = f"{_APPLIED}/{TEMPLATES_DIR}/{kind.lower()}.yaml"
    test: dict[str, Any] = {"name": name, "template": template, "constraint": f"{_APPLIED}/{constraint}"}
    # A policy no client can satisfy has no fixtures; gator refuses a test without cases.
    test.update({"cases": cases} if cases else {"skip": True})
    suite = {"apiVersion": SUITE_API, "kind": "Suite", "metadata": {"name": name}, "tests": [test]}
    return _document(suite)


@dataclass(frozen=True)
class GatekeeperPolicy:
    """One policy prepared for the Gatekeeper target: the policy (its Constraint's name depends on all
    the others) and its fixtures as suite samples, (what each expects, document)."""

    policy: Policy
    samples: tuple[tuple[str, bytes], ...]


def prepare_gatekeeper(policy: Policy) -> GatekeeperPolicy:
    samples = tuple((f.expect, _document(f.client)) for f in policy_fixtures(policy))
    return GatekeeperPolicy(policy, samples)


def _policy_suite(prepared: GatekeeperPolicy, name: str) -> dict[str, bytes]:
    """The policy's own Constraint against its fixtures: compliant → no violation, each bad one → some."""
    files: dict[str, bytes] = {}
    cases = []
    for index, (expect, document) in enumerate(prepared.samples):
        compliant = expect == COMPLIANT
        sample = (
            "samples/example_allowed.yaml" if compliant else f"samples/example_disallowed_{index:02d}.yaml"
        )
        files[sample] = document
        assertion: dict[str, Any] = {"violations": "no" if compliant else "yes"}
        if not compliant:
            assertion["message"] = re.escape(prepared.policy.id)
        cases.append(
            {
                "name": "compliant" if compliant else f"violates-{_case_name(expect)}",
                "object": sample,
                "assertions": [assertion],
            }
        )
    files["suite.yaml"] = _suite(name, POLICY_KIND, f"{CONSTRAINTS_DIR}/policy-{name}.yaml", cases)
    return files


def _governed_suite(compliant: dict[str, str]) -> dict[str, bytes]:
    """The schema and fail-closed Constraint: malformed → schema violation, and each policy's compliant
    client (`compliant`: policy id → its suite folder, which holds the sample) → none."""
    files = {"samples/example_disallowed_schema.yaml": _document(schema_fixture().client)}
    cases: list[dict[str, Any]] = [
        {
            "name": "malformed-client",
            "object": "samples/example_disallowed_schema.yaml",
            "assertions": [{"violations": "yes", "message": "does not match its schema"}],
        }
    ]
    for policy_id, folder in sorted(compliant.items()):
        sample = f"../{folder}/samples/example_allowed.yaml"
        cases.append(
            {
                "name": f"governed-by-{_case_name(policy_id)}",
                "object": sample,
                "assertions": [{"violations": "no"}],
            }
        )
    files["suite.yaml"] = _suite(
        GOVERNED_CONSTRAINT, GOVERNED_KIND, f"{CONSTRAINTS_DIR}/governed.yaml", cases
    )
    return files


def _suites(prepared: Sequence[GatekeeperPolicy]) -> dict[str, bytes]:
    names = constraint_names([p.policy for p in prepared])
    files: dict[str, bytes] = {}
    compliant: dict[str, str] = {}
    for each in prepared:
        name = names[each.policy.id]
        for path, content in _policy_suite(each, name).items():
            files[f"{name}/{path}"] = content
        if f"{name}/samples/example_allowed.yaml" in files:
            compliant[each.policy.id] = name
    for path, content in _governed_suite(compliant).items():
        files[f"{GOVERNED_SUITE_DIR}/{path}"] = content
    return dict(sorted(files.items()))


def render_gatekeeper_suites(policies: Sequence[Policy]) -> dict[str, bytes]:
    """Files under DIR/tests/gatekeeper/, gatekeeper-library style, for `gator verify DIR/tests/...`.

    One folder per policy with the fixtures of `policy_fixtures` (the compliant client draws no
    violation from the policy's Constraint, each violating client at least one), and a `_governed`
    folder for the schema and fail-closed Constraint. The suites name the templates and Constraints
    in DIR/gatekeeper/ and the compliant clients in the policies' folders, rather than copies: at
    10,000 policies the copies were 20,000 of the files a compile writes.
    """
    return _suites([prepare_gatekeeper(p) for p in policies])


def gatekeeper_regos() -> dict[str, str]:
    """Every Rego module the templates carry, at paths that mirror their packages (for the linters)."""
    return {
        "lib/nauthera/checks.rego": render_lib(),
        "nautheraauthclientpolicy/violation.rego": render_template_rego("gatekeeper_policy.rego.j2"),
        "nautheraauthclientgoverned/violation.rego": render_template_rego("gatekeeper_governed.rego.j2"),
    }


GATEKEEPER_DIR = Path("gatekeeper")
GATEKEEPER_TESTS_DIR = Path("tests") / "gatekeeper"


class GatekeeperTarget:
    name = "gatekeeper"
    owned: tuple[Path, ...] = (GATEKEEPER_DIR, GATEKEEPER_TESTS_DIR)

    def prepare(self, policy: Policy) -> GatekeeperPolicy:
        return prepare_gatekeeper(policy)

    def stage(
        self, prepared: Sequence[GatekeeperPolicy], options: CompileOptions, staging: Path
    ) -> StagedOutput:
        policies = [p.policy for p in prepared]
        write_tree(staging / GATEKEEPER_DIR, render_gatekeeper(policies, options.fail_closed))
        write_tree(staging / GATEKEEPER_TESTS_DIR, _suites(prepared))
        return StagedOutput(GATEKEEPER_DIR)
