"""What every command shares: exit codes and the one way a program error reaches the user."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

import click

from nauthera.errors import NautheraError

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2

P = ParamSpec("P")
R = TypeVar("R")


def fail(error: NautheraError | str) -> NoReturn:
    """`nauthera: error: ...` on stderr and exit code 2."""
    click.echo(f"nauthera: error: {error}", err=True)
    sys.exit(EXIT_USAGE)


def errors_exit_2(command: Callable[P, R]) -> Callable[P, R]:
    """Every NautheraError a command raises becomes `nauthera: error: ...` and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except NautheraError as error:
            fail(error)

    return wrapper
