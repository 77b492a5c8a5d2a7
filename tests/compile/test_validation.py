"""Validate stage (``nauthera.compile.analysis``), the model it feeds and glob patterns (SPEC §1, §2, §4).

Every diagnostic is checked for level, code, exact 1-based position and the words a user needs. Positions
are computed from the YAML text with ``locate`` so each test states *which* key or value it expects.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from nauthera.compile.analysis import analyse
from nauthera.compile.diagnostics import Diagnostic, Level
from nauthera.compile.loading import load_text
from nauthera.compile.model import Policy, TokenLimit, build_policy, normalise_response_type
from nauthera.compile.patterns import glob_regex, host_globs, literal_prefix, pattern_set, text_globs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
NANOS = 10**9


def policy_text(body: str = "", name: str = "p1", namespace: str = "security") -> str:
    """An AuthPolicy document whose `spec` holds `body` (written at column 1, indented here)."""
    header = policy_header(name, namespace)
    if not body.strip():
        return header + "spec: {}\n"
    return header + "spec:\n" + textwrap.indent(body, "  ")


def policy_header(name: str = "p1", namespace: str = "security") -> str:
    return (
        "apiVersion: auth.nauthera.io/v1alpha1\n"
        "kind: AuthPolicy\n"
        "metadata:\n"
        f"  name: {name}\n"
        f"  namespace: {namespace}\n"
    )


def selector(*expressions: str) -> str:
    lines = "".join(f"      - {e}\n" for e in expressions)
    return "targets:\n  clientSelector:\n    matchExpressions:\n" + lines


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def locate(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based line and column of the `occurrence`-th `needle` in `text`."""
    index = -1
    for _ in range(occurrence):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def run(tmp_path: Path, text: str, name: str = "policy.yaml") -> tuple[Path, list[Policy], list[Diagnostic]]:
    path = write(tmp_path, name, text)
    policies, diagnostics = analyse([path])
    return path, policies, diagnostics


def with_code(diagnostics: Sequence[Diagnostic], code: str) -> list[Diagnostic]:
    return [d for d in diagnostics if d.code == code]


def one(diagnostics: Sequence[Diagnostic], code: str) -> Diagnostic:
    found = with_code(diagnostics, code)
    assert len(found) == 1, f"expected one {code}, got {[(d.code, d.message) for d in diagnostics]}"
    return found[0]


def where(diagnostic: Diagnostic) -> tuple[int, int]:
    return diagnostic.position.line, diagnostic.position.column


def errors(diagnostics: Sequence[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.level is Level.ERROR]


# --- the baseline: valid input is silent ----------------------------------------------------------


def test_examples_are_valid() -> None:
    written = [
        doc
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc and doc.get("kind") == "AuthPolicy"
    ]
    policies, diagnostics = analyse([EXAMPLES])
    assert errors(diagnostics) == []
    assert sorted(p.id for p in policies) == sorted(
        f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in written
    )
    assert "security/web-apps-policy" in {p.id for p in policies}


def test_a_minimal_policy_is_valid(tmp_path: Path) -> None:
    _, policies, diagnostics = run(tmp_path, policy_text())
    assert diagnostics == []
    assert [p.id for p in policies] == ["security/p1"]


# --- unknown fields --------------------------------------------------------------------------------


def test_unknown_field_with_suggestion(tmp_path: Path) -> None:
    text = policy_text("allowedScope: [openid]\n")
    path, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "unknown-field")
    assert d.level is Level.ERROR
    assert d.position.file == str(path)
    assert where(d) == locate(text, "allowedScope:")
    assert '"allowedScope"' in d.message
    assert 'did you mean "allowedScopes"' in d.message
    assert policies == []


@pytest.mark.parametrize(
    ("body", "needle", "container", "suggestion"),
    [
        ("redirectUris:\n  requireHTTPS: true\n", "requireHTTPS:", "spec.redirectUris", "requireHttps"),
        ("token:\n  accessTokenTtl: 5m\n", "accessTokenTtl:", "spec.token", "accessTokenTTL"),
        ("targets:\n  namespace: [a]\n", "namespace: [a]", "spec.targets", "namespaces"),
        (
            "targets:\n  clientSelector:\n    matchLabel: {a: b}\n",
            "matchLabel:",
            "spec.targets.clientSelector",
            "matchLabels",
        ),
        (
            selector("{key: a, operator: Exists, valuse: []}"),
            "valuse",
            "spec.targets.clientSelector.matchExpressions[0]",
            "values",
        ),
    ],
)
def test_unknown_nested_field_points_at_the_key(
    tmp_path: Path, body: str, needle: str, container: str, suggestion: str
) -> None:
    text = policy_text(body)
    _, _, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "unknown-field")
    assert where(d) == locate(text, needle)
    assert f" in {container};" in d.message
    assert f'did you mean "{suggestion}"' in d.message


