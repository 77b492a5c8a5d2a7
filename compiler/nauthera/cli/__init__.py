"""The command line: the only place that formats findings and picks exit codes (0, 1 findings, 2 usage).

One module per command family; this one assembles the `nauthera` group.
"""

from __future__ import annotations

import click

from nauthera import __version__
from nauthera.cli.compile import check_command, compile_command, test_command
from nauthera.cli.operator import inventory_command, operator_command
from nauthera.cli.serve import agents_command, decisions_command, serve_command, sidecar_command
from nauthera.cli.store import bundle as bundle_group
from nauthera.cli.store import impact_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nauthera")
def main() -> None:
    """Compile AuthPolicy YAML into OPA bundles and check AuthClients against them."""


for _command in (
    compile_command,
    check_command,
    test_command,
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
