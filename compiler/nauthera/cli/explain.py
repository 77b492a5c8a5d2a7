"""`explain`: every policy's effective constraints after baselines, for people or scripts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from nauthera.cli.common import EXIT_FINDINGS, EXIT_OK, errors_exit_2, format_option
from nauthera.cli.reporting import count_line, diagnostics_text
from nauthera.compile.analysis import analyse
from nauthera.compile.diagnostics import has_errors
from nauthera.compile.explain import explain
from nauthera.compile.model import Policy


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "(none)"
    return str(value)


def _origin_text(constraint: dict[str, Any]) -> str:
    origin = constraint["origin"]
    names = ", ".join(constraint.get("baselines", ()))
    baseline = f"baseline {names}" if len(constraint.get("baselines", ())) == 1 else f"baselines {names}"
    if origin == "explicit":
        return "explicit"
    if origin == "baseline":
        return baseline
    if origin == "same":
        return f"explicit, same as {baseline}"
    if origin == "tightened":
        return f"explicit, tightens {baseline} ({_shown(constraint['baseline'])})"
    no_effect = _shown(constraint["no_effect"])
    if origin == "overridden":
        return f"{baseline}; explicit {no_effect} has no effect"
    return f"explicit ∩ {baseline}; {no_effect} has no effect"


def explain_text(explained: list[dict[str, Any]]) -> str:
    blocks = []
    for policy in explained:
        baselines = ", ".join(policy["baselines"]) or "none"
        lines = [
            f"{policy['policy']} ({policy['source']}): {policy['enforcementAction']}, baselines: {baselines}"
        ]
        width = max((len(c["field"]) for c in policy["constraints"]), default=0)
        lines.extend(
            f"  {c['field']:<{width}}  {_shown(c['value'])}  [{_origin_text(c)}]"
            for c in policy["constraints"]
        )
        if not policy["constraints"]:
            lines.append("  (no constraints: the policy only governs its targets)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@click.command("explain")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@format_option(["text", "json"])
@errors_exit_2
def explain_command(paths: tuple[Path, ...], output_format: str) -> None:
    """Print each policy's effective constraints after its baselines, marking which came from a
    baseline and where an explicit field tightened it. Policy errors and warnings go to stderr; exit 1
    when a policy has errors (only valid policies are explained)."""
    policies: list[Policy]
    policies, diagnostics = analyse(list(paths))
    explained = explain(policies)
    if diagnostics:
        click.echo(diagnostics_text(diagnostics, count_line(diagnostics)), err=True, nl=False)
    if output_format == "json":
        click.echo(json.dumps({"ok": not has_errors(diagnostics), "policies": explained}, indent=2))
    elif explained:
        click.echo(explain_text(explained))
    sys.exit(EXIT_FINDINGS if has_errors(diagnostics) else EXIT_OK)
