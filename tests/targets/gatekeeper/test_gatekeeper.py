"""Gatekeeper target: generated objects, gator suites, and decisions identical to the OPA target.

Everything runs the real engines (`opa`, `regal`, `gator`); a missing engine fails the session
(tests/conftest.py), it never skips. The parity test compiles seeded policy sets from `corpus.py`
and compares, client by client, the (policy, field, message) sets that `gator test` reports per
enforcement action with the violations, warnings and dryrun lists of the OPA decision.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from nauthera.compile.analysis import analyse
from nauthera.engines.check import evaluate
from nauthera.engines.testing import run_gator_verify
from nauthera.engines.tools import find_tool
from nauthera.targets.base import CompileOptions
from nauthera.targets.gatekeeper import (
    GOVERNED_KIND,
    MAX_NAME,
    POLICY_KIND,
    constraint_names,
    gatekeeper_regos,
    policy_match,
    render_gatekeeper,
    render_gatekeeper_suites,
)
from nauthera.targets.outputs import compile_policies
from nauthera.targets.parameters import policy_parameters

from ...conftest import EXAMPLES, REPO, Cli
from . import corpus

Entry = tuple[str | None, str, str]
#: Decision list per Gatekeeper enforcement action.
ACTIONS = {"deny": "violations", "warn": "warnings", "dryrun": "dryrun"}
PARITY_SETS = 20
PARITY_CLIENTS = 50
PARITY_SEED = 20_260_301


def _tool(name: str, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_tool(name)), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=600,
    )


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def gator_results(*paths: Path) -> dict[str, dict[str, set[Entry]]]:
    """`gator test -o json` over `paths`, as client "ns/name" → action → {(policy, field, message)}."""
    run = _tool("gator", "test", *(arg for path in paths for arg in ("-f", path)), "-o", "json")
    results = json.loads(run.stdout) if run.stdout.strip() else None
    # Exit 1 with results means a deny violation; exit 1 without them is an error.
    assert run.returncode == 0 or (run.returncode == 1 and results), run.stderr
    grouped: dict[str, dict[str, set[Entry]]] = {}
    for result in results or []:
        metadata = result["violatingObject"]["metadata"]
        details = result["metadata"]["details"]
        assert set(details) == {"policy", "field"}, details
        client = f"{metadata.get('namespace', '?')}/{metadata.get('name', '?')}"  # as `nauthera check`
        entry = (details["policy"], details["field"], result["msg"])
        grouped.setdefault(client, {}).setdefault(result["enforcementAction"], set()).add(entry)
    return grouped


def opa_entries(decision: dict[str, Any], action: str) -> set[Entry]:
    return {(e["policy"], e["field"], e["message"]) for e in decision[ACTIONS[action]]}


# --- The compiled examples --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("examples") / "build"
    result = compile_policies(CompileOptions(paths=[EXAMPLES / "policies"], out=out, target="all"))
    assert result.ok, result.diagnostics
    return out


def test_gator_verify_passes_on_the_examples(examples_build: Path) -> None:
    run = _tool("gator", "verify", "tests/gatekeeper/...", cwd=examples_build)
    assert run.returncode == 0, run.stdout + run.stderr
    suites = sorted(examples_build.glob("tests/gatekeeper/*/suite.yaml"))
    assert len(suites) == 9  # eight policies and the schema/fail-closed suite
    assert run.stdout.count("\nok\t") + run.stdout.startswith("ok\t") == len(suites), run.stdout


def test_gator_verify_cases_cover_every_fixture(examples_build: Path) -> None:
    """Each policy suite has its compliant client and one violating client per constraint it sets."""
    web = yaml.safe_load(
        (examples_build / "tests/gatekeeper/security-web-apps-policy/suite.yaml").read_text()
    )
    cases = web["tests"][0]["cases"]
    assert cases[0] == {
        "name": "compliant",
        "object": "samples/example_allowed.yaml",
        "assertions": [{"violations": "no"}],
    }
    assert {c["name"] for c in cases[1:]} == {
        "violates-token-accesstokenttl",
        "violates-token-refreshtokenttl",
        "violates-token-idtokenttl",
        "violates-allowedgranttypes",
        "violates-enforcepkce",
        "violates-allowedscopes",
        "violates-requiredscopes",
        "violates-allowedresponsetypes",
        "violates-allowedtokenendpointauthmethods",
        "violates-redirecturis-requirehttps",
        "violates-redirecturis-allowwildcards",
        "violates-redirecturis-allowedhosts",
    }
    for case in cases[1:]:
        assert case["assertions"] == [{"violations": "yes", "message": re.escape("security/web-apps-policy")}]
        assert (examples_build / "tests/gatekeeper/security-web-apps-policy" / case["object"]).is_file()


def test_baseline_and_section_10_constraints_get_their_fixtures(examples_build: Path) -> None:
    """Every constraint a baseline brings has its violating client, as the explicit ones do (SPEC §10)."""

    def names(suite: str) -> set[str]:
        loaded = yaml.safe_load((examples_build / f"tests/gatekeeper/{suite}/suite.yaml").read_text())
        return {c["name"] for c in loaded["tests"][0]["cases"]}

    assert names("security-payments-fapi2") == {
        "compliant",
        "violates-token-accesstokenttl",
        "violates-token-refreshtokenttl",
        "violates-allowedgranttypes",
        "violates-enforcepkce",
        "violates-allowedscopes",
        "violates-allowedresponsetypes",
        "violates-allowedtokenendpointauthmethods",
        "violates-redirecturis-requirehttps",
        "violates-redirecturis-allowwildcards",
        "violates-redirecturis-allowedhosts",
        "violates-redirecturis-forbidfragments",
        "violates-senderconstrainedtokens",
        "violates-requirepushedauthorizationrequests",
        "violates-allowedsigningalgorithms",
    }
    mobile = names("security-mobile-spa-policy")
    assert {"violates-redirecturis-allowedschemes", "violates-redirecturis-forbidfragments"} <= mobile
    compliant = yaml.safe_load(
        (
            examples_build / "tests/gatekeeper/security-mobile-spa-policy/samples/example_allowed.yaml"
        ).read_text()
    )
    assert compliant["spec"]["applicationType"] == "native"
    assert "com.example.app:/callback" in compliant["spec"]["redirectUris"], "the exemption is tested"


def test_gator_test_on_the_examples_gives_the_opa_decisions(examples_build: Path, cli: Cli) -> None:
    checked = cli(
        "check", "--bundle", examples_build / "bundle.tar.gz", EXAMPLES / "clients", "--format", "json"
    )
    assert checked.returncode == 1, checked.stderr
    decisions = {r["client"]: r for r in json.loads(checked.stdout)["results"]}
    gatekeeper = gator_results(examples_build / "gatekeeper", EXAMPLES / "clients")
    assert set(gatekeeper) <= set(decisions)
    for client, decision in decisions.items():
        for action in ACTIONS:
            assert gatekeeper.get(client, {}).get(action, set()) == opa_entries(decision, action), (
                client,
                action,
            )
    # Not a vacuous comparison: the examples draw denials, a warning, a dryrun finding and fail closed.
    assert {a for found in gatekeeper.values() for a in found} == {"deny", "warn", "dryrun"}
    assert ("other-team/inventory-ui") in gatekeeper


def test_gator_reports_malformed_clients_like_opa(examples_build: Path, tmp_path: Path, cli: Cli) -> None:
    clients = [
        {"metadata": {"name": "no-spec", "namespace": "team-a"}},
        {"metadata": {"name": "string-list", "namespace": "team-a"}, "spec": {"grantTypes": "implicit"}},
        {"metadata": {"name": "enum", "namespace": "team-a"}, "spec": {"applicationType": "desktop"}},
        {"metadata": {"name": "no-namespace"}, "spec": {}},
        {
            "metadata": {"name": "live", "namespace": "team-a", "uid": "1", "annotations": {"a": "b"}},
            "spec": {},
        },
    ]
    documents = [{"apiVersion": corpus.API_VERSION, "kind": "AuthClient", **c} for c in clients]
    path = tmp_path / "clients.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    checked = cli("check", "--bundle", examples_build / "bundle.tar.gz", path, "--format", "json")
    decisions = {r["client"]: r for r in json.loads(checked.stdout)["results"]}
    gatekeeper = gator_results(examples_build / "gatekeeper", path)
    for client, decision in decisions.items():
        assert gatekeeper[client]["deny"] == opa_entries(decision, "deny"), client
    for name in ("no-spec", "string-list", "enum"):
        assert {f for _, f, _ in gatekeeper[f"team-a/{name}"]["deny"]} == {"schema"}
    # Server-set metadata (uid, annotations) is not a schema violation; the client is merely ungoverned.
    assert {f for _, f, _ in gatekeeper["team-a/live"]["deny"]} == {"targets"}


def test_deleting_a_client_is_never_denied(examples_build: Path, tmp_path: Path) -> None:
    """Gatekeeper may be sent DELETE requests (with the old object as object): never a violation."""
    client = {
        "apiVersion": corpus.API_VERSION,
        "kind": "AuthClient",
        "metadata": {"name": "gone", "namespace": "other-team"},
        "spec": {"grantTypes": "implicit"},
    }

    def review(operation: str) -> dict[str, Any]:
        request = {
            "uid": "1",
            "kind": {"group": "auth.nauthera.io", "version": "v1alpha1", "kind": "AuthClient"},
            "operation": operation,
            "name": "gone",
            "namespace": "other-team",
            "object": client,
            "oldObject": client,
        }
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}

    shutil.copy(
        examples_build / "gatekeeper/templates/nautheraauthclientgoverned.yaml", tmp_path / "template.yaml"
    )
    shutil.copy(examples_build / "gatekeeper/constraints/governed.yaml", tmp_path / "constraint.yaml")
    (tmp_path / "delete.yaml").write_text(yaml.safe_dump(review("DELETE")))
    (tmp_path / "create.yaml").write_text(yaml.safe_dump(review("CREATE")))
    suite = {
        "apiVersion": "test.gatekeeper.sh/v1alpha1",
        "kind": "Suite",
        "tests": [
            {
                "name": "delete",
                "template": "template.yaml",
                "constraint": "constraint.yaml",
                "cases": [
                    {"name": "delete", "object": "delete.yaml", "assertions": [{"violations": "no"}]},
                    {"name": "create", "object": "create.yaml", "assertions": [{"violations": 1}]},
                ],
            }
        ],
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    run = _tool("gator", "verify", "suite.yaml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


# --- What is generated --------------------------------------------------------------------------------


def _templates(build: Path) -> dict[str, dict[str, Any]]:
    return {
        t["spec"]["crd"]["spec"]["names"]["kind"]: t for t in _load_all_dir(build / "gatekeeper/templates")
    }


def _load_all_dir(folder: Path) -> list[Any]:
    return [doc for path in sorted(folder.rglob("*.yaml")) for doc in _load_all(path)]


def test_gatekeeper_folder_holds_only_objects_to_apply(examples_build: Path) -> None:
    kinds = [(d["apiVersion"], d["kind"]) for d in _load_all_dir(examples_build / "gatekeeper")]
    assert sorted(kinds) == sorted(
        [("templates.gatekeeper.sh/v1", "ConstraintTemplate")] * 2
        + [("constraints.gatekeeper.sh/v1beta1", POLICY_KIND)] * 8
        + [("constraints.gatekeeper.sh/v1beta1", GOVERNED_KIND)]
    )
    assert {p.parent.name for p in (examples_build / "gatekeeper").rglob("*.yaml")} == {
        "templates",
        "constraints",
    }


def test_templates_are_rego_v1_with_the_shared_library(examples_build: Path) -> None:
    lib = (REPO / "rego_templates/checks.rego.j2").read_text()
    for kind, template in _templates(examples_build).items():
        assert template["metadata"]["name"] == kind.lower()
        (target,) = template["spec"]["targets"]
        assert target["target"] == "admission.k8s.gatekeeper.sh"
        assert "rego" not in target and "libs" not in target  # the legacy fields are Rego v0 only
        (code,) = target["code"]
        assert code["engine"] == "Rego"
        source = code["source"]
        assert source["version"] == "v1"
        (library,) = source["libs"]
        # The library is the shared checks template, rendered for Gatekeeper's lib namespace.
        assert library == lib.replace("${ lib_package }", "lib.nauthera")
        for module in (source["rego"], library):
            assert "import rego.v1" not in module
            assert "http.send" not in module
            assert set(re.findall(r"\bdata\.[A-Za-z_.]+", module)) <= {"data.lib.nauthera"}
        assert "input.review.object" in source["rego"]
        assert not re.search(
            r"input\.review\.(operation|userInfo|oldObject)\b(?! == \"DELETE\")", source["rego"]
        )


def test_template_rego_passes_opa_check_strict_fmt_and_regal(examples_build: Path, tmp_path: Path) -> None:
    """The Rego as shipped in the templates (rego + libs) is Rego v1, strict, formatted and lint-clean."""
    modules = gatekeeper_regos()
    shipped = {
        kind.lower(): template["spec"]["targets"][0]["code"][0]["source"]
        for kind, template in _templates(examples_build).items()
    }
    assert {name: source["rego"] for name, source in shipped.items()} == {
        path.split("/")[0]: text for path, text in modules.items() if not path.startswith("lib/")
    }
    assert all(source["libs"] == [modules["lib/nauthera/checks.rego"]] for source in shipped.values())
    for path, text in modules.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    checked = _tool("opa", "check", "--strict", tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = _tool("opa", "fmt", "--list", tmp_path)
    assert formatted.returncode == 0 and formatted.stdout.strip() == "", f"not formatted: {formatted.stdout}"
    linted = _tool(
        "regal", "lint", "--config-file", REPO / ".regal/config.yaml", "--format", "json", tmp_path
    )
    assert json.loads(linted.stdout).get("violations", []) == [], linted.stdout
    assert linted.returncode == 0


def _closed(schema: Any) -> Any:
    """The OpenAPI schema with every object closed: a value it accepts loses nothing to pruning."""
    if not isinstance(schema, dict):
        return schema
    result = {key: _closed(value) for key, value in schema.items() if key != "description"}
    if schema.get("type") == "object" and "properties" in schema:
        result["additionalProperties"] = False
    if isinstance(schema.get("properties"), dict):
        result["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
    return result


def _assert_parameters_fit(build: Path) -> None:
    schemas = {
        kind: _closed(t["spec"]["crd"]["spec"]["validation"]["openAPIV3Schema"])
        for kind, t in _templates(build).items()
    }
    for constraint in _load_all_dir(build / "gatekeeper/constraints"):
        jsonschema.validate(constraint["spec"]["parameters"], schemas[constraint["kind"]])


def test_parameter_schemas_are_typed_and_fit_the_parameters(examples_build: Path) -> None:
    schema = _templates(examples_build)[POLICY_KIND]["spec"]["crd"]["spec"]["validation"]["openAPIV3Schema"]
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(schema)

    def typed(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node or "items" in node or "additionalProperties" in node or "enum" in node:
                assert "type" in node, node
            for value in node.values():
                typed(value)

    typed(schema)
    assert schema["properties"]["token"]["additionalProperties"]["properties"]["max_ns"]["type"] == "integer"
    _assert_parameters_fit(examples_build)


def test_constraints_carry_the_policy_parameters_and_action(examples_build: Path) -> None:
    policies, _ = analyse([EXAMPLES / "policies"])
    by_id = {p.id: p for p in policies}
    for constraint in _load_all_dir(examples_build / "gatekeeper/constraints"):
        if constraint["kind"] != POLICY_KIND:
            governed = constraint["spec"]
            assert governed["enforcementAction"] == "deny"
            assert governed["parameters"]["fail_closed"] is True
            assert [p["id"] for p in governed["parameters"]["policies"]] == sorted(by_id)
            continue
        policy = by_id[constraint["spec"]["parameters"]["id"]]
        assert constraint["spec"]["parameters"] == policy_parameters(policy)
        assert constraint["spec"]["enforcementAction"] == policy.enforcement_action
        assert constraint["metadata"]["annotations"] == {"auth.nauthera.io/policy": policy.id}
    generated = _load_all_dir(examples_build / "gatekeeper")
    assert all(d["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "nauthera"} for d in generated)


def test_match_carries_only_what_gatekeeper_means_the_same_way(examples_build: Path) -> None:
    constraints = {c["metadata"]["name"]: c for c in _load_all_dir(examples_build / "gatekeeper/constraints")}
    web = constraints["security-web-apps-policy"]["spec"]["match"]
    assert web == {
        "kinds": [{"apiGroups": ["auth.nauthera.io"], "kinds": ["AuthClient"]}],
        "scope": "Namespaced",
        "namespaces": ["team-*"],
        "excludedNamespaces": ["team-sandbox"],
        "labelSelector": {
            "matchLabels": {"tier": "prod"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}],
        },
    }
    baseline = constraints["security-prod-baseline"]["spec"]["match"]
    assert "namespaces" not in baseline
    assert baseline["labelSelector"]["matchExpressions"] == [
        {"key": "env", "operator": "NotIn", "values": ["dev", "test"]}
    ]
    assert constraints["nauthera-authclient-governed"]["spec"]["match"] == {
        "kinds": [{"apiGroups": ["auth.nauthera.io"], "kinds": ["AuthClient"]}]
    }


def _policies(tmp_path: Path, specs: dict[tuple[str, str], dict[str, Any]]) -> list[Any]:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    for (namespace, name), spec in specs.items():
        document = {
            "apiVersion": corpus.API_VERSION,
            "kind": "AuthPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        (folder / f"{namespace}_{name}.yaml").write_text(yaml.safe_dump(document))
    policies, diagnostics = analyse([folder])
    assert not [d for d in diagnostics if d.level.value == "error"], diagnostics
    return policies


def test_untranslatable_targets_stay_in_the_rego_only(tmp_path: Path) -> None:
    policies = _policies(
        tmp_path,
        {
            ("s", "exact"): {"targets": {"namespaces": ["team-a", "ops*", "*"]}},
            ("s", "middle"): {
                "targets": {"namespaces": ["team-*-prod"], "excludedNamespaces": ["*-sandbox"]}
            },
            ("s", "dots"): {"targets": {"namespaces": ["team.a"], "excludedNamespaces": ["Team-*"]}},
            ("s", "odd-labels"): {"targets": {"clientSelector": {"matchLabels": {"tier": "has space"}}}},
            ("s", "odd-key"): {
                "targets": {
                    "clientSelector": {"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}
                }
            },
            ("s", "empty"): {"targets": {"namespaces": [], "excludedNamespaces": []}},
        },
    )
    match = {p.name: policy_match(p) for p in policies}
    assert match["exact"]["namespaces"] == ["*", "ops*", "team-a"]
    for name in ("middle", "dots", "odd-labels", "odd-key", "empty"):
        assert set(match[name]) == {"kinds", "scope"}, name
    # The Rego still sees every target: the Constraint's parameters carry them all.
    middle = next(p for p in policies if p.name == "middle")
    targets = policy_parameters(middle)["targets"]
    assert targets["namespaces"]["patterns"] == ["team-*-prod"]
    assert targets["excluded_namespaces"]["patterns"] == ["*-sandbox"]


def test_constraint_names_are_unique_valid_and_stable(tmp_path: Path) -> None:
    long = "x" * 80
    policies = _policies(
        tmp_path,
        {
            ("a-b", "c"): {},
            ("a", "b-c"): {},
            ("security", "web.apps"): {},
            ("security", long): {},
            ("security", "short"): {},
        },
    )
    names = constraint_names(policies)
    assert len(set(names.values())) == len(policies)
    assert names["security/short"] == "security-short"
    assert names["security/web.apps"] == "security-web.apps"
    assert names["a-b/c"] != names["a/b-c"] and names["a-b/c"].startswith("a-b-c-")
    for name in names.values():
        assert len(name) <= MAX_NAME and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
    assert constraint_names(list(reversed(policies))) == names
    # Adding an unrelated policy does not rename existing Constraints.
    more = _policies(tmp_path, {("security", "another"): {}})
    assert {k: v for k, v in constraint_names(more).items() if k in names} == names


def test_strings_keep_their_type_in_go_yaml(tmp_path: Path) -> None:
    """kubectl and gator read YAML with go-yaml, where `y` is a boolean and `0o17` a number: the
    Constraints are JSON documents, which both read with a JSON decoder, so every string stays one."""
    odd = ["y", "n", "on", "NO", "1e3", "0x1F", "0o17", "null", "~", "=", "<<", "2001-01-01", "+1", ".inf"]
    policies = _policies(
        tmp_path,
        {
            ("sec", "odd"): {
                "targets": {"namespaces": ["0o17"], "clientSelector": {"matchLabels": {"y": "n"}}},
                "allowedScopes": odd,
            }
        },
    )
    out = tmp_path / "build"
    assert compile_policies(CompileOptions(paths=[tmp_path / "policies"], out=out, target="gatekeeper")).ok
    constraint = (out / "gatekeeper/constraints/policy-sec-odd.yaml").read_text()
    assert constraint.startswith("{") and '"y"' in constraint and '"0o17"' in constraint
    assert yaml.safe_load(constraint) == json.loads(constraint)
    client = {
        "apiVersion": corpus.API_VERSION,
        "kind": "AuthClient",
        "metadata": {"name": "c", "namespace": "0o17", "labels": {"y": "n"}},
        "spec": {"scopes": [*odd, "not-allowed"]},
    }
    (tmp_path / "client.json").write_text(json.dumps(client))
    results = gator_results(out / "gatekeeper", tmp_path / "client.json")  # the Constraint is accepted
    assert results == {
        "0o17/c": {
            "deny": {
                (
                    policies[0].id,
                    "allowedScopes",
                    f'scope "not-allowed" is not allowed by sec/odd (allowed: {", ".join(odd)})',
                )
            }
        }
    }


def test_output_is_deterministic(tmp_path: Path) -> None:
    policies, _ = analyse([EXAMPLES / "policies"])
    assert render_gatekeeper(policies, True) == render_gatekeeper(list(reversed(policies)), True)
    assert render_gatekeeper_suites(policies) == render_gatekeeper_suites(list(reversed(policies)))
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        assert compile_policies(
            CompileOptions(paths=[EXAMPLES / "policies"], out=out, target="gatekeeper")
        ).ok
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


# --- The command line ---------------------------------------------------------------------------------


def test_compile_target_selects_and_replaces_outputs(tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "build"
    gatekeeper = cli(
        "compile", EXAMPLES / "policies", "--out", out, "--target", "gatekeeper", "--format", "json"
    )
    assert gatekeeper.returncode == 0, gatekeeper.stderr
    summary = json.loads(gatekeeper.stdout)
    assert summary["ok"] and summary["bundle"] is None and summary["gatekeeper"] == str(out / "gatekeeper")
    assert sorted(p.name for p in out.iterdir()) == ["gatekeeper", "tests"]
    assert sorted(p.name for p in (out / "tests").iterdir()) == ["gatekeeper"]

    both = cli("compile", EXAMPLES / "policies", "--out", out, "--target", "all")
    assert both.returncode == 0 and "bundle.tar.gz" in both.stdout and "gatekeeper" in both.stdout
    assert sorted(p.name for p in out.iterdir()) == ["bundle.tar.gz", "gatekeeper", "tests"]
    assert sorted(p.name for p in (out / "tests").iterdir()) == ["gatekeeper", "opa"]

    # An OPA-only compile removes the Gatekeeper outputs, which would otherwise be stale.
    assert cli("compile", EXAMPLES / "policies", "--out", out).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["bundle.tar.gz", "tests"]

    unknown = cli("compile", EXAMPLES / "policies", "--out", out, "--target", "kyverno")
    assert unknown.returncode == 2


def test_failed_compile_writes_no_gatekeeper_output(tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "build"
    assert cli("compile", EXAMPLES / "policies", "--out", out, "--target", "all").returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    broken = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "policies", broken)
    (broken / "bad.yaml").write_text(
        "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: b, namespace: s}\n"
        "spec: {allowedScope: [openid]}\n"
    )
    failed = cli("compile", broken, "--out", out, "--target", "gatekeeper")
    assert failed.returncode == 1 and "nothing was written" in failed.stdout
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_default_allow_turns_off_only_the_fail_closed_rule(tmp_path: Path) -> None:
    out = tmp_path / "build"
    options = CompileOptions(paths=[EXAMPLES / "policies"], out=out, target="all", fail_closed=False)
    assert compile_policies(options).ok
    results = gator_results(out / "gatekeeper", EXAMPLES / "clients")
    assert "other-team/inventory-ui" not in results
    decisions = evaluate(out / "bundle.tar.gz", _load_all_dir(EXAMPLES / "clients"))
    assert not any(v["field"] == "targets" for d in decisions for v in d["violations"])
    assert run_gator_verify(out).passed


def test_nauthera_test_runs_gator_verify(tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "build"
    run = cli("test", EXAMPLES / "policies", "--out", out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tests/gatekeeper/security-web-apps-policy/suite.yaml" in run.stdout
    assert "PASS" in run.stdout
    only = cli("test", EXAMPLES / "policies", "--out", tmp_path / "gk", "--target", "gatekeeper")
    assert only.returncode == 0 and "coverage" not in only.stdout and "suite.yaml" in only.stdout


def test_a_failing_gator_suite_fails(examples_build: Path, tmp_path: Path) -> None:
    out = tmp_path / "build"
    shutil.copytree(examples_build, out)
    allowed = out / "tests/gatekeeper/security-web-apps-policy/samples/example_allowed.yaml"
    client = yaml.safe_load(allowed.read_text())
    client["spec"]["grantTypes"] = ["implicit"]
    allowed.write_text(yaml.safe_dump(client))
    run = run_gator_verify(out)
    assert not run.passed and "FAIL" in run.output


# --- Parity on a generated corpus ---------------------------------------------------------------------


@dataclass
class SetOutcome:
    cases: int = 0
    mismatches: list[str] = field(default_factory=list)
    entries: dict[tuple[str, str], int] = field(default_factory=dict)
    match_keys: set[str] = field(default_factory=set)
    rego_only_namespaces: int = 0


def _parity_set(index: int, root: Path) -> SetOutcome:
    rng = random.Random(PARITY_SEED + index)
    policies = corpus.policy_set(rng, index)
    clients = corpus.clients(rng, policies, PARITY_CLIENTS)
    folder = root / f"set-{index:02d}"
    (folder / "policies").mkdir(parents=True)
    for number, policy in enumerate(policies):
        (folder / "policies" / f"{number}.yaml").write_text(yaml.safe_dump(policy))
    out = folder / "build"
    fail_closed = index % 5 != 4  # every fifth set compiles with --default-allow
    compiled = compile_policies(
        CompileOptions(paths=[folder / "policies"], out=out, target="all", fail_closed=fail_closed)
    )
    assert compiled.ok, [str(d) for d in compiled.diagnostics]
    _assert_parameters_fit(out)
    decisions = evaluate(out / "bundle.tar.gz", clients)
    # JSON, one client per file: the harness must not depend on how YAML readers type `y` or `0o17`.
    (folder / "clients").mkdir()
    for number, client in enumerate(clients):
        (folder / "clients" / f"{number:03d}.json").write_text(json.dumps(client))
    gatekeeper = gator_results(out / "gatekeeper", folder / "clients")
    outcome = SetOutcome(cases=len(clients))
    for client, decision in zip(clients, decisions, strict=True):
        key = f"{client['metadata'].get('namespace', '?')}/{client['metadata'].get('name', '?')}"
        for action in ACTIONS:
            expected, found = opa_entries(decision, action), gatekeeper.get(key, {}).get(action, set())
            if expected != found:
                outcome.mismatches.append(
                    f"set {index} {key} {action}: OPA only {expected - found}, gator only {found - expected}"
                    f"\n  client: {json.dumps(client)}"
                )
            for _, entry_field, _ in expected:
                outcome.entries[action, entry_field] = outcome.entries.get((action, entry_field), 0) + 1
    for constraint in _load_all_dir(out / "gatekeeper/constraints"):
        if constraint["kind"] == POLICY_KIND:
            match = constraint["spec"]["match"]
            outcome.match_keys.update(match)
            targets = constraint["spec"]["parameters"]["targets"]
            outcome.rego_only_namespaces += "namespaces" in targets and "namespaces" not in match
    return outcome


@pytest.mark.slow
def test_gatekeeper_and_opa_decide_identically_on_a_generated_corpus(tmp_path: Path) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes: Sequence[SetOutcome] = list(
            pool.map(lambda i: _parity_set(i, tmp_path), range(PARITY_SETS))
        )
    elapsed = time.monotonic() - started
    cases = sum(o.cases for o in outcomes)
    mismatches = [m for o in outcomes for m in o.mismatches]
    assert not mismatches, f"{len(mismatches)} mismatches in {cases} cases:\n" + "\n".join(mismatches[:20])
    assert cases >= 1000
    # The corpus must reach every rule under every action, and both sides of the match translation.
    entries: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        for key, count in outcome.entries.items():
            entries[key] = entries.get(key, 0) + count
    rule_fields = {
        "token.accessTokenTTL",
        "token.refreshTokenTTL",
        "token.idTokenTTL",
        "allowedGrantTypes",
        "enforcePKCE",
        "allowedScopes",
        "requiredScopes",
        "allowedResponseTypes",
        "allowedTokenEndpointAuthMethods",
        "redirectUris.requireHttps",
        "redirectUris.allowWildcards",
        "redirectUris.allowedHosts",
        "redirectUris.allowedSchemes",
        "redirectUris.forbidFragments",
        "senderConstrainedTokens",
        "requirePushedAuthorizationRequests",
        "allowedSigningAlgorithms",
    }
    for action in ACTIONS:
        missing = {f for f in rule_fields if not entries.get((action, f))}
        assert not missing, f"the corpus never produced {action} findings for {missing}"
    assert entries.get(("deny", "schema")) and entries.get(("deny", "targets"))
    keys = set().union(*(o.match_keys for o in outcomes))
    assert {"namespaces", "excludedNamespaces", "labelSelector"} <= keys
    assert sum(o.rego_only_namespaces for o in outcomes) > 0
    total = sum(entries.values())
    print(f"\nparity: {cases} cases in {PARITY_SETS} policy sets, {elapsed:.1f}s, {total} findings compared")
