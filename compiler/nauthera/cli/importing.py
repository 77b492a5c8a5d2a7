"""`import keycloak` and `import dcr`: AuthClient YAML on stdout for clients that already exist (SPEC §9).

Exit codes: 2 when an input cannot be read as what the command imports (missing, not UTF-8, not JSON,
JSON of another shape) — then nothing is printed on stdout; 1 when some clients could not be imported
(the others are printed); 0 otherwise. Notes (skipped clients, unknown attributes) never fail an import.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from nauthera.cli.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, errors_exit_2
from nauthera.cli.reporting import diagnostics_text
from nauthera.compile.diagnostics import Level
from nauthera.compile.kubernetes import valid_label_key, valid_label_value
from nauthera.importers.clients import Importer, ImportOutput, import_files
from nauthera.importers.dcr import DcrOptions, import_dcr
from nauthera.importers.keycloak import KeycloakOptions, import_keycloak


def _labels(_context: click.Context, _parameter: click.Parameter, values: Sequence[str]) -> dict[str, str]:
    """`--label K=V`, repeatable; keys and values as Kubernetes accepts them."""
    labels: dict[str, str] = {}
    for text in values:
        key, equals, value = text.partition("=")
        if not equals or not valid_label_key(key) or not valid_label_value(value):
            raise click.BadParameter(
                f"{text!r} is not KEY=VALUE with a Kubernetes label key and value (e.g. tier=prod)"
            )
        if labels.get(key, value) != value:
            raise click.BadParameter(f"label {key!r} is given twice with different values")
        labels[key] = value
    return labels


_PATHS = click.argument(
    "paths", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, allow_dash=True)
)
_NAMESPACE = click.option(
    "--namespace", help="Namespace of every imported client (sanitised into a Kubernetes namespace name)."
)
_LABEL = click.option(
    "--label", "labels", multiple=True, callback=_labels, metavar="KEY=VALUE", help="Label every client."
)


def _import(paths: Sequence[Path], importer: Importer) -> None:
    """Import, then print: the YAML on stdout only when every file could be read."""
    output = import_files(paths, importer)
    findings = [*output.unreadable, *output.diagnostics]
    click.echo(diagnostics_text(findings, _summary(output)), err=True, nl=False)
    if output.failed:
        sys.exit(EXIT_USAGE)
    click.echo(output.yaml, nl=False)
    sys.exit(EXIT_FINDINGS if output.incomplete else EXIT_OK)


def _summary(output: ImportOutput) -> str:
    files = f"{output.files} file{'s' * (output.files != 1)}"
    if output.failed:
        return f"import failed: {len(output.unreadable)} of {files} could not be read; nothing was printed"
    errors = sum(d.level is Level.ERROR for d in output.diagnostics)
    imported = len(output.documents)
    return (
        f"imported {imported} client{'s' * (imported != 1)} from {files}; {output.skipped} skipped, "
        f"{errors} not imported (error{'s' * (errors != 1)} above)"
        if errors
        else f"imported {imported} client{'s' * (imported != 1)} from {files}; {output.skipped} skipped"
    )


@click.group("import")
def import_group() -> None:
    """Print AuthClient YAML for clients that already exist elsewhere, to audit them with `check`."""


@import_group.command("keycloak")
@_PATHS
@_NAMESPACE
@_LABEL
@click.option(
    "--include-builtin", is_flag=True, help="Also import the clients Keycloak creates in every realm."
)
@errors_exit_2
def keycloak_command(
    paths: tuple[Path, ...], namespace: str | None, labels: dict[str, str], include_builtin: bool
) -> None:
    """Import the clients of Keycloak realm exports (REALM.json; `-` reads standard input).

    The namespace is --namespace, else the realm's name.
    """
    options = KeycloakOptions(namespace, labels, include_builtin)
    _import(paths, lambda docs, result: import_keycloak(docs, options, result))


@import_group.command("dcr")
@_PATHS
@_NAMESPACE
@_LABEL
@errors_exit_2
def dcr_command(paths: tuple[Path, ...], namespace: str | None, labels: dict[str, str]) -> None:
    """Import RFC 7591 / OpenID Connect client metadata (METADATA.json; `-` reads standard input).

    The namespace is --namespace, else `default`.
    """
    options = DcrOptions(namespace, labels)
    _import(paths, lambda docs, result: import_dcr(docs, options, result))