def test_unknown_field_without_a_close_match_lists_the_known_fields(tmp_path: Path) -> None:
    text = policy_text("token:\n  lifetime: 5m\n")
    _, _, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "unknown-field")
    assert where(d) == locate(text, "lifetime")
    assert "did you mean" not in d.message
    assert "known fields: accessTokenTTL, idTokenTTL, refreshTokenTTL" in d.message


def test_unknown_top_level_field(tmp_path: Path) -> None:
    # `status` is part of the CRD (written by the operator), so it is known; anything else is not.
    text = policy_text() + "extra: {}\n"
    _, _, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "unknown-field")
    assert where(d) == locate(text, "extra:")
    assert '"extra" in (document) (known fields: apiVersion, kind, metadata, spec, status)' in d.message


# --- types and enums -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle", "expected"),
    [
        ("allowedScopes: openid\n", "openid", 'spec.allowedScopes must be a list, not "openid"'),
        (
            "allowedGrantTypes: authorization_code\n",
            "authorization_code",
            'spec.allowedGrantTypes must be a list, not "authorization_code"',
        ),
        ("targets:\n  namespaces: team-a\n", "team-a", "spec.targets.namespaces must be a list"),
        ("enforcePKCE: yes-please\n", "yes-please", "spec.enforcePKCE must be true or false"),
        ("redirectUris: [https]\n", "[https]", "spec.redirectUris must be a mapping, not a list"),
        ("token:\n  accessTokenTTL: 900\n", "900", "spec.token.accessTokenTTL must be a string, not 900"),
        ("allowedScopes: [openid, 7]\n", "7]", "spec.allowedScopes[1] must be a string, not 7"),
    ],
)
def test_wrong_types_point_at_the_value(tmp_path: Path, body: str, needle: str, expected: str) -> None:
    text = policy_text(body)
    _, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "schema-type")
    assert d.level is Level.ERROR
    assert where(d) == locate(text, needle)
    assert expected in d.message
    assert policies == []


@pytest.mark.parametrize(
    ("body", "needle", "path", "suggestion"),
    [
        (
            "allowedGrantTypes: [authorization_code, implicitt]\n",
            "implicitt",
            "spec.allowedGrantTypes[1]",
            "implicit",
        ),
        ("allowedGrantTypes: [client_credential]\n", "client_credential", None, "client_credentials"),
        ("allowedGrantTypes: [magic]\n", "magic", "spec.allowedGrantTypes[0]", None),
        (
            "allowedTokenEndpointAuthMethods: [private_key_jwtt]\n",
            "private_key_jwtt",
            "spec.allowedTokenEndpointAuthMethods[0]",
            "private_key_jwt",
        ),
        ("allowedTokenEndpointAuthMethods: [mtls]\n", "mtls", None, None),
        ("targets:\n  applicationTypes: [web, sap]\n", "sap", "spec.targets.applicationTypes[1]", "spa"),
        ("targets:\n  applicationTypes: [mobile]\n", "mobile", None, None),
        (
            selector("{key: env, operator: Inn, values: [a]}"),
            "Inn",
            "spec.targets.clientSelector.matchExpressions[0].operator",
            "In",
        ),
        (
            selector("{key: env, operator: Equals, values: [a]}"),
            "Equals",
            None,
            None,
        ),
        ("enforcementAction: denied\n", "denied", "spec.enforcementAction", "deny"),
        ("enforcementAction: block\n", "block", "spec.enforcementAction", None),
    ],
)
def test_enum_errors_with_did_you_mean_when_close(
    tmp_path: Path, body: str, needle: str, path: str | None, suggestion: str | None
) -> None:
    text = policy_text(body)
    _, _, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "schema-enum")
    assert d.level is Level.ERROR
    assert where(d) == locate(text, needle)
    assert f'"{needle}" is not one of ' in d.message
    if path:
        assert d.message.startswith(f"{path}: ")
    if suggestion:
        assert d.message.endswith(f'did you mean "{suggestion}"?')
    else:
        assert "did you mean" not in d.message


def test_enum_error_lists_every_allowed_value(tmp_path: Path) -> None:
    _, _, diagnostics = run(tmp_path, policy_text("allowedGrantTypes: [magic]\n"))
    message = one(diagnostics, "schema-enum").message
    for grant in (
        "authorization_code",
        "refresh_token",
        "client_credentials",
        "implicit",
        "password",
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ):
        assert grant in message


