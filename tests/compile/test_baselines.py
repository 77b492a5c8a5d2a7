"""SPEC §10 in the compiler: the baseline table and its one merge, origins, the new fields' diagnostics
and `nauthera explain` (the decisions themselves are pinned by tests/e2e/cases)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from nauthera.cli import main
from nauthera.compile import baselines
from nauthera.compile.baselines import BASELINES, Baseline, Merge, effective_constraints, merge
from nauthera.compile.diagnostics import Level
from nauthera.compile.schema import load_schemas
from nauthera.targets.parameters import policy_parameters

from .test_validation import locate, one, policy_text, run, with_code

OAUTH21_GRANTS = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
]


@pytest.mark.parametrize(
    ("path", "first", "second", "stricter"),
    [
        (
            "allowedGrantTypes",
            ["implicit", "authorization_code"],
            ["authorization_code"],
            ["authorization_code"],
        ),
        ("allowedResponseTypes", ["id_token code", "token"], ["code id_token"], ["id_token code"]),
        ("senderConstrainedTokens", ["dpop"], ["dpop", "mtls"], ["dpop"]),
        ("token.accessTokenTTL", "1h", "900s", "900s"),
        ("token.accessTokenTTL", "15m", "1h", "15m"),
        ("enforcePKCE", False, True, True),
        ("redirectUris.forbidFragments", True, False, True),
        ("redirectUris.allowLoopback", True, False, False),
        ("redirectUris.allowWildcards", True, True, True),
    ],
)
def test_merge_takes_the_stricter_value_of_each_kind(
    path: str, first: Any, second: Any, stricter: Any
) -> None:
    assert merge(path, first, second) == stricter
    assert baselines.CONSTRAINTS[path] in tuple(Merge)


def test_the_grant_types_are_the_crds() -> None:
    """oauth2.1 means "every grant type of SPEC 1.1 but implicit and password": the CRD's list."""
    spec = load_schemas()["AuthPolicy"].openapi["properties"]["spec"]["properties"]
    assert list(baselines.GRANT_TYPES) == spec["allowedGrantTypes"]["items"]["enum"]


def test_globs_cannot_be_merged() -> None:
    with pytest.raises(ValueError, match="allowedScopes cannot be merged"):
        merge("allowedScopes", ["a"], ["b"])
    for baseline in BASELINES.values():
        assert all(baselines.CONSTRAINTS[path] is not None for path in baseline.constraints)


def _effective(spec: dict[str, Any]) -> dict[str, Any]:
    constraints = effective_constraints(spec, spec.get("baselines", ()))
    return {c.path: (c.value, c.origin, c.baseline_label) for c in constraints}


def test_fapi2_security_includes_oauth21_and_names_itself() -> None:
    fapi = _effective({"baselines": ["fapi2-security"]})
    oauth = _effective({"baselines": ["oauth2.1"]})
    assert oauth["allowedGrantTypes"][0] == tuple(OAUTH21_GRANTS)
    assert fapi["allowedGrantTypes"] == (
        ("authorization_code", "refresh_token", "client_credentials"),
        "baseline",
        "baseline fapi2-security",
    )
    assert set(oauth) < set(fapi)
    assert fapi["redirectUris.allowPrivateUseSchemes"] == (True, "baseline", "baseline fapi2-security")
    assert fapi["allowedSigningAlgorithms"][0] == ("PS256", "ES256", "EdDSA")


def test_explicit_fields_tighten_and_never_loosen() -> None:
    found = _effective(
        {
            "baselines": ["oauth2.1"],
            "allowedGrantTypes": ["authorization_code", "implicit"],
            "enforcePKCE": False,
            "redirectUris": {"allowLoopback": False, "allowWildcards": True, "forbidFragments": True},
            "allowedScopes": ["openid"],
        }
    )
    assert found["allowedGrantTypes"] == (("authorization_code",), "combined", "baseline oauth2.1")
    assert found["enforcePKCE"] == (True, "overridden", "baseline oauth2.1")
    assert found["redirectUris.allowLoopback"] == (False, "tightened", None)
    assert found["redirectUris.allowWildcards"] == (False, "overridden", "baseline oauth2.1")
    assert found["redirectUris.forbidFragments"] == (True, "same", "baseline oauth2.1")
    assert found["allowedScopes"] == (("openid",), "explicit", None)
    both = _effective({"baselines": ["oauth2.1", "fapi2-security"]})
    assert both["enforcePKCE"][2] == "baselines oauth2.1, fapi2-security"
    assert both["allowedGrantTypes"][0] == ("authorization_code", "refresh_token", "client_credentials")


