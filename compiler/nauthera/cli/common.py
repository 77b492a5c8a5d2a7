"""What every command shares: exit codes, the store option, and how a program error reaches the user."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from click.core import ParameterSource
from click.decorators import FC

from nauthera.errors import NautheraError

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
DEFAULT_STORE = Path("bundles")

P = ParamSpec("P")
R = TypeVar("R")


def store_option(command: Callable[..., R]) -> Callable[..., R]:
    """`--store DIR|oci://HOST[:PORT]/REPO|oci+http://...` (env NAUTHERA_STORE) and `--registry-ca FILE`
    for every command that reads or writes the bundle store: the command gets the opened store as
    `store` (opening reads nothing; the first read or write reports what is wrong)."""

    @functools.wraps(command)
    def wrapper(*args: Any, store: str, registry_ca: Path | None, **kwargs: Any) -> R:
        source = click.get_current_context().get_parameter_source("registry_ca")
        if source is ParameterSource.ENVIRONMENT and not store.startswith(("oci://", "oci+http://")):
            registry_ca = None  # NAUTHERA_REGISTRY_CA set for registries; this command uses a folder
        # Imported here: `compile` and `check` share this module and need no store (nor its signing code).
        from nauthera.store.base import open_store  # noqa: PLC0415

        try:
            opened = open_store(store, registry_ca=registry_ca)
        except NautheraError as error:
            fail(error)
        return command(*args, store=opened, **kwargs)

    wrapper = click.option(
        "--registry-ca",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        envvar="NAUTHERA_REGISTRY_CA",
        help="PEM CA certificate(s) to trust for an oci:// store, besides the system's.",
    )(wrapper)
    return click.option(
        "--store",
        "store",
        default=str(DEFAULT_STORE),
        envvar="NAUTHERA_STORE",
        show_default=True,
        help="Bundle store: a folder, oci://HOST[:PORT]/REPOSITORY or oci+http://... (env NAUTHERA_STORE).",
    )(wrapper)


def format_option(
    formats: Sequence[str], help: str = "text for people, json for scripts."
) -> Callable[[FC], FC]:
    """`--format` with a fixed set of values (an unknown one is a usage error, never a fallback)."""
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(formats),
        default="text",
        show_default=True,
        help=help,
    )


def fail(error: NautheraError | OSError | str) -> NoReturn:
    """`nauthera: error: ...` on stderr and exit code 2."""
    if isinstance(error, OSError) and error.filename is not None:
        error = f"{error.filename}: {error.strerror or error}"
    click.echo(f"nauthera: error: {error}", err=True)
    sys.exit(EXIT_USAGE)


def errors_exit_2(command: Callable[P, R]) -> Callable[P, R]:
    """Every NautheraError a command raises, and every I/O error the environment causes (a path too long,
    a folder where a file belongs, a full disk), becomes `nauthera: error: ...` and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (NautheraError, OSError) as error:
            fail(error)

    return wrapper