def test_malformed_response_type_is_rejected(tmp_path: Path) -> None:
    text = policy_text('allowedResponseTypes: [code, "code  token"]\n')
    _, _, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "schema-pattern")
    assert where(d) == locate(text, '"code  token"')


# --- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragments"),
    [
        ("accessTokenTTL", "7d", ['"d"', 'write "168h"']),
        ("refreshTokenTTL", "30d", ['write "720h"']),
        ("refreshTokenTTL", "1 day", ['write "24h"']),
        ("idTokenTTL", "15 minutes", ["15 minutes", '"15m"']),
        ("accessTokenTTL", "PT15M", ["PT15M", '"15m"']),
        ("accessTokenTTL", "0s", ["greater than zero"]),
        ("accessTokenTTL", "0", ["greater than zero"]),
        ("refreshTokenTTL", "-5m", ["greater than zero"]),
        ("idTokenTTL", "3000000h", ["overflow"]),
    ],
)
def test_invalid_policy_durations(tmp_path: Path, field: str, value: str, fragments: list[str]) -> None:
    text = policy_text(f'token:\n  {field}: "{value}"\n')
    _, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "invalid-duration")
    assert d.level is Level.ERROR
    assert where(d) == locate(text, f'"{value}"')
    assert d.message.startswith(f"token.{field} '{value}' ")
    for fragment in fragments:
        assert fragment in d.message
    assert policies == []


def test_each_invalid_duration_is_reported(tmp_path: Path) -> None:
    text = policy_text('token:\n  accessTokenTTL: "7d"\n  refreshTokenTTL: "-1h"\n  idTokenTTL: "5 min"\n')
    _, _, diagnostics = run(tmp_path, text)
    found = with_code(diagnostics, "invalid-duration")
    assert [where(d) for d in found] == [locate(text, '"7d"'), locate(text, '"-1h"'), locate(text, '"5 min"')]


def test_valid_durations_are_silent(tmp_path: Path) -> None:
    text = policy_text('token:\n  accessTokenTTL: "1.5h"\n  refreshTokenTTL: 720h\n  idTokenTTL: 300s\n')
    _, policies, diagnostics = run(tmp_path, text)
    assert diagnostics == []
    assert len(policies) == 1


# --- identity --------------------------------------------------------------------------------------


def test_duplicate_policy_across_files_points_at_the_second(tmp_path: Path) -> None:
    first = write(tmp_path, "a/first.yaml", "# the original\n" + policy_text(name="dup"))
    second_text = policy_text(name="dup")
    second = write(tmp_path, "b/second.yaml", second_text)
    policies, diagnostics = analyse([tmp_path])
    d = one(diagnostics, "duplicate-policy")
    assert d.level is Level.ERROR
    assert d.position.file == str(second)
    assert where(d) == locate(second_text, "dup")
    assert "security/dup" in d.message
    assert f"{first}:2" in d.message  # the first definition starts on line 2, after the comment
    assert [p.id for p in policies] == ["security/dup"]
    assert policies[0].position.file == str(first)


def test_same_name_in_another_namespace_is_not_a_duplicate(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", policy_text(name="p", namespace="one"))
    write(tmp_path, "b.yaml", policy_text(name="p", namespace="two"))
    policies, diagnostics = analyse([tmp_path])
    assert diagnostics == []
    assert sorted(p.id for p in policies) == ["one/p", "two/p"]


def test_duplicate_policy_in_one_multi_document_file(tmp_path: Path) -> None:
    text = policy_text(name="twice") + "---\n" + policy_text(name="twice")
    path, _, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "duplicate-policy")
    assert where(d) == locate(text, "twice", occurrence=2)
    assert f"{path}:1" in d.message


@pytest.mark.parametrize(
    ("body", "needle", "occurrence", "what"),
    [
        ("allowedScopes: [openid, profile, openid]\n", "openid", 2, '"openid" twice (also at index 0)'),
        (
            "allowedGrantTypes: [authorization_code, refresh_token, refresh_token]\n",
            "refresh_token",
            2,
            '"refresh_token" twice (also at index 1)',
        ),
        (
            "redirectUris:\n  allowedHosts: [a.com, b.com, a.com]\n",
            "a.com",
            2,
            '"a.com" twice (also at index 0)',
        ),
        ("targets:\n  applicationTypes: [web, web]\n", "web", 2, '"web" twice'),
    ],
)
def test_duplicate_list_entries(tmp_path: Path, body: str, needle: str, occurrence: int, what: str) -> None:
    text = policy_text(body)
    _, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "duplicate-value")
    assert d.level is Level.ERROR
    assert where(d) == locate(text, needle, occurrence)
    assert what in d.message
    assert policies == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", "Web_Apps"),
        ("name", "web-"),
        ("name", "-web"),
        ("name", "a" * 254),
        ("namespace", "Security"),
        ("namespace", "sec.urity"),
        ("namespace", "team_a"),
        ("namespace", "a" * 64),
    ],
)
def test_invalid_metadata_names(tmp_path: Path, key: str, value: str) -> None:
    text = policy_text(name=value) if key == "name" else policy_text(namespace=value)
    _, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "invalid-name")
    assert d.level is Level.ERROR
    line, column = locate(text, f"{key}: {value}")
    assert where(d) == (line, column + len(key) + 2)
    assert f"metadata.{key}" in d.message
    assert policies == []


