"""The command line: the only place that formats findings and picks exit codes (0, 1 findings, 2 usage).

One module per command family; this one assembles the `nauthera` group.
"""

from __future__ import annotations

import importlib
import io
import sys

import click

from nauthera import __version__

#: Command name → (module, attribute). A command's module is imported only when that command runs (or
#: `--help` lists them all), so `nauthera check` in CI does not pay for the server, the operator's
#: Kubernetes client or the signing libraries.
COMMANDS: dict[str, tuple[str, str]] = {
    "agents": ("nauthera.cli.serve", "agents_command"),
    "bundle": ("nauthera.cli.store", "bundle"),
    "check": ("nauthera.cli.compile", "check_command"),
    "compile": ("nauthera.cli.compile", "compile_command"),
    "decisions": ("nauthera.cli.serve", "decisions_command"),
    "explain": ("nauthera.cli.explain", "explain_command"),
    "impact": ("nauthera.cli.store", "impact_command"),
    "import": ("nauthera.cli.importing", "import_group"),
    "inventory": ("nauthera.cli.operator", "inventory_command"),
    "operator": ("nauthera.cli.operator", "operator_command"),
    "serve": ("nauthera.cli.serve", "serve_command"),
    "sidecar": ("nauthera.cli.serve", "sidecar_command"),
    "test": ("nauthera.cli.compile", "test_command"),
}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use (see `COMMANDS`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nauthera")
def main() -> None:
    """Compile AuthPolicy YAML into OPA bundles and check AuthClients against them."""
    # A file name that is not UTF-8 arrives as surrogates (PEP 383); print it back as the same bytes,
    # as ls and cat do, instead of failing on a locale whose stdout is strict.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
