"""The command line as users and CI run it: ``python -m nauthera`` in a subprocess (SPEC §4, §5).

Exit codes are 0 success, 1 findings, 2 usage or I/O errors; diagnostics are
``path:line:column: level: message [code]``; output formats are machine-readable; a failed compile
writes nothing. Every invocation here also asserts that no Python traceback reached the user.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from nauthera.engines.tools import find_tool
from nauthera.errors import ToolNotFoundError

from ..harness.cli import nauthera, write

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_POLICIES = REPO / "examples" / "policies"
EXAMPLE_CLIENTS = REPO / "examples" / "clients"

TEXT_LINE = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>[0-9]+):(?P<column>[0-9]+): (?P<level>error|warning|note): "
    r"(?P<message>.+) \[(?P<code>[a-z0-9-]+)\]$"
)
GITHUB_LINE = re.compile(
    r"^::(?P<command>error|warning|notice) file=(?P<file>[^,]+),line=(?P<line>[0-9]+),"
    r"col=(?P<column>[0-9]+)(?:,title=(?P<title>[^:]+))?::(?P<message>.+)$"
)

API = "apiVersion: auth.nauthera.io/v1alpha1\n"
POLICY_HEADER = API + "kind: AuthPolicy\nmetadata:\n  name: {name}\n  namespace: security\n"
#: Two errors, one per document: an unknown field at 7:3 and a day-based duration at 16:21.
BAD_POLICY = (
    POLICY_HEADER.format(name="bad")
    + "spec:\n  allowedScope: [openid]\n---\n"
    + POLICY_HEADER.format(name="bad-ttl")
    + 'spec:\n  token:\n    accessTokenTTL: "7d"\n'
)
BAD_LINES = (
    'policies/bad.yaml:7:3: error: unknown field "allowedScope" in spec; did you mean "allowedScopes"? '
    "[unknown-field]",
    "policies/bad.yaml:16:21: error: token.accessTokenTTL '7d' is not a valid duration: ",
)
#: One warning (allowLoopback without requireHttps, at 8:5), no errors.
WARN_POLICY = POLICY_HEADER.format(name="warn") + "spec:\n  redirectUris:\n    allowLoopback: true\n"
GOOD_POLICY = POLICY_HEADER.format(name="good") + "spec:\n  allowedGrantTypes: [authorization_code]\n"


def manifest(bundle: Path) -> dict[str, Any]:
    with tarfile.open(bundle, "r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("/") == ".manifest")
        handle = tar.extractfile(member)
        assert handle is not None
        loaded: dict[str, Any] = json.loads(handle.read())
    return loaded


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def bad_dir(tmp_path: Path) -> Path:
    write(tmp_path, {"policies/bad.yaml": BAD_POLICY})
    return tmp_path


# --- compile: success -------------------------------------------------------------------------------


def test_compile_examples_succeeds(tmp_path: Path) -> None:
    completed = nauthera("compile", EXAMPLE_POLICIES, "--out", tmp_path / "out", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    bundle = tmp_path / "out" / "bundle.tar.gz"
    assert bundle.is_file()
    assert str(bundle) in completed.stdout
    assert "0 errors" in completed.stdout
    assert "nauthera" in manifest(bundle)["roots"]
    written = sum(
        1
        for path in EXAMPLE_POLICIES.glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc and doc.get("kind") == "AuthPolicy"
    )
    assert manifest(bundle)["metadata"]["nauthera"]["policies"] == written
    assert f"compiled {written} policies" in completed.stdout


def test_revision_option_reaches_the_manifest(tmp_path: Path) -> None:
    completed = nauthera(
        "compile", EXAMPLE_POLICIES, "--out", "out", "--revision", "abc", "--format", "json", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["revision"] == "abc"
    assert manifest(tmp_path / "out" / "bundle.tar.gz")["revision"] == "abc"


def test_default_revision_is_derived_from_content(tmp_path: Path) -> None:
    write(tmp_path, {"p/good.yaml": GOOD_POLICY})
    first = json.loads(nauthera("compile", "p", "--out", "a", "--format", "json", cwd=tmp_path).stdout)
    second = json.loads(nauthera("compile", "p", "--out", "b", "--format", "json", cwd=tmp_path).stdout)
    assert first["revision"] == second["revision"]
    assert first["revision"] not in ("", "abc")
    assert manifest(tmp_path / "a" / "bundle.tar.gz")["revision"] == first["revision"]


# --- compile: findings ------------------------------------------------------------------------------


def test_bad_input_prints_text_diagnostics_and_exits_1(bad_dir: Path) -> None:
    completed = nauthera("compile", "policies", "--out", "out", cwd=bad_dir)
    assert completed.returncode == 1
    lines = completed.stdout.splitlines()
    assert lines[0] == BAD_LINES[0]
    assert lines[1].startswith(BAD_LINES[1])
    assert lines[1].endswith("[invalid-duration]")
    for line in lines[:2]:
        match = TEXT_LINE.match(line)
        assert match, line
        assert match["file"] == "policies/bad.yaml"
        assert match["level"] == "error"
    assert len(lines) == 3, "two diagnostics and a summary"
    assert "2 errors" in lines[2]
    assert not (bad_dir / "out").exists()


def test_all_problems_across_files_are_reported(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p/a.yaml": BAD_POLICY,
            "p/b.yaml": "a: b: c\n",
            "p/c.yaml": POLICY_HEADER.format(name="c") + "spec:\n  allowedGrantTypes: [implicitt]\n",
        },
    )
    completed = nauthera("compile", "p", "--out", "out", cwd=tmp_path)
    assert completed.returncode == 1
    found = [TEXT_LINE.match(line) for line in completed.stdout.splitlines()]
    codes = sorted((m["file"], m["code"]) for m in found if m)
    assert codes == [
        ("p/a.yaml", "invalid-duration"),
        ("p/a.yaml", "unknown-field"),
        ("p/b.yaml", "yaml-syntax"),
        ("p/c.yaml", "schema-enum"),
    ]


def test_json_format(bad_dir: Path) -> None:
    completed = nauthera("compile", "policies", "--out", "out", "--format", "json", cwd=bad_dir)
    assert completed.returncode == 1
    document = json.loads(completed.stdout)
    assert {"ok", "diagnostics", "bundle", "revision"} <= set(document)
    assert document["ok"] is False
    assert document["bundle"] is None
    assert len(document["diagnostics"]) == 2
    for entry in document["diagnostics"]:
        assert set(entry) == {"level", "file", "line", "column", "code", "message"}
        assert entry["level"] == "error"
        assert entry["file"] == "policies/bad.yaml"
        assert isinstance(entry["line"], int)
        assert isinstance(entry["column"], int)
    first = document["diagnostics"][0]
    assert (first["line"], first["column"], first["code"]) == (7, 3, "unknown-field")
    assert 'did you mean "allowedScopes"' in first["message"]


def test_json_format_on_success(tmp_path: Path) -> None:
    write(tmp_path, {"p/warn.yaml": WARN_POLICY})
    completed = nauthera("compile", "p", "--out", "out", "--format", "json", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["ok"] is True
    assert Path(document["bundle"]) == Path("out") / "bundle.tar.gz"
    assert isinstance(document["revision"], str)
    assert document["revision"]
    assert [(d["level"], d["code"], d["line"], d["column"]) for d in document["diagnostics"]] == [
        ("warning", "no-effect", 8, 5)
    ]


def test_sarif_format(bad_dir: Path) -> None:
    completed = nauthera("compile", "policies", "--out", "out", "--format", "sarif", cwd=bad_dir)
    assert completed.returncode == 1
    sarif = json.loads(completed.stdout)
    assert sarif["version"] == "2.1.0"
    (run,) = sarif["runs"]
    rules = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    results = run["results"]
    assert [r["ruleId"] for r in results] == ["unknown-field", "invalid-duration"]
    for result in results:
        assert result["level"] == "error"
        assert result["message"]["text"]
        assert rules[result["ruleIndex"]] == result["ruleId"]
        (location,) = result["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"] == "policies/bad.yaml"
    regions = [r["locations"][0]["physicalLocation"]["region"] for r in results]
    assert [(g["startLine"], g["startColumn"]) for g in regions] == [(7, 3), (16, 21)]


def test_github_format(bad_dir: Path) -> None:
    completed = nauthera("compile", "policies", "--out", "out", "--format", "github", cwd=bad_dir)
    assert completed.returncode == 1
    annotations = [GITHUB_LINE.match(line) for line in completed.stdout.splitlines()]
    found = [m for m in annotations if m]
    assert [(m["command"], m["file"], m["line"], m["column"]) for m in found] == [
        ("error", "policies/bad.yaml", "7", "3"),
        ("error", "policies/bad.yaml", "16", "21"),
    ]
    assert found[0]["title"] == "unknown-field"
    assert 'did you mean "allowedScopes"' in found[0]["message"]


def test_github_format_for_warnings_and_notes(tmp_path: Path) -> None:
    write(tmp_path, {"p/warn.yaml": WARN_POLICY + "---\napiVersion: v1\nkind: ConfigMap\n"})
    completed = nauthera("compile", "p", "--out", "out", "--format", "github", cwd=tmp_path)
    assert completed.returncode == 0
    commands = [m["command"] for m in map(GITHUB_LINE.match, completed.stdout.splitlines()) if m]
    assert commands == ["warning", "notice"]


def test_failed_compile_leaves_previous_output_untouched(tmp_path: Path) -> None:
    write(tmp_path, {"good/p.yaml": GOOD_POLICY, "bad/p.yaml": BAD_POLICY})
    assert nauthera("compile", "good", "--out", "out", cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path / "out")
    assert "bundle.tar.gz" in before
    siblings = sorted(p.name for p in tmp_path.iterdir())

    completed = nauthera("compile", "bad", "--out", "out", "--revision", "other", cwd=tmp_path)
    assert completed.returncode == 1
    assert snapshot(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings, "no staging folder left behind"


def test_failed_compile_does_not_create_the_output_folder(bad_dir: Path) -> None:
    completed = nauthera("compile", "policies", "--out", "new/out", cwd=bad_dir)
    assert completed.returncode == 1
    assert not (bad_dir / "new").exists()


def test_fail_on_warn_turns_a_warning_into_exit_1(tmp_path: Path) -> None:
    write(tmp_path, {"p/warn.yaml": WARN_POLICY})
    relaxed = nauthera("compile", "p", "--out", "relaxed", cwd=tmp_path)
    assert relaxed.returncode == 0
    assert "p/warn.yaml:8:5: warning: " in relaxed.stdout
    assert (tmp_path / "relaxed" / "bundle.tar.gz").is_file()

    strict = nauthera("compile", "p", "--out", "strict", "--fail-on-warn", cwd=tmp_path)
    assert strict.returncode == 1
    assert "p/warn.yaml:8:5: warning: " in strict.stdout
    assert "[no-effect]" in strict.stdout
    assert not (tmp_path / "strict").exists()


def test_fail_on_warn_without_warnings_still_succeeds(tmp_path: Path) -> None:
    write(tmp_path, {"p/good.yaml": GOOD_POLICY})
    assert nauthera("compile", "p", "--out", "out", "--fail-on-warn", cwd=tmp_path).returncode == 0


# --- compile: usage and I/O errors ------------------------------------------------------------------


def test_missing_path_exits_2(tmp_path: Path) -> None:
    completed = nauthera("compile", "nowhere", "--out", "out", cwd=tmp_path)
    assert completed.returncode == 2
    assert "nowhere" in completed.stderr
    assert "no such file or directory" in completed.stderr
    assert completed.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--format", "xml"),
        ("--format", "JSON"),
        ("--target", "bogus"),
    ],
)
def test_unknown_option_values_are_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    completed = nauthera("compile", EXAMPLE_POLICIES, "--out", "out", *args, cwd=tmp_path)
    assert completed.returncode == 2
    assert args[1] in completed.stderr
    assert completed.stdout == "", "no fallback output for an unknown value"
    assert not (tmp_path / "out").exists()


def test_compile_without_out_is_a_usage_error(tmp_path: Path) -> None:
    completed = nauthera("compile", EXAMPLE_POLICIES, cwd=tmp_path)
    assert completed.returncode == 2
    assert "--out" in completed.stderr


# --- no tracebacks, whatever the input --------------------------------------------------------------

BILLION_LAUGHS = "".join(
    f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9 if prev else ['"lol"'] * 9) + "]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)

HOSTILE: dict[str, str | bytes] = {
    "malformed": "a: b: c\n",
    "tab-indented": "a:\n\t- x\n",
    "non-utf8": b"apiVersion: auth.nauthera.io/v1alpha1\nkind: caf\xe9\n",
    "alias-bomb": BILLION_LAUGHS,
    "duplicate-key": POLICY_HEADER.format(name="d") + "spec: {}\nspec: {}\n",
    "non-string-key": POLICY_HEADER.format(name="k") + "spec:\n  1: x\n",
    "nan": POLICY_HEADER.format(name="n") + "spec:\n  enforcePKCE: .nan\n",
    "nested-too-deep": "x: " + "[" * 100 + "]" * 100 + "\n",
    "spec-is-a-list": POLICY_HEADER.format(name="l") + "spec: []\n",
    "metadata-is-a-number": API + "kind: AuthPolicy\nmetadata: 5\nspec: {}\n",
    "kind-is-a-list": "apiVersion: auth.nauthera.io/v1alpha1\nkind: [AuthPolicy]\n",
    "name-is-a-number": "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicy\n"
    "metadata: {name: 5, namespace: s}\nspec: {}\n",
    "expression-is-null": POLICY_HEADER.format(name="e")
    + "spec:\n  targets:\n    clientSelector:\n      matchExpressions: [null]\n",
    "ttl-is-a-number": POLICY_HEADER.format(name="t") + "spec:\n  token:\n    accessTokenTTL: 15\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_a_diagnostic_not_a_crash(tmp_path: Path, name: str) -> None:
    write(tmp_path, {"p/input.yaml": HOSTILE[name]})
    completed = nauthera("compile", "p", "--out", "out", cwd=tmp_path)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    matches = [m for m in map(TEXT_LINE.match, completed.stdout.splitlines()) if m]
    assert any(m["file"] == "p/input.yaml" and m["level"] == "error" for m in matches), completed.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text",
    [
        "base: &b {name: a, namespace: b}\napiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicy\n"
        "metadata: {<<: *b}\nspec: {}\n",
        POLICY_HEADER.format(name="t") + "spec:\n  enforcementAction: !deny x\n",
        POLICY_HEADER.format(name="q") + "spec:\n  allowedScopes: [=]\n",
    ],
    ids=["merge-key", "custom-tag", "bare-equals"],
)
def test_unconstructible_yaml_is_not_a_crash(tmp_path: Path, text: str) -> None:
    write(tmp_path, {"p/input.yaml": text})
    completed = nauthera("compile", "p", "--out", "out", cwd=tmp_path)
    assert completed.returncode in (0, 1)
    assert completed.stdout.strip()


def test_very_deep_nesting_is_a_diagnostic_not_a_segfault(tmp_path: Path) -> None:
    write(tmp_path, {"p/deep.yaml": "- " * 50_000 + "x\n"})
    completed = nauthera("compile", "p", "--out", "out", cwd=tmp_path, default_stack=True)
    assert completed.returncode == 1, f"exit {completed.returncode}"
    assert "[yaml-too-large]" in completed.stdout


# --- check --------------------------------------------------------------------------------------------


def test_check_json_shape_and_denied_exit_1(tmp_path: Path, example_bundle: Path) -> None:
    completed = nauthera(
        "check", "--bundle", example_bundle, EXAMPLE_CLIENTS, "--format", "json", cwd=tmp_path
    )
    assert completed.returncode == 1, completed.stderr
    results = json.loads(completed.stdout)["results"]
    client_files = sorted(EXAMPLE_CLIENTS.glob("*.yaml"))
    assert len(results) == len(client_files)
    for result in results:
        assert {"client", "source", "allowed", "violations", "warnings", "dryrun"} <= set(result)
        assert re.fullmatch(r"[a-z0-9-]+/[a-z0-9-]+", result["client"])
        path, _, line = result["source"].rpartition(":")
        assert Path(path).parent == EXAMPLE_CLIENTS
        source_lines = Path(path).read_text(encoding="utf-8").splitlines()
        assert source_lines[int(line) - 1].startswith("apiVersion:"), "source points at the document"
        assert isinstance(result["allowed"], bool)
        assert result["allowed"] == (result["violations"] == [])
        for entry in result["violations"] + result["warnings"] + result["dryrun"]:
            assert set(entry) == {"policy", "field", "message"}
    by_client = {r["client"]: r for r in results}
    assert by_client["team-a/shop-frontend"]["allowed"] is True
    ungoverned = by_client["other-team/inventory-ui"]
    assert ungoverned["allowed"] is False
    assert [(v["policy"], v["field"]) for v in ungoverned["violations"]] == [(None, "targets")]
    assert [d["field"] for d in by_client["team-labs/chat-prototype"]["dryrun"]] == ["token.accessTokenTTL"]
    assert [w["policy"] for w in by_client["team-a/lobby-display"]["warnings"]] == [
        "security/device-flow-warn"
    ]


def test_check_exit_0_when_every_client_is_allowed(tmp_path: Path, example_bundle: Path) -> None:
    clients = [EXAMPLE_CLIENTS / "web-shop-ok.yaml", EXAMPLE_CLIENTS / "backend-orders-ok.yaml"]
    completed = nauthera("check", "--bundle", example_bundle, *clients, "--format", "json", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(completed.stdout)["results"]
    assert [r["client"] for r in results] == ["team-a/shop-frontend", "team-a/orders-sync"]
    assert all(r["allowed"] for r in results)


def test_check_text_names_each_client_and_verdict(tmp_path: Path, example_bundle: Path) -> None:
    client = EXAMPLE_CLIENTS / "spa-implicit-grant.yaml"
    completed = nauthera("check", "--bundle", example_bundle, client, cwd=tmp_path)
    assert completed.returncode == 1
    assert "team-b/legacy-dashboard" in completed.stdout
    assert "DENIED" in completed.stdout
    assert "allowedGrantTypes" in completed.stdout
    assert '"implicit"' in completed.stdout


def test_check_source_is_relative_to_the_path_given(tmp_path: Path, example_bundle: Path) -> None:
    write(
        tmp_path,
        {
            "c/two.yaml": "# leading comment\n"
            "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthClient\nmetadata: {name: a, namespace: x}\n"
            "spec: {}\n---\n"
            "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthClient\nmetadata: {name: b, namespace: x}\n"
            "spec: {}\n"
        },
    )
    completed = nauthera("check", "--bundle", example_bundle, "c", "--format", "json", cwd=tmp_path)
    results = json.loads(completed.stdout)["results"]
    assert [(r["client"], r["source"]) for r in results] == [("x/a", "c/two.yaml:2"), ("x/b", "c/two.yaml:7")]
    assert completed.returncode == 1, "ungoverned clients are denied (fail closed)"


def test_check_missing_bundle_exits_2(tmp_path: Path) -> None:
    completed = nauthera("check", "--bundle", "nope.tar.gz", EXAMPLE_CLIENTS, cwd=tmp_path)
    assert completed.returncode == 2
    assert "nope.tar.gz" in completed.stderr


def test_check_missing_client_path_exits_2(tmp_path: Path, example_bundle: Path) -> None:
    completed = nauthera("check", "--bundle", example_bundle, "nowhere", cwd=tmp_path)
    assert completed.returncode == 2
    assert "nowhere" in completed.stderr


def test_check_unknown_format_is_a_usage_error(tmp_path: Path, example_bundle: Path) -> None:
    completed = nauthera(
        "check", "--bundle", example_bundle, EXAMPLE_CLIENTS, "--format", "xml", cwd=tmp_path
    )
    assert completed.returncode == 2
    assert completed.stdout == ""


@pytest.mark.parametrize(
    "content",
    [
        "a: b: c\n",
        b"x: \xff\n",
        API + "kind: AuthClient\nmetadata: {name: x, namespace: y}\nspec: 5\n",
        "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthClient\n",
    ],
    ids=["malformed", "non-utf8", "spec-is-a-number", "no-metadata"],
)
def test_check_bad_client_input_is_a_finding(
    tmp_path: Path, example_bundle: Path, content: str | bytes
) -> None:
    write(tmp_path, {"c/client.yaml": content})
    completed = nauthera("check", "--bundle", example_bundle, "c", "--format", "json", cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr
    results = json.loads(completed.stdout)["results"]
    reported = "c/client.yaml:" in completed.stderr
    denied = any(not r["allowed"] for r in results)
    assert reported or denied


def test_check_with_missing_opa_exits_2(tmp_path: Path, example_bundle: Path) -> None:
    completed = nauthera(
        "check",
        "--bundle",
        example_bundle,
        EXAMPLE_CLIENTS,
        cwd=tmp_path,
        env={"NAUTHERA_OPA": "/nonexistent"},
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("nauthera: error: ")
    assert "NAUTHERA_OPA" in completed.stderr
    assert "/nonexistent" in completed.stderr


def test_missing_opa_override_mentions_make_tools(tmp_path: Path, example_bundle: Path) -> None:
    completed = nauthera(
        "check",
        "--bundle",
        example_bundle,
        EXAMPLE_CLIENTS,
        cwd=tmp_path,
        env={"NAUTHERA_OPA": "/nonexistent"},
    )
    assert completed.returncode == 2
    assert "make tools" in completed.stderr


def test_opa_not_found_anywhere_mentions_make_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAUTHERA_OPA", raising=False)
    monkeypatch.setattr("nauthera.engines.tools.TOOLS_DIR", tmp_path / "no-tools")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("opa") is None
    with pytest.raises(ToolNotFoundError, match="make tools"):
        find_tool("opa")