@pytest.mark.parametrize(
    ("name", "namespace"), [("web.apps.v2", "security"), ("a" * 253, "a" * 63), ("0web", "9sec")]
)
def test_valid_metadata_names(tmp_path: Path, name: str, namespace: str) -> None:
    _, policies, diagnostics = run(tmp_path, policy_text(name=name, namespace=namespace))
    assert diagnostics == []
    assert [p.id for p in policies] == [f"{namespace}/{name}"]


def test_missing_namespace_is_schema_required(tmp_path: Path) -> None:
    text = "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicy\nmetadata:\n  name: web\nspec: {}\n"
    _, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "schema-required")
    assert d.level is Level.ERROR
    assert where(d) == locate(text, "name: web")  # the metadata mapping starts at its first key
    assert 'metadata is missing the required field "namespace"' in d.message
    assert policies == []


def test_missing_spec_is_schema_required(tmp_path: Path) -> None:
    text = policy_header()
    _, _, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "schema-required")
    assert where(d) == (1, 1)
    assert '"spec"' in d.message


def test_metadata_fields_the_api_server_adds_are_accepted(tmp_path: Path) -> None:
    text = policy_header() + (
        "  labels: {team: sec}\n  annotations:\n    owner: security-team\n"
        "  uid: 0b6e1c52-2f1c-4bde-9d35-111111111111\n  resourceVersion: '42'\n"
        "  creationTimestamp: 2026-01-01T00:00:00Z\nspec: {}\n"
    )
    _, policies, diagnostics = run(tmp_path, text)
    assert diagnostics == []
    assert [p.id for p in policies] == ["security/p1"]


def test_metadata_labels_must_be_strings(tmp_path: Path) -> None:
    text = policy_header() + "  labels: {replicas: 3}\nspec: {}\n"
    _, _, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "schema-type")
    assert where(d) == locate(text, "3}")
    assert "metadata.labels.replicas must be a string" in d.message


# --- classification --------------------------------------------------------------------------------


def test_unknown_kind_in_our_group(tmp_path: Path) -> None:
    text = "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicyy\nmetadata: {name: a, namespace: b}\n"
    _, _, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "unknown-kind")
    assert d.level is Level.ERROR
    assert where(d) == locate(text, "AuthPolicyy")
    assert "AuthPolicyy" in d.message
    assert "AuthClient, AuthPolicy" in d.message
    assert 'did you mean "AuthPolicy"' in d.message


@pytest.mark.parametrize("version", ["v1beta1", "v1", "v1alpha2"])
def test_unknown_version_in_our_group(tmp_path: Path, version: str) -> None:
    text = f"apiVersion: auth.nauthera.io/{version}\nkind: AuthPolicy\nmetadata: {{name: a, namespace: b}}\n"
    _, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "unknown-version")
    assert d.level is Level.ERROR
    assert where(d) == (1, 13)
    assert f"auth.nauthera.io/{version}" in d.message
    assert "auth.nauthera.io/v1alpha1" in d.message
    assert policies == []


def test_documents_of_other_groups_are_skipped_with_notes(tmp_path: Path) -> None:
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n"
        "---\n"
        "apiVersion: apps/v1\nkind: Deployment\nspec: {whatever: [1, 2]}\n"
        "---\n"
        "apiVersion: example.com/v1alpha1\nkind: AuthPolicy\nspec: {allowedScope: nonsense}\n"
        "---\n"
        "just: a mapping\n"
        "---\n" + policy_text()
    )
    _, policies, diagnostics = run(tmp_path, text)
    assert errors(diagnostics) == []
    notes = with_code(diagnostics, "skipped")
    assert [d.level for d in notes] == [Level.NOTE] * 4
    assert [d.position.line for d in notes] == [1, 6, 10, 14]
    assert "v1 ConfigMap" in notes[0].message
    assert "apps/v1 Deployment" in notes[1].message
    assert "example.com/v1alpha1 AuthPolicy" in notes[2].message
    assert "without apiVersion" in notes[3].message
    assert all("not an auth.nauthera.io resource" in d.message for d in notes)
    assert [p.id for p in policies] == ["security/p1"]


