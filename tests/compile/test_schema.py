"""The CRDs are the schema (compile/schema.py): `status`, written by the operator through the status
subresource, is accepted on any document and never takes part in a decision."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml
from nauthera.compile.schema import client_json_schema, load_schemas
from nauthera.engines.check import evaluate
from nauthera.targets.base import CompileOptions
from nauthera.targets.outputs import compile_policies

from ..harness.examples import EXAMPLES, expected_outcomes

#: What an operator writes (SPEC section 7), plus shapes the CRD would refuse: neither may matter here.
STATUS: dict[str, Any] = {
    "observedGeneration": 3,
    "revision": "0123456789abcdef01234567",
    "policies": ["security/web-apps-policy"],
    "violations": [{"policy": None, "field": "targets", "message": "no AuthPolicy governs it"}],
    "conditions": [{"type": "Compliant", "status": "False", "reason": "Ungoverned", "message": "x"}],
    "somethingNew": {"nested": [1, "two"]},
}


def test_the_crd_status_schema_stays_out_of_the_compilers_schema() -> None:
    for schema in load_schemas().values():
        assert "status" in schema.openapi["properties"], "the CRD describes status"
        assert schema.strict["properties"]["status"] == {"type": "object"}
    assert "observedGeneration" not in str(client_json_schema()), "the bundle ships no status details"


def test_a_status_never_changes_a_decision(tmp_path: Path) -> None:
    compiled = compile_policies(CompileOptions(paths=[EXAMPLES / "policies"], out=tmp_path / "out"))
    assert compiled.ok and compiled.bundle
    clients = [yaml.safe_load((EXAMPLES / "clients" / f).read_text()) for f in expected_outcomes()]
    with_status = [{**copy.deepcopy(c), "status": STATUS} for c in clients]
    plain, reported = evaluate(compiled.bundle, clients), evaluate(compiled.bundle, with_status)
    assert reported == plain
    assert [d["allowed"] for d in plain] == [e.allowed for e in expected_outcomes().values()]
    broken = {**copy.deepcopy(clients[0]), "status": "not an object"}
    (decision,) = evaluate(compiled.bundle, [broken])
    assert [v["field"] for v in decision["violations"]] == ["schema"], "status must still be an object"


def test_policies_exported_with_a_status_compile_to_the_same_bundle(tmp_path: Path) -> None:
    exported = tmp_path / "exported"
    shutil.copytree(EXAMPLES / "policies", tmp_path / "plain")
    exported.mkdir()
    for path in sorted((tmp_path / "plain").glob("*.yaml")):
        policies = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for policy in policies:
            policy["status"] = {"observedGeneration": 1, "governedClients": 2, "conditions": []}
        (exported / path.name).write_text(yaml.safe_dump_all(policies))
    results = [
        compile_policies(CompileOptions(paths=[tmp_path / name], out=tmp_path / f"out-{name}"))
        for name in ("plain", "exported")
    ]
    assert all(r.ok for r in results), [str(d) for r in results for d in r.diagnostics]
    assert results[0].revision == results[1].revision
