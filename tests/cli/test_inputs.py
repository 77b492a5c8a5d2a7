"""What `compile` and `check` read: every policy and client, or a clear word why not (issue 17, items 1-3).

A folder that cannot be read is an I/O error like an unreadable file; a document with an error is never
allowed; an input that yields no policy warns instead of silently denying every client.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ..conftest import EXAMPLES
from ..harness.cli import lock_away, nauthera

POLICY = EXAMPLES / "policies" / "web-apps-policy.yaml"
CLIENT = EXAMPLES / "clients" / "web-shop-ok.yaml"


def _folder_with_a_locked_subfolder(root: Path, source: Path) -> Path:
    """`root/ok.yaml` readable, `root/locked/x.yaml` (a second document) in a folder nobody may list."""
    (root / "locked").mkdir(parents=True)
    shutil.copy(source, root / "ok.yaml")
    text = source.read_text(encoding="utf-8")
    (root / "locked" / "x.yaml").write_text(text.replace("name: ", "name: locked-", 1), encoding="utf-8")
    lock_away(root / "locked")
    return root


def test_unreadable_folder_fails_the_compile_instead_of_dropping_its_policies(tmp_path: Path) -> None:
    _folder_with_a_locked_subfolder(tmp_path / "d", POLICY)
    completed = nauthera("compile", "d", "--out", "o", cwd=tmp_path, unprivileged=True)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith("nauthera: error: d/locked: cannot read"), completed.stderr
    assert "Permission denied" in completed.stderr
    assert not (tmp_path / "o").exists()


def test_unreadable_folder_fails_check_instead_of_dropping_its_clients(
    tmp_path: Path, example_bundle: Path
) -> None:
    _folder_with_a_locked_subfolder(tmp_path / "c", CLIENT)
    completed = nauthera("check", "--bundle", example_bundle, "c", cwd=tmp_path, unprivileged=True)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith("nauthera: error: c/locked: cannot read"), completed.stderr


def test_client_document_with_an_error_is_never_allowed(tmp_path: Path, example_bundle: Path) -> None:
    (tmp_path / "c").mkdir()
    shutil.copy(CLIENT, tmp_path / "c" / "ok.yaml")
    duplicated = CLIENT.read_text(encoding="utf-8") + "metadata: {name: other, namespace: team-a}\n"
    (tmp_path / "c" / "dup.yaml").write_text(duplicated, encoding="utf-8")
    completed = nauthera("check", "--bundle", example_bundle, "c", "--format", "json", cwd=tmp_path)
    assert completed.returncode == 1
    results = {Path(r["source"]).name.split(":")[0]: r for r in json.loads(completed.stdout)["results"]}
    assert results["ok.yaml"]["allowed"] is True, "the same client without the duplicate key is allowed"
    denied = results["dup.yaml"]
    assert denied["allowed"] is False
    assert denied["policies"] == []
    assert [(v["policy"], v["field"]) for v in denied["violations"]] == [(None, "document")]
    assert "[yaml-duplicate-key]" in denied["violations"][0]["message"]
    assert "c/dup.yaml:" in denied["violations"][0]["message"]
    assert "[yaml-duplicate-key]" in completed.stderr


@pytest.mark.parametrize("layout", ["readme-only", "empty-yaml", "clients-only"])
def test_input_without_policies_warns_that_every_client_is_ungoverned(tmp_path: Path, layout: str) -> None:
    (tmp_path / "d").mkdir()
    if layout == "readme-only":
        (tmp_path / "d" / "readme.txt").write_text("policies live elsewhere\n")
    elif layout == "empty-yaml":
        (tmp_path / "d" / "a.yaml").write_text("")
        (tmp_path / "d" / "b.yml").write_text("---\n# nothing\n---\n")
    else:
        shutil.copy(CLIENT, tmp_path / "d")
    completed = nauthera("compile", "d", "--out", "o", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "d:1:1: warning: no AuthPolicy found in d (" in completed.stdout
    assert "[no-policies]" in completed.stdout
    assert "compiled 0 policies" in completed.stdout
    strict = nauthera("compile", "d", "--out", "strict", "--fail-on-warn", cwd=tmp_path)
    assert strict.returncode == 1
    assert not (tmp_path / "strict").exists()


def test_symlinked_folders_and_files_are_followed_like_opa_build(tmp_path: Path) -> None:
    """Policies reached only through links compile; a link back up is read once and cannot loop."""
    (tmp_path / "real" / "more").mkdir(parents=True)
    shutil.copy(POLICY, tmp_path / "real" / "p.yaml")
    other = POLICY.read_text(encoding="utf-8").replace("name: ", "name: other-", 1)
    (tmp_path / "real" / "more" / "q.yaml").write_text(other, encoding="utf-8")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "d" / "p.yaml").symlink_to(tmp_path / "real" / "p.yaml")
    (tmp_path / "real" / "more" / "up").symlink_to(tmp_path / "real", target_is_directory=True)
    completed = nauthera("compile", "d", "--out", "o", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "compiled 2 policies" in completed.stdout
    assert "0 errors, 0 warnings" in completed.stdout