def test_authclient_in_a_policy_folder_is_a_note(tmp_path: Path) -> None:
    client = (
        "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthClient\n"
        "metadata: {name: app, namespace: team-a}\nspec: {applicationType: web}\n"
    )
    text = policy_text() + "---\n" + client
    _, policies, diagnostics = run(tmp_path, text)
    assert errors(diagnostics) == []
    d = one(diagnostics, "skipped")
    assert d.level is Level.NOTE
    assert where(d) == locate(text, "apiVersion", occurrence=2)
    assert "AuthClient" in d.message
    assert "nauthera check" in d.message
    assert [p.id for p in policies] == ["security/p1"]


# --- selectors, hosts, scopes, loopback ------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "needle", "fragment"),
    [
        ("{key: env, operator: In}", "{key: env, operator: In}", "operator In needs a non-empty values list"),
        ("{key: env, operator: In, values: []}", "{key", "operator In needs a non-empty values list"),
        ("{key: env, operator: NotIn, values: []}", "{key", "operator NotIn needs a non-empty values list"),
        ("{key: env, operator: Exists, values: [x]}", "[x]", "operator Exists takes no values"),
        ("{key: env, operator: DoesNotExist, values: [x, y]}", "[x, y]", "operator DoesNotExist takes no"),
    ],
)
def test_selector_operator_and_values_must_agree(
    tmp_path: Path, expression: str, needle: str, fragment: str
) -> None:
    text = policy_text(selector("{key: ok, operator: Exists}", expression))
    _, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "selector")
    assert d.level is Level.ERROR
    assert where(d) == locate(text, needle, occurrence=2 if needle == "{key" else 1)
    assert d.message.startswith("matchExpressions[1]: ")
    assert fragment in d.message
    assert policies == []


def test_well_formed_selectors_are_silent(tmp_path: Path) -> None:
    text = policy_text(
        selector(
            "{key: a, operator: In, values: [x]}",
            "{key: b, operator: NotIn, values: [y, z]}",
            "{key: c, operator: Exists}",
            "{key: d, operator: DoesNotExist}",
        )
    )
    _, policies, diagnostics = run(tmp_path, text)
    assert diagnostics == []
    assert len(policies) == 1


@pytest.mark.parametrize(
    ("host", "level", "fragment"),
    [
        # meaningless as a host: errors
        ("https://x.com", Level.ERROR, "is a URL"),
        ("x.com/callback", Level.ERROR, "is a URL"),
        ("a*b.com", Level.ERROR, "'*' inside a label"),
        ("*x.com", Level.ERROR, "'*' inside a label"),
        ("api.*-eu.x.com", Level.ERROR, "'*' inside a label"),
        # data that no lower-cased host can equal: an inert entry, reported as a warning
        ("x.com:443", Level.WARNING, "can never match"),
        ("a..com", Level.WARNING, "can never match"),
        ("-a.com", Level.WARNING, "can never match"),
        ("a-.com", Level.WARNING, "can never match"),
        (".x.com", Level.WARNING, "can never match"),
        ("user@x.com", Level.WARNING, "can never match"),
        ("", Level.WARNING, "can never match"),
    ],
)
def test_bad_host_patterns(tmp_path: Path, host: str, level: Level, fragment: str) -> None:
    text = policy_text(f'redirectUris:\n  allowedHosts: [ok.example.com, "{host}"]\n')
    _, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "host-pattern")
    assert d.level is level
    assert where(d) == locate(text, f'"{host}"')
    assert d.message.startswith(f"allowedHosts entry {host!r} ")
    assert fragment in d.message
    assert len(policies) == (0 if level is Level.ERROR else 1)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "*.example.com",
        "Shop.Example.COM",
        "*.*.example.com",
        "127.0.0.1",
        "localhost",
        "a_b.x",
    ],
)
def test_good_host_patterns(tmp_path: Path, host: str) -> None:
    _, policies, diagnostics = run(tmp_path, policy_text(f'redirectUris:\n  allowedHosts: ["{host}"]\n'))
    assert diagnostics == []
    assert len(policies) == 1


def test_ipv6_loopback_can_be_listed_in_allowed_hosts(tmp_path: Path) -> None:
    text = policy_text(
        'redirectUris:\n  requireHttps: true\n  allowLoopback: true\n  allowedHosts: ["127.0.0.1", "[::1]"]\n'
    )
    _, policies, diagnostics = run(tmp_path, text)
    assert diagnostics == []
    assert len(policies) == 1


