"""The README's brownfield walkthrough is real: its commands, re-run here, print exactly what it shows."""

from __future__ import annotations

import re
from pathlib import Path

from ..conftest import EXAMPLES, REPO, Cli

COMPILE = ["compile", "examples/policies", "--out", "build/brownfield"]
IMPORT = [
    "import",
    "keycloak",
    "examples/brownfield/acme-realm.json",
    "--namespace",
    "team-a",
    "--label",
    "tier=prod",
    "--label",
    "env=prod",
]
CHECK = ["check", "--bundle", "build/brownfield/bundle.tar.gz", "build/brownfield/acme-clients.yaml"]
_REVISION = re.compile(r"\(revision [0-9a-f]+\)")


def _readme_block(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {name} -->\n```[a-z]+\n(.*?)```\n<!-- /{name} -->", text, re.DOTALL)
    assert match, f"README has no {name} block"
    return match.group(1)


def test_the_readme_walkthrough_is_what_the_commands_print(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(EXAMPLES)
    compiled = cli(*COMPILE, cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    imported = cli(*IMPORT, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    (tmp_path / "build" / "brownfield" / "acme-clients.yaml").write_text(imported.stdout)
    checked = cli(*CHECK, cwd=tmp_path)
    assert checked.returncode == 1 and checked.stderr == ""
    session = (
        f"$ nauthera {' '.join(COMPILE)}\n{compiled.stdout}"
        f"$ nauthera {' '.join(IMPORT)} > build/brownfield/acme-clients.yaml\n{imported.stderr}"
        f"$ nauthera {' '.join(CHECK)}\n{checked.stdout}"
    )
    readme = _readme_block("brownfield-walkthrough")
    assert _REVISION.sub("(revision …)", session) == _REVISION.sub("(revision …)", readme)
    assert _readme_block("brownfield-client") in imported.stdout
