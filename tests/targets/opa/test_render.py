"""Render stage: golden Rego, the one literal serializer, and the quality gates on generated Rego."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from nauthera.compile.analysis import analyse
from nauthera.engines.tools import find_tool
from nauthera.targets.opa.bundle import build_bundle
from nauthera.targets.opa.render import build_index, policy_fragment, render_fixture_tests, render_opa
from nauthera.targets.parameters import policy_parameters
from nauthera.targets.rego import rego_literal

from ...conftest import EXAMPLES, REPO

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("NAUTHERA_REGEN_GOLDEN") == "1"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples' Rego modules and fixture tests, written out as files for the engines."""
    policies, _ = analyse([EXAMPLES / "policies"])
    root = tmp_path_factory.mktemp("rego")
    rendered = render_opa(policies, fail_closed=True)
    files = {**{name: rendered.file(name) for name in rendered.files}, **render_fixture_tests(policies)}
    for name, content in files.items():
        if name.endswith(".rego"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)
    return root


def _rego_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.rego"))


def test_generated_rego_matches_golden_files(generated: Path) -> None:
    """Generated Rego changes only on purpose: regenerate with `make golden` and review the diff."""
    for module in _rego_files(generated):
        golden = GOLDEN / module.relative_to(generated)
        if REGENERATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_bytes(module.read_bytes())
        assert golden.exists(), f"no golden file for {module.name}; run `make golden`"
        assert module.read_text() == golden.read_text(), f"{golden} is stale; run `make golden` and review"


def _run(tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_tool(tool)), *map(str, args)], capture_output=True, text=True, check=False, timeout=300
    )


def test_generated_rego_passes_opa_check_strict(generated: Path) -> None:
    result = _run("opa", "check", "--strict", *_rego_files(generated))
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_rego_is_opa_fmt_clean(generated: Path) -> None:
    result = _run("opa", "fmt", "--list", generated)
    assert result.returncode == 0 and result.stdout.strip() == "", f"not formatted: {result.stdout}"


def test_generated_rego_lints_clean_with_regal(generated: Path) -> None:
    result = _run(
        "regal", "lint", "--config-file", REPO / ".regal" / "config.yaml", "--format", "json", generated
    )
    report = json.loads(result.stdout)
    assert report.get("violations", []) == [], json.dumps(report["violations"], indent=1)
    assert result.returncode == 0


@pytest.mark.parametrize(
    "value",
    ['openid"} allow := true #', "a\nb", "\\u0000", "`raw`", "${ lib_package }", "{{ x }}", "ü\u2028"],
)
def test_rego_literal_round_trips_through_opa(value: str, tmp_path: Path) -> None:
    """What the serializer emits is one Rego term equal to the value, whatever the value contains."""
    probe = tmp_path / "probe.rego"
    probe.write_text(f"package probe\n\nvalue := {rego_literal({'v': [value]})}\n")
    evaluated = _run("opa", "eval", "--format", "json", "--data", probe, "data.probe.value")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["result"][0]["expressions"][0]["value"] == {"v": [value]}


def test_policy_values_never_appear_in_rego_source(tmp_path: Path) -> None:
    """SPEC §5: values travel as data; an injection-looking scope changes data.json only."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: p, namespace: security}\n"
        "spec:\n  allowedScopes: ['openid\"} allow := true #', 'zz-marker-scope']\n"
    )
    policies, diagnostics = analyse([policy])
    assert not [d for d in diagnostics if d.level == "error"]
    rendered = render_opa(policies, fail_closed=True)
    for name in rendered.files:
        if name.endswith(".rego"):
            content = rendered.file(name)
            assert b"zz-marker-scope" not in content and b"allow := true #" not in content, name
    assert b"zz-marker-scope" in rendered.file("nauthera_data/data.json")


def test_index_places_each_policy_by_its_most_selective_target() -> None:
    policies, _ = analyse([EXAMPLES / "policies"])
    index = build_index([policy_fragment(p) for p in policies])
    by_id = {p.id: p for p in policies}
    web = index["web"]
    assert "security/web-apps-policy" in web["namespace_prefix"]["team-"]
    assert "security/prod-baseline" in index["*"]["label"]["tier"]["prod"]
    assert all(policy_parameters(by_id[i])["id"] == i for i in by_id)


def test_bundle_tarball_contains_exactly_the_rendered_files(tmp_path: Path) -> None:
    policies, _ = analyse([EXAMPLES / "policies"])
    rendered = render_opa(policies, fail_closed=True).files
    target = tmp_path / "b.tar.gz"
    build_bundle(rendered, {"nauthera": {}}, None, target)
    with tarfile.open(target) as tar:
        assert sorted(tar.getnames()) == sorted([*rendered, ".manifest"])