def test_a_new_baseline_is_one_table_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation, the model, the parameters and explain all read the table: nothing else to add."""
    monkeypatch.setitem(
        BASELINES,
        "short-lived",
        Baseline(("oauth2.1",), {"token.accessTokenTTL": "5m", "enforcePKCE": True}),
    )
    _, [policy], diagnostics = run(
        tmp_path, policy_text('baselines: [short-lived]\ntoken: {accessTokenTTL: "1h"}\n')
    )
    assert one(diagnostics, "no-effect").message.startswith(
        "token.accessTokenTTL: '1h' has no effect: baseline short-lived sets the lower maximum '5m'"
    )
    assert [(t.field, t.max_text) for t in policy.token_limits] == [("accessTokenTTL", "5m")]
    assert policy.allowed_grant_types == tuple(OAUTH21_GRANTS)
    params = policy_parameters(policy)
    assert params["baselines"]["token.accessTokenTTL"] == "baseline short-lived"
    assert params["baselines"]["allowedResponseTypes"] == "baseline short-lived"


def test_model_and_parameters_of_the_new_fields(tmp_path: Path) -> None:
    body = (
        "redirectUris:\n"
        "  allowPrivateUseSchemes: true\n"
        "  allowedSchemes: [COM.Example.*]\n"
        "  forbidFragments: true\n"
        "  requireHttps: true\n"
        "senderConstrainedTokens: [mtls]\n"
        "requirePushedAuthorizationRequests: true\n"
        "allowedSigningAlgorithms: [ES256]\n"
    )
    _, [policy], diagnostics = run(tmp_path, policy_text(body))
    assert diagnostics == []
    params = policy_parameters(policy)
    assert params["redirects"]["allow_private_use_schemes"] is True
    assert params["redirects"]["forbid_fragments"] is True
    assert params["redirects"]["allowed_schemes"]["patterns"] == ["com.example.*"]
    assert params["sender_constrained_tokens"] == ["mtls"]
    assert params["require_par"] is True
    assert params["allowed_signing_algorithms"] == ["ES256"]
    assert "baselines" not in params, "a policy without baselines carries no origins"
    assert isinstance(hash(policy), int), "policies stay hashable with their constraints"


def test_bad_input_is_a_positioned_diagnostic_each(tmp_path: Path) -> None:
    body = (
        "baselines: [oauth21, fapi2-security]\n"
        "senderConstrainedTokens: []\n"
        "allowedSigningAlgorithms: [PS256, PS257]\n"
        "redirectUris:\n"
        "  allowedSchemes: [com.example.app, 'com.example.app:/cb', myapp, '-x']\n"
    )
    text = policy_text(body)
    _, policies, diagnostics = run(tmp_path, text)
    assert policies == []
    baseline = one(diagnostics, "unknown-baseline")
    assert (baseline.position.line, baseline.position.column) == locate(text, "oauth21")
    assert baseline.message == (
        "unknown baseline 'oauth21' (known: fapi2-security, oauth2.1); did you mean \"oauth2.1\"?"
    )
    empty = one(diagnostics, "schema-minItems")
    assert (empty.position.line, empty.position.column) == locate(text, "[]")
    assert "senderConstrainedTokens has 0 items" in empty.message
    algorithm = one(diagnostics, "schema-enum")
    assert (algorithm.position.line, algorithm.position.column) == locate(text, "PS257")
    assert 'did you mean "PS256"?' in algorithm.message
    schemes = with_code(diagnostics, "scheme-pattern")
    assert [(d.position.line, d.position.column) for d in schemes] == [
        locate(text, "'com.example.app:/cb'"),
        locate(text, "'-x'"),
    ]
    assert all(d.level is Level.ERROR and "without ':'" in d.message for d in schemes)
    dotless = [d for d in with_code(diagnostics, "no-effect") if "myapp" in d.message]
    assert len(dotless) == 1 and dotless[0].level is Level.WARNING


def test_no_effect_warnings_point_at_the_overridden_value(tmp_path: Path) -> None:
    body = (
        "baselines: [fapi2-security]\n"
        "allowedGrantTypes: [authorization_code, password]\n"
        "requirePushedAuthorizationRequests: false\n"
        "redirectUris: {allowWildcards: true, allowLoopback: true}\n"
    )
    text = policy_text(body)
    _, [policy], diagnostics = run(tmp_path, text)
    warnings = {d.message.split(" has no effect")[0]: d for d in with_code(diagnostics, "no-effect")}
    assert set(warnings) == {
        "allowedGrantTypes entry 'password'",
        "requirePushedAuthorizationRequests: false",
        "redirectUris.allowWildcards: true",
    }, "allowLoopback: true is what the baseline sets too, and requireHttps comes from the baseline"
    position = warnings["allowedGrantTypes entry 'password'"].position
    assert (position.line, position.column) == locate(text, "password")
    assert (
        "baseline fapi2-security does not allow it" in warnings["allowedGrantTypes entry 'password'"].message
    )
    assert policy.require_par and policy.redirects.forbid_wildcards


def test_allow_private_use_schemes_alone_has_no_effect(tmp_path: Path) -> None:
    text = policy_text("redirectUris: {allowPrivateUseSchemes: true}\n")
    _, _, diagnostics = run(tmp_path, text)
    warning = one(diagnostics, "no-effect")
    assert "only relaxes requireHttps and allowedHosts" in warning.message
    _, _, quiet = run(
        tmp_path,
        policy_text("redirectUris: {allowedHosts: [a.example.com], allowPrivateUseSchemes: true}\n"),
        "b.yaml",
    )
    assert with_code(quiet, "no-effect") == []


def _explain(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["explain", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_explain_text_and_json(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        policy_text(
            "baselines: [fapi2-security]\n"
            "allowedSigningAlgorithms: [ES256]\n"
            "allowedGrantTypes: [authorization_code, implicit]\n"
            "allowedScopes: [openid]\n"
        )
    )
    code, out, err = _explain(path)
    assert code == 0
    assert out.splitlines()[0] == f"security/p1 ({path}:1): deny, baselines: fapi2-security"
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["allowedSigningAlgorithms"].endswith(
        "ES256  [explicit, tightens baseline fapi2-security (PS256, ES256, EdDSA)]"
    )
    assert lines["allowedGrantTypes"].endswith(
        "authorization_code  [explicit ∩ baseline fapi2-security; implicit has no effect]"
    )
    assert lines["allowedScopes"].endswith("openid  [explicit]")
    assert lines["senderConstrainedTokens"].endswith("dpop, mtls  [baseline fapi2-security]")
    assert "[no-effect]" in err
    result = CliRunner().invoke(main, ["explain", str(path), "--format", "json"])
    document = json.loads(result.stdout)
    [policy] = document["policies"]
    by_field = {c["field"]: c for c in policy["constraints"]}
    assert by_field["allowedGrantTypes"] == {
        "field": "allowedGrantTypes",
        "value": ["authorization_code"],
        "origin": "combined",
        "explicit": ["authorization_code", "implicit"],
        "baseline": ["authorization_code", "refresh_token", "client_credentials"],
        "baselines": ["fapi2-security"],
        "no_effect": ["implicit"],
    }
    assert by_field["requirePushedAuthorizationRequests"]["origin"] == "baseline"
    assert document["ok"] is True and policy["baselines"] == ["fapi2-security"]


def test_explain_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        policy_text("baselines: [fapi3]\n", name="bad") + "---\n" + policy_text("enforcePKCE: true\n")
    )
    code, out, err = _explain(bad)
    assert code == 1
    assert "unknown baseline 'fapi3'" in err and "[unknown-baseline]" in err
    assert out.startswith("security/p1 "), "valid policies are still explained"
    code, _, err = _explain(tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml" in err


def test_examples_policies_explain(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "policies"
    code, out, err = _explain(examples)
    assert code == 0, err
    assert "security/payments-fapi2" in out and "[baseline fapi2-security]" in out