def test_required_scopes_not_covered_by_allowed_scopes_warn(tmp_path: Path) -> None:
    text = policy_text(
        'allowedScopes: [openid, "api:*"]\nrequiredScopes: [openid, profile, "api:orders.write", "API:x"]\n'
    )
    _, policies, diagnostics = run(tmp_path, text)
    found = with_code(diagnostics, "unsatisfiable")
    assert [d.level for d in found] == [Level.WARNING, Level.WARNING]
    assert [where(d) for d in found] == [locate(text, "profile"), locate(text, '"API:x"')]
    assert "'profile'" in found[0].message
    assert "allowedScopes" in found[0].message
    assert len(policies) == 1, "a warning must not drop the policy"


def test_empty_allowed_scopes_make_every_required_scope_unsatisfiable(tmp_path: Path) -> None:
    text = policy_text("allowedScopes: []\nrequiredScopes: [openid, email]\n")
    _, _, diagnostics = run(tmp_path, text)
    assert [where(d) for d in with_code(diagnostics, "unsatisfiable")] == [
        locate(text, "openid"),
        locate(text, "email"),
    ]


def test_required_scopes_without_allowed_scopes_are_fine(tmp_path: Path) -> None:
    _, _, diagnostics = run(tmp_path, policy_text("requiredScopes: [openid]\n"))
    assert diagnostics == []


@pytest.mark.parametrize("require_https", [None, "false"])
def test_allow_loopback_without_require_https_has_no_effect(
    tmp_path: Path, require_https: str | None
) -> None:
    extra = f"  requireHttps: {require_https}\n" if require_https else ""
    text = policy_text("redirectUris:\n" + extra + "  allowLoopback: true\n")
    _, policies, diagnostics = run(tmp_path, text)
    d = one(diagnostics, "no-effect")
    assert d.level is Level.WARNING
    assert where(d) == locate(text, "allowLoopback")
    assert "requireHttps" in d.message
    assert len(policies) == 1


def test_allow_loopback_with_require_https_is_silent(tmp_path: Path) -> None:
    text = policy_text("redirectUris:\n  requireHttps: true\n  allowLoopback: true\n")
    assert run(tmp_path, text)[2] == []


def test_empty_application_types_governs_nothing(tmp_path: Path) -> None:
    text = policy_text("targets:\n  applicationTypes: []\n")
    d = one(run(tmp_path, text)[2], "governs-nothing")
    assert d.level is Level.WARNING
    assert where(d) == locate(text, "[]")


# --- collecting every problem ----------------------------------------------------------------------


def test_every_problem_in_every_file_is_reported(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        policy_text("allowedScope: [openid]\nallowedGrantTypes: [implicitt]\nenforcePKCE: maybe\n", name="a"),
    )
    b_text = (
        policy_text('token:\n  accessTokenTTL: "7d"\n  idTokenTTL: "0s"\n', name="b")
        + "---\n"
        + policy_text(selector("{key: env, operator: In}"), name="c")
        + "---\n"
        + policy_text('redirectUris:\n  allowedHosts: ["https://x.com"]\n', name="Bad_Name")
    )
    b = write(tmp_path, "b.yaml", b_text)
    write(tmp_path, "c/broken.yaml", "a: b: c\n")
    write(tmp_path, "c/dups.yaml", "kind: X\nkind: Y\n")
    _, diagnostics = analyse([tmp_path])
    found = sorted((Path(d.position.file).name, d.code) for d in errors(diagnostics))
    assert found == [
        ("a.yaml", "schema-enum"),
        ("a.yaml", "schema-type"),
        ("a.yaml", "unknown-field"),
        ("b.yaml", "host-pattern"),
        ("b.yaml", "invalid-duration"),
        ("b.yaml", "invalid-duration"),
        ("b.yaml", "invalid-name"),
        ("b.yaml", "selector"),
        ("broken.yaml", "yaml-syntax"),
        ("dups.yaml", "yaml-duplicate-key"),
    ]
    assert {d.position.file for d in diagnostics} >= {str(a), str(b)}


def test_diagnostics_are_sorted_by_file_line_column(tmp_path: Path) -> None:
    write(tmp_path, "z.yaml", policy_text("bogus: 1\n", name="z"))
    write(tmp_path, "a.yaml", policy_text("allowedScopes: [x, x]\nalsoBogus: 1\n", name="a"))
    _, diagnostics = analyse([tmp_path])
    keys = [(d.position.file, d.position.line, d.position.column) for d in diagnostics]
    assert len(keys) == 3
    assert keys == sorted(keys)


def test_schema_and_semantic_problems_in_one_document_are_all_reported(tmp_path: Path) -> None:
    text = policy_text('allowedScope: [openid]\ntoken:\n  accessTokenTTL: "7d"\n')
    _, _, diagnostics = run(tmp_path, text)
    assert sorted(d.code for d in errors(diagnostics)) == ["invalid-duration", "unknown-field"]


