"""`compile --format sarif` passes Microsoft's SARIF validator without an error or warning (issue 17, item 7).

The validator is `sarif-multitool` (npm `@microsoft/sarif-multitool`, a self-contained .NET binary),
pinned in tools/sarif and installed by `make sarif-tool`; when it is missing the test fails.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from ..harness.cli import nauthera

REPO = Path(__file__).resolve().parents[2]
ODD = "sp ace,x:y%z #1"
BAD_POLICY = (
    "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: bad, namespace: s}\n"
    "spec:\n  allowedScope: [openid]\n  redirectUris: {allowLoopback: true}\n---\n"
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n"
)


def sarif_multitool() -> Path:
    found = sorted(
        (REPO / "tools" / "sarif" / "node_modules" / "@microsoft").glob("sarif-multitool-*/Sarif.Multitool")
    )
    assert found, "sarif-multitool is missing: run `make sarif-tool` (needs Node.js and npm)"
    return found[0]


def _validate(logs: list[Path], output: Path) -> list[dict[str, Any]]:
    """Every result sarif-multitool reports on `logs`, at all levels."""
    options = ["--output", str(output), "--log", "ForceOverwrite", "--level", "Error;Warning;Note"]
    completed = subprocess.run(
        [str(sarif_multitool()), "validate", *map(str, logs), *options],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert output.is_file(), completed.stdout + completed.stderr
    results: list[dict[str, Any]] = json.loads(output.read_text(encoding="utf-8-sig"))["runs"][0]["results"]
    return results


def _file_of(run: dict[str, Any], location: dict[str, Any]) -> Path:
    """The local file a result location names, resolved the way a SARIF consumer does."""
    artifact = location["physicalLocation"]["artifactLocation"]
    uri = artifact["uri"]
    if "uriBaseId" in artifact:
        uri = urljoin(run["originalUriBaseIds"][artifact["uriBaseId"]]["uri"], uri)
    parts = urlsplit(uri)
    assert parts.scheme == "file", uri
    return Path(unquote(parts.path))


def test_sarif_passes_microsofts_validator_for_relative_absolute_and_odd_paths(tmp_path: Path) -> None:
    for folder in ("policies", ODD):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "bad.yaml").write_text(BAD_POLICY, encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "linked").symlink_to(tmp_path / "policies", target_is_directory=True)
    inputs = {
        "relative": "policies",
        "absolute": str(tmp_path / "policies"),
        "relative-odd": ODD,
        "absolute-odd": str(tmp_path / ODD),
        "folder-level": "empty",
    }
    logs = []
    for name, path in inputs.items():
        completed = nauthera("compile", path, "--out", "out", "--format", "sarif", cwd=tmp_path)
        assert completed.returncode in (0, 1), completed.stderr
        log = tmp_path / f"{name}.sarif"
        log.write_text(completed.stdout, encoding="utf-8")
        logs.append(log)

        (run,) = json.loads(completed.stdout)["runs"]
        assert run["results"], name
        for result in run["results"]:
            target = _file_of(run, result["locations"][0])
            assert target.exists(), f"{name}: {target}"
            assert target.resolve().is_relative_to(tmp_path.resolve())
        for rule in run["tool"]["driver"]["rules"]:
            assert re.fullmatch(r"(?:[A-Z][a-z0-9]*)+", rule["name"]), rule["name"]
            assert rule["name"].lower() != rule["id"].lower()
            assert rule["shortDescription"]["text"] not in ("", rule["id"])

    reported = _validate(logs, tmp_path / "validation.sarif")
    problems = [r for r in reported if r.get("level", "warning") in ("error", "warning")]
    assert problems == [], json.dumps(problems, indent=2)[:4000]
