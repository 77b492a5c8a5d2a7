"""Output formats. Each reporter turns findings into text; none decides exit codes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nauthera import __version__
from nauthera.compile.diagnostics import Diagnostic, Level, describe
from nauthera.engines.check import ClientResult

DIAGNOSTIC_FORMATS = ("text", "json", "sarif", "github")
CHECK_FORMATS = ("text", "json")
_SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
#: Relative paths in SARIF are relative to where the compile ran (the checkout root in CI).
_SRCROOT = "%SRCROOT%"


def _diagnostic_json(d: Diagnostic) -> dict[str, Any]:
    return {
        "level": str(d.level),
        "file": d.position.file,
        "line": d.position.line,
        "column": d.position.column,
        "code": d.code,
        "message": d.message,
    }


def diagnostics_text(diagnostics: Sequence[Diagnostic], summary: str) -> str:
    lines = [f"{d.position}: {d.level}: {d.message} [{d.code}]" for d in diagnostics]
    return "\n".join([*lines, summary]) + "\n"


def diagnostics_json(diagnostics: Sequence[Diagnostic], summary: dict[str, Any]) -> str:
    document = {"ok": summary["ok"], "diagnostics": [_diagnostic_json(d) for d in diagnostics], **summary}
    return json.dumps(document, indent=2) + "\n"


def _artifact_location(file: str) -> dict[str, str]:
    """A percent-encoded URI: `file://` for absolute paths, else relative to %SRCROOT% (the run's folder)."""
    path = Path(file)
    if path.is_absolute():
        return {"uri": path.as_uri()}
    return {"uri": quote(os.fsencode(path.as_posix()), safe="/"), "uriBaseId": _SRCROOT}


def _rule(code: str) -> dict[str, Any]:
    """SARIF wants a stable `id` and a readable, different `name`: `unknown-field` is UnknownField."""
    name, description = describe(code)
    return {"id": code, "name": name, "shortDescription": {"text": description}}


def diagnostics_sarif(diagnostics: Sequence[Diagnostic], summary: dict[str, Any]) -> str:
    """SARIF 2.1.0, as code-scanning UIs ingest it; notes stay notes."""
    codes = sorted({d.code for d in diagnostics})
    run = {
        "tool": {
            "driver": {
                "name": "nauthera",
                "version": __version__,
                "informationUri": "https://nauthera.io",
                "rules": [_rule(code) for code in codes],
            }
        },
        "originalUriBaseIds": {_SRCROOT: {"uri": Path.cwd().as_uri() + "/"}},
        "invocations": [{"executionSuccessful": bool(summary["ok"])}],
        "results": [
            {
                "ruleId": d.code,
                "ruleIndex": codes.index(d.code),
                "level": str(d.level),
                "message": {"text": d.message},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": _artifact_location(d.position.file),
                            "region": {"startLine": d.position.line, "startColumn": d.position.column},
                        }
                    }
                ],
            }
            for d in diagnostics
        ],
    }
    return json.dumps({"$schema": _SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2) + "\n"


def _github_escape(text: str, in_property: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if in_property else text


def diagnostics_github(diagnostics: Sequence[Diagnostic], summary: str) -> str:
    """GitHub Actions workflow commands: annotations on the offending lines."""
    command = {Level.ERROR: "error", Level.WARNING: "warning", Level.NOTE: "notice"}
    lines = [
        f"::{command[d.level]} file={_github_escape(d.position.file, True)},line={d.position.line},"
        f"col={d.position.column},title={_github_escape(d.code, True)}::{_github_escape(d.message)}"
        for d in diagnostics
    ]
    return "\n".join([*lines, summary]) + "\n"


def render_diagnostics(
    fmt: str, diagnostics: Sequence[Diagnostic], summary: dict[str, Any], summary_line: str
) -> str:
    renderers: dict[str, Callable[[], str]] = {
        "text": lambda: diagnostics_text(diagnostics, summary_line),
        "json": lambda: diagnostics_json(diagnostics, summary),
        "sarif": lambda: diagnostics_sarif(diagnostics, summary),
        "github": lambda: diagnostics_github(diagnostics, summary_line),
    }
    return renderers[fmt]()


def count_line(diagnostics: Sequence[Diagnostic]) -> str:
    errors = sum(d.level is Level.ERROR for d in diagnostics)
    warnings = sum(d.level is Level.WARNING for d in diagnostics)
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


def _entry_line(marker: str, entry: dict[str, Any]) -> str:
    return f"    {marker} {entry['field']}: {entry['message']}"


def check_text(results: Sequence[ClientResult]) -> str:
    lines: list[str] = []
    for result in results:
        verdict = "allowed" if result.allowed else "DENIED"
        lines.append(f"{result.source}: {result.client}: {verdict}")
        decision = result.decision
        lines.extend(_entry_line("✗", e) for e in decision.get("violations", []))
        lines.extend(_entry_line("!", e) for e in decision.get("warnings", []))
        lines.extend(_entry_line("~ dryrun", e) for e in decision.get("dryrun", []))
    denied = sum(not r.allowed for r in results)
    lines.append(f"{len(results)} client{'s' * (len(results) != 1)} checked, {denied} denied")
    return "\n".join(lines) + "\n"


def check_json(results: Sequence[ClientResult]) -> str:
    return json.dumps({"results": [r.as_json() for r in results]}, indent=2) + "\n"