# --- model -----------------------------------------------------------------------------------------


def built(body: str) -> Policy:
    doc = load_text(policy_text(body), "p.yaml").documents[0]
    return build_policy(doc)


def test_build_policy_through_analyse_matches_direct_build(tmp_path: Path) -> None:
    body = 'token:\n  accessTokenTTL: "15m"\nallowedScopes: [openid]\n'
    (policy,) = run(tmp_path, policy_text(body))[1]
    direct = built(body)
    assert policy.token_limits == direct.token_limits
    assert policy.allowed_scopes == direct.allowed_scopes


def test_durations_become_nanoseconds_in_field_order() -> None:
    policy = built('token:\n  idTokenTTL: "5m"\n  accessTokenTTL: 1h30m\n  refreshTokenTTL: "1.5h"\n')
    assert policy.token_limits == (
        TokenLimit("accessTokenTTL", 90 * 60 * NANOS, "1h30m"),
        TokenLimit("refreshTokenTTL", 90 * 60 * NANOS, "1.5h"),
        TokenLimit("idTokenTTL", 5 * 60 * NANOS, "5m"),
    )


def test_omitted_token_limits_are_absent() -> None:
    assert built('token:\n  accessTokenTTL: "900s"\n').token_limits == (
        TokenLimit("accessTokenTTL", 900 * NANOS, "900s"),
    )
    assert built("").token_limits == ()


def test_response_types_are_normalised_and_deduplicated() -> None:
    policy = built('allowedResponseTypes: ["id_token code", code, "code id_token", "token id_token code"]\n')
    assert policy.allowed_response_types == ("code id_token", "code", "code id_token token")


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        ("id_token code", "code id_token"),
        ("token code", "code token"),
        ("none", "none"),
        ("code code", "code"),
    ],
)
def test_normalise_response_type(written: str, normal: str) -> None:
    assert normalise_response_type(written) == normal


def test_host_patterns_are_lower_cased() -> None:
    hosts = built(
        'redirectUris:\n  allowedHosts: ["Shop.Example.COM", "*.Example.org"]\n'
    ).redirects.allowed_hosts
    assert hosts is not None
    assert hosts.source == ("shop.example.com", "*.example.org")
    assert hosts.exact == frozenset({"shop.example.com"})
    assert hosts.matches("api.example.org")
    assert not hosts.matches("SHOP.example.com")  # callers lower-case the host; the patterns already are


def test_enforcement_defaults_to_deny() -> None:
    assert built("").enforcement_action == "deny"
    assert built("enforcementAction: warn\n").enforcement_action == "warn"
    assert built("enforcementAction: dryrun\n").enforcement_action == "dryrun"


@pytest.mark.parametrize(("written", "forbid"), [(None, False), ("true", False), ("false", True)])
def test_forbid_wildcards_only_when_allow_wildcards_is_false(written: str | None, forbid: bool) -> None:
    body = f"redirectUris:\n  allowWildcards: {written}\n" if written else "redirectUris: {}\n"
    assert built(body).redirects.forbid_wildcards is forbid


def test_omitted_constraints_are_none_and_empty_lists_stay_empty() -> None:
    omitted = built("")
    assert omitted.allowed_grant_types is None
    assert omitted.allowed_scopes is None
    assert omitted.required_scopes is None
    assert omitted.allowed_response_types is None
    assert omitted.allowed_auth_methods is None
    assert omitted.redirects.allowed_hosts is None
    assert omitted.targets.application_types is None
    assert omitted.targets.namespaces is None
    assert omitted.enforce_pkce is False
    assert omitted.redirects.require_https is False
    empty = built(
        "allowedGrantTypes: []\nallowedTokenEndpointAuthMethods: []\nallowedResponseTypes: []\n"
        "allowedScopes: []\n"
    )
    assert empty.allowed_grant_types == ()
    assert empty.allowed_auth_methods == ()
    assert empty.allowed_response_types == ()
    assert empty.allowed_scopes is not None
    assert not empty.allowed_scopes.matches("openid")


