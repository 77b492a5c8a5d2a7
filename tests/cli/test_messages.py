"""Messages, help and docs a person can use (issue 17, items 8 and 14).

Schema messages say counts and limits instead of echoing a huge value; every option of every command
has help; serve and sidecar find the store as `bundle` does; the README names every diagnostic code the
compiler can emit (found in the source, so a new code cannot be forgotten).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import click
import pytest
import requests
from nauthera.cli import main
from nauthera.compile.schema import load_schemas, schema_code

from ..conftest import EXAMPLES
from ..harness.cli import leaf_commands, nauthera, write
from ..harness.processes import free_port, wait_until
from ..harness.processes import nauthera as start_nauthera

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "compiler" / "nauthera"
HEADER = (
    "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicy\n"
    "metadata:\n  name: {name}\n  namespace: security\n"
)


def _policy(name: str, spec: dict[str, object]) -> str:
    return HEADER.format(name=name) + "spec: " + json.dumps(spec) + "\n"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"allowedScopes": [f"scope-{i}" for i in range(20_000)]},
            "spec.allowedScopes has 20000 items; at most 256 are allowed [schema-maxItems]",
        ),
        (
            {"allowedScopes": ["s" * 100_000]},
            "spec.allowedScopes[0] is 100000 characters long; at most 256 are allowed [schema-maxLength]",
        ),
        (
            {"allowedResponseTypes": ["code" * 5_000]},
            'spec.allowedResponseTypes[0] "codecodecodecode…" (20000 characters) does not match the pattern '
            "^(none|(code|token|id_token)( (code|token|id_token))*)$ [schema-pattern]",
        ),
    ],
    ids=["maxItems", "maxLength", "pattern"],
)
def test_schema_messages_give_sizes_and_limits_not_the_value(
    tmp_path: Path, spec: dict[str, object], expected: str
) -> None:
    write(tmp_path, {"p/huge.yaml": _policy("huge", spec)})
    completed = nauthera("compile", "p", "--out", "out", cwd=tmp_path)
    assert completed.returncode == 1
    assert expected in completed.stdout
    assert max(len(line) for line in completed.stdout.splitlines()) < 300


def test_invalid_name_message_states_the_rule_that_is_applied(tmp_path: Path) -> None:
    write(tmp_path, {"p/a.yaml": _policy("My_Policy", {}), "ok/b.yaml": _policy("my.policy.v1", {})})
    completed = nauthera("compile", "p", "--out", "out", cwd=tmp_path)
    assert completed.returncode == 1
    assert (
        "metadata.name 'My_Policy' must be a DNS subdomain: lower-case alphanumerics, '-' and '.', "
        "starting and ending with an alphanumeric, at most 253 characters [invalid-name]"
    ) in completed.stdout
    assert nauthera("compile", "ok", "--out", "out", cwd=tmp_path).returncode == 0


def _commands(group: click.Group) -> list[tuple[str, click.Command]]:
    return [(" ".join(path), command) for path, command in leaf_commands(group)]


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{name} {param.opts[0]}"
        for name, command in _commands(main)
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert missing == []


def test_sidecar_channel_help_says_it_is_where_compiles_are_published() -> None:
    sidecar = dict(_commands(main))["sidecar"]
    (channel,) = [p for p in sidecar.params if p.name == "channel"]
    assert isinstance(channel, click.Option)
    assert "publish" in (channel.help or "")


def test_serve_and_sidecar_read_nauthera_store_like_the_bundle_commands(
    tmp_path: Path, example_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    assert (
        nauthera(
            "bundle",
            "publish",
            example_bundle,
            "--channel",
            "canary",
            cwd=tmp_path,
            env={"NAUTHERA_STORE": str(store)},
        ).returncode
        == 0
    )
    monkeypatch.setenv("NAUTHERA_STORE", str(store))
    for command in (["serve"], ["sidecar", "--source", str(EXAMPLES / "policies")]):
        port = free_port()
        process = start_nauthera(
            *command, "--listen", f"127.0.0.1:{port}", log=tmp_path / f"{command[0]}.log"
        )
        try:
            channels = wait_until(
                lambda port=port: requests.get(f"http://127.0.0.1:{port}/v1/channels", timeout=2).json(),
                30,
                f"{command[0]} to answer",
            )
        finally:
            process.stop()
        assert "canary" in channels, f"{command[0]} did not serve the store named by NAUTHERA_STORE"
    assert not (tmp_path / "bundles").exists()


def _emitted_codes() -> set[str]:
    """Every diagnostic code in the compiler's source: the literal ones, and the code of every keyword
    the CRD schemas use."""
    codes: set[str] = set()
    for source in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Diagnostic":
                code = node.args[2] if len(node.args) > 2 else None
                if isinstance(code, ast.Constant) and isinstance(code.value, str):
                    codes.add(code.value)
    keywords: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for keyword, value in node.items():
                keywords.add(keyword)
                for child in value.values() if keyword == "properties" else [value]:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for schema in load_schemas().values():
        walk(schema.strict)
    return codes | {schema_code(k) for k in keywords - {"properties", "items"}}


def test_readme_and_sarif_know_every_code_the_compiler_can_emit() -> None:
    from nauthera.compile.diagnostics import CODES  # noqa: PLC0415

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`([a-z][a-zA-Z0-9-]+)`", readme))
    emitted = _emitted_codes()
    assert {"yaml-merge-key", "no-policies", "schema-maxItems", "unknown-field"} <= emitted
    assert sorted(emitted - listed) == []
    assert sorted(emitted - set(CODES)) == []
