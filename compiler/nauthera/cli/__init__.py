"""The command line: the only place that formats findings and picks exit codes (0, 1 findings, 2 usage).

One module per command family; this one assembles the `nauthera` group.
"""

from __future__ import annotations

import io
import sys

import click

from nauthera import __version__
from nauthera.cli.compile import check_command, compile_command, test_command
from nauthera.cli.explain import explain_command
from nauthera.cli.importing import import_group
from nauthera.cli.operator import inventory_command, operator_command
from nauthera.cli.serve import agents_command, decisions_command, serve_command, sidecar_command
from nauthera.cli.store import bundle as bundle_group
from nauthera.cli.store import impact_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nauthera")
def main() -> None:
    """Compile AuthPolicy YAML into OPA bundles and check AuthClients against them."""
    # A file name that is not UTF-8 arrives as surrogates (PEP 383); print it back as the same bytes,
    # as ls and cat do, instead of failing on a locale whose stdout is strict.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")


for _command in (
    compile_command,
    check_command,
    test_command,
    explain_command,
    import_group,
    bundle_group,
    impact_command,
    serve_command,
    sidecar_command,
    agents_command,
    decisions_command,
    operator_command,
    inventory_command,
):
    main.add_command(_command)