def test_targets_are_normalised() -> None:
    policy = built(
        "targets:\n"
        "  applicationTypes: [web, spa]\n"
        '  namespaces: ["team-*", prod]\n'
        "  excludedNamespaces: [team-sandbox]\n"
        "  clientSelector:\n"
        "    matchLabels: {tier: prod, app: shop}\n"
        "    matchExpressions:\n"
        "      - {key: env, operator: In, values: [prod, staging]}\n"
        "      - {key: legacy, operator: DoesNotExist}\n"
    )
    targets = policy.targets
    assert targets.application_types == ("web", "spa")
    assert targets.namespaces is not None
    assert targets.namespaces.exact == frozenset({"prod"})
    assert targets.namespaces.matches("team-a.b")
    assert targets.excluded_namespaces is not None
    assert targets.excluded_namespaces.matches("team-sandbox")
    assert targets.match_labels == (("app", "shop"), ("tier", "prod"))
    assert [(e.key, e.operator, e.values) for e in targets.match_expressions] == [
        ("env", "In", ("prod", "staging")),
        ("legacy", "DoesNotExist", ()),
    ]
    assert policy.id == "security/p1"


# --- patterns --------------------------------------------------------------------------------------

_ESCAPED_BODY = re.compile(r"(?:[A-Za-z0-9]|\\x\{[0-9A-F]+\})*")


def test_scope_star_crosses_dots_and_colons() -> None:
    scopes = text_globs(("api:*",))
    assert scopes.matches("api:orders.write")
    assert scopes.matches("api:a.b.c:d")
    assert scopes.matches("api:")
    assert not scopes.matches("apix:orders")
    assert not scopes.matches("xapi:orders")
    assert not scopes.matches("API:orders")


def test_namespace_star_in_the_middle() -> None:
    namespaces = text_globs(("team-*-prod",))
    assert namespaces.matches("team-a-prod")
    assert namespaces.matches("team-a.b-prod")
    assert not namespaces.matches("team-a-prod2")
    assert not namespaces.matches("other-team-a-prod")


def test_host_star_is_exactly_one_label() -> None:
    hosts = host_globs(("*.example.com",))
    assert hosts.matches("shop.example.com")
    assert not hosts.matches("example.com")
    assert not hosts.matches("a.b.example.com")
    assert not hosts.matches(".example.com")
    assert not hosts.matches("shopexample.com")
    assert not hosts.matches("shop.example.com.evil.org")


def test_host_star_in_the_middle_and_alone() -> None:
    assert host_globs(("api.*.example.com",)).matches("api.eu.example.com")
    assert not host_globs(("api.*.example.com",)).matches("api.eu.west.example.com")
    assert host_globs(("*",)).matches("localhost")
    assert not host_globs(("*",)).matches("example.com")


@pytest.mark.parametrize(
    "literal",
    ['openid"} allow := true #', "a.b", "a+b", "(x)|y", "[abc]", "a\\d", "^$", "a?b{2}", "ü.ß", "tab\there"],
)
def test_regex_metacharacters_and_quotes_are_literal(literal: str) -> None:
    scopes = text_globs((literal + "*",))
    assert scopes.matches(literal)
    assert scopes.matches(literal + ".suffix")
    mangled = literal.replace(".", "x").replace("+", "bb").replace("?", "")
    if mangled != literal:
        assert not scopes.matches(mangled)


def test_exact_entries_are_looked_up_not_matched() -> None:
    scopes = text_globs(("a.b", 'q"uote'))
    assert scopes.regexes == ()
    assert scopes.exact == frozenset({"a.b", 'q"uote'})
    assert not scopes.matches("axb")


@pytest.mark.parametrize(
    "pattern", ['openid"} allow := true #', "api:*", "*.example.com", "a.b*c(d)[e]{f}|g\\h$", "ü*ß", "*"]
)
@pytest.mark.parametrize("wildcard", ["(?s:.*)", "[^.]+"])
def test_glob_regex_escapes_every_non_alphanumeric(pattern: str, wildcard: str) -> None:
    regex = glob_regex(pattern, wildcard)
    assert regex.startswith("^")
    assert regex.endswith("$")
    pieces = regex[1:-1].split(wildcard)
    assert len(pieces) == pattern.count("*") + 1
    for piece in pieces:
        assert _ESCAPED_BODY.fullmatch(piece), f"unescaped character in {piece!r}"
    assert '"' not in regex
    assert "." not in regex.replace(wildcard, "")


def test_glob_regex_spells_characters_as_hex_code_points() -> None:
    assert glob_regex("a.b*", "(?s:.*)") == "^a\\x{2E}b(?s:.*)$"
    assert glob_regex('"é', "[^.]+") == "^\\x{22}\\x{E9}$"


def test_pattern_set_splits_exact_and_glob_entries() -> None:
    patterns = pattern_set(("a", "b*", "c"), "(?s:.*)")
    assert patterns.source == ("a", "b*", "c")
    assert patterns.exact == frozenset({"a", "c"})
    assert patterns.regexes == ("^b(?s:.*)$",)


def test_literal_prefix() -> None:
    assert literal_prefix("team-*-x") == "team-"
    assert literal_prefix("exact") == "exact"
    assert literal_prefix("*") == ""
