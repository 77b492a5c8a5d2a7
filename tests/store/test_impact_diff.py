"""`bundle diff` in policy terms and `impact` with the real OPA, on examples/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nauthera.store.diff import diff_bundles
from nauthera.store.folder import FolderStore
from nauthera.store.impact import impact
from nauthera.targets.base import CompileOptions
from nauthera.targets.outputs import compile_policies

from ..conftest import EXAMPLES, compile_to
from .conftest import Invoke, edited_policies

CLIENTS = EXAMPLES / "clients"


#: Three edits with known consequences for examples/clients (see EXPECTED.md):
#: mobile-spa access tokens 10m → 5m newly denies team-labs/chat-prototype (10m);
#: web-apps access tokens 15m → 1h newly allows team-a/reporting-portal (1h, its only violation);
#: allowing host "localhost" leaves team-b/desktop-sync denied by requireHttps alone.
def _tighten_mobile(text: str) -> str:
    text = text.replace('accessTokenTTL: "10m"', 'accessTokenTTL: "5m"')
    return text.replace('      - "127.0.0.1"\n', '      - "127.0.0.1"\n      - "localhost"\n')


def _relax_web(text: str) -> str:
    return text.replace('accessTokenTTL: "15m"', 'accessTokenTTL: "1h"')


def _reword_web(text: str) -> str:
    text = text.replace('accessTokenTTL: "15m"', 'accessTokenTTL: "900s"')
    text = text.replace("[authorization_code, refresh_token]", "[refresh_token, authorization_code]")
    return text.replace("# Governs", "# Still governs")


EDITS = {"mobile-spa-policy.yaml": _tighten_mobile, "web-apps-policy.yaml": _relax_web}


@pytest.fixture(scope="module")
def changed_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("changed")
    return compile_to(edited_policies(folder, EDITS), folder / "out")


@pytest.fixture
def store(example_bundle: Path, changed_bundle: Path, tmp_path: Path) -> FolderStore:
    bundle_store = FolderStore(tmp_path / "store")
    bundle_store.publish(example_bundle, "stable")
    bundle_store.publish(changed_bundle, "canary")
    return bundle_store


def test_diff_names_policies_and_constraints(example_bundle: Path, changed_bundle: Path) -> None:
    result = diff_bundles(example_bundle, changed_bundle).as_json()
    assert result["summary"] == {"added": 0, "removed": 0, "changed": 2, "unchanged": 6}
    assert result["changed"] == [
        {
            "policy": "security/mobile-spa-policy",
            "constraints": [
                {"field": "token.accessTokenTTL", "before": "10m", "after": "5m"},
                {
                    "field": "redirectUris.allowedHosts",
                    "before": ["*.example.com", "127.0.0.1"],
                    "after": ["*.example.com", "127.0.0.1", "localhost"],
                    "added": ["localhost"],
                    "removed": [],
                },
            ],
        },
        {
            "policy": "security/web-apps-policy",
            "constraints": [{"field": "token.accessTokenTTL", "before": "15m", "after": "1h"}],
        },
    ]
    assert result["settings"] == []
    assert result["modules"] == {"added": [], "removed": [], "changed": []}


def test_diff_lists_added_and_removed_policies_with_their_constraints(
    example_bundle: Path, tmp_path: Path
) -> None:
    folder = edited_policies(tmp_path, {})
    (folder / "device-flow-warn.yaml").unlink()
    (folder / "new.yaml").write_text(
        "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicy\n"
        "metadata: {name: partners, namespace: security}\n"
        "spec:\n  targets: {namespaces: [partner-*]}\n  enforcementAction: warn\n"
        "  allowedGrantTypes: [client_credentials]\n  redirectUris: {requireHttps: true}\n"
    )
    result = diff_bundles(example_bundle, compile_to(folder, tmp_path / "out")).as_json()
    assert result["added"] == [
        {
            "policy": "security/partners",
            "constraints": {
                "enforcementAction": "warn",
                "targets.namespaces": ["partner-*"],
                "allowedGrantTypes": ["client_credentials"],
                "redirectUris.requireHttps": True,
            },
        }
    ]
    assert [p["policy"] for p in result["removed"]] == ["security/device-flow-warn"]
    assert result["removed"][0]["constraints"]["enforcementAction"] == "warn"
    assert result["summary"] == {"added": 1, "removed": 1, "changed": 0, "unchanged": 7}


def test_diff_ignores_what_does_not_change_meaning(example_bundle: Path, tmp_path: Path) -> None:
    """Same durations written differently, lists reordered: no change. Fail-closed off: a setting change."""
    folder = edited_policies(tmp_path, {"web-apps-policy.yaml": _reword_web})
    same = compile_to(folder, tmp_path / "out")
    result = diff_bundles(example_bundle, same)
    assert not result.policies_differ, result.as_json()
    open_result = compile_policies(CompileOptions(paths=[folder], out=tmp_path / "open", fail_closed=False))
    assert open_result.bundle is not None
    opened = diff_bundles(example_bundle, open_result.bundle).as_json()
    assert opened["settings"] == [{"field": "settings.fail_closed", "before": True, "after": False}]


def test_diff_command_text_json_and_exit_code(store: FolderStore, invoke: Invoke) -> None:
    text = invoke("bundle", "diff", "stable", "canary", "--store", store.root)
    assert text.exit_code == 0
    assert text.stdout.splitlines()[1:] == [
        "policies: 0 added, 0 removed, 2 changed, 6 unchanged",
        "~ security/mobile-spa-policy",
        "    token.accessTokenTTL: 10m → 5m",
        "    redirectUris.allowedHosts: [*.example.com, 127.0.0.1] → [*.example.com, 127.0.0.1, localhost]"
        " (added localhost)",
        "~ security/web-apps-policy",
        "    token.accessTokenTTL: 15m → 1h",
    ]
    as_json = invoke("bundle", "diff", "stable", "canary", "--store", store.root, "--format", "json")
    assert json.loads(as_json.stdout)["summary"]["changed"] == 2
    assert invoke("bundle", "diff", "stable", "canary", "--store", store.root, "--exit-code").exit_code == 1
    same = invoke("bundle", "diff", "stable", "stable", "--store", store.root, "--exit-code")
    assert (same.exit_code, same.stdout.splitlines()[-1]) == (0, "no differences")
    missing = invoke("bundle", "diff", "stable", "nope", "--store", store.root)
    assert missing.exit_code == 2
    assert missing.stderr.startswith("nauthera: error: 'nope' is neither a revision nor a channel")


def test_impact_on_examples_lists_exactly_the_changed_clients(
    example_bundle: Path, changed_bundle: Path
) -> None:
    report = impact(example_bundle, changed_bundle, [CLIENTS])
    assert len(report.clients) == 16
    assert [c.client for c in report.of("newly_denied")] == ["team-labs/chat-prototype"]
    assert [c.client for c in report.of("newly_allowed")] == ["team-a/reporting-portal"]
    assert [c.client for c in report.of("reasons_changed")] == ["team-b/desktop-sync"]
    assert len(report.of("unchanged")) == 13
    # Cross-check against plain per-bundle decisions: exactly the clients whose decision changed.
    changed = {
        c.client
        for c in report.clients
        if (c.before["allowed"], c.before["violations"]) != (c.after["allowed"], c.after["violations"])
    }
    assert changed == {"team-labs/chat-prototype", "team-a/reporting-portal", "team-b/desktop-sync"}
    denied = report.of("newly_denied")[0].as_json()
    assert denied["source"].endswith("labs-dryrun.yaml:5")
    assert [(v["policy"], v["field"]) for v in denied["after"]["violations"]] == [
        ("security/mobile-spa-policy", "token.accessTokenTTL")
    ]


def test_impact_command_exit_codes_and_formats(
    store: FolderStore, changed_bundle: Path, invoke: Invoke
) -> None:
    result = invoke("impact", "--store", store.root, "--from", "stable", "--to", "canary", CLIENTS)
    assert result.exit_code == 1, "a newly denied client fails the rollout check"
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "impact of stable → canary on 16 clients: 1 newly denied, 1 newly allowed, "
        "1 denied for different reasons, 13 unchanged"
    )
    assert [line.split(": ", 1)[0] for line in lines if not line.startswith(" ")][1:] == [
        "newly denied",
        "newly allowed",
        "denied for different reasons",
    ]
    as_json = json.loads(
        invoke(
            "impact", "--store", store.root, "--from", "stable", "--to", "canary", CLIENTS, "--format", "json"
        ).stdout
    )
    assert as_json["summary"] == {
        "clients": 16,
        "newly_denied": 1,
        "newly_allowed": 1,
        "reasons_changed": 1,
        "unchanged": 13,
    }
    assert [c["client"] for c in as_json["newly_denied"]] == ["team-labs/chat-prototype"]
    backwards = invoke("impact", "--store", store.root, "--from", "canary", "--to", "stable", CLIENTS)
    assert backwards.exit_code == 1  # reporting-portal becomes denied again
    unchanged = invoke("impact", "--store", store.root, "--from", "stable", "--to", "stable", CLIENTS)
    assert unchanged.exit_code == 0
    assert "0 newly denied, 0 newly allowed, 0 denied for different reasons, 16 unchanged" in unchanged.stdout
    # A freshly compiled bundle file can be compared with what a channel serves, before publishing it.
    file_ref = invoke("impact", "--store", store.root, "--from", "stable", "--to", changed_bundle, CLIENTS)
    assert file_ref.exit_code == 1
    missing = invoke("impact", "--store", store.root, "--from", "stable", "--to", "nope", CLIENTS)
    assert missing.exit_code == 2
