"""The command line as users and CI run it: `python -m nauthera` in a subprocess, never with a traceback.

Permission cases need a user without root's override: the suite runs as root, so `unprivileged=True`
drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH for the child with util-linux `setpriv`. A missing
`setpriv` fails the test (it never skips), and `lock_away` proves the override is really gone.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import click


def without_override() -> list[str]:
    """The command prefix that runs a child without root's permission override (none when not root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is required to test permissions as root; install util-linux"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


def _limits(default_stack: bool, file_size: int | None) -> None:
    """In the child: pin the stack at the common 8 MiB default so a crash does not depend on
    `ulimit -s`, and cap the size of files it writes."""
    if default_stack:
        _soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
        limit = 8 * 1024 * 1024
        if hard == resource.RLIM_INFINITY or hard >= limit:
            resource.setrlimit(resource.RLIMIT_STACK, (limit, hard))
    if file_size is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))


def nauthera(
    *args: str | Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    default_stack: bool = False,
    unprivileged: bool = False,
    file_size_limit: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real command line; never let a traceback pass unnoticed. `file_size_limit` (bytes) makes
    every larger write fail in the child (RLIMIT_FSIZE: EFBIG), as a disk filling up would."""
    environment = dict(os.environ)
    environment.update(env or {})
    prefix = without_override() if unprivileged else []
    completed = subprocess.run(
        [*prefix, sys.executable, "-m", "nauthera", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        check=False,
        timeout=300,
        preexec_fn=functools.partial(_limits, default_stack, file_size_limit),
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stdout, completed.stdout
    return completed


_PROBE = """
import os, sys
action, path = sys.argv[1], sys.argv[2]
try:
    if action == "write":
        open(os.path.join(path, ".probe"), "xb").close()
    elif os.path.isdir(path):
        os.listdir(path)
    else:
        open(path, "rb").close()
except PermissionError:
    sys.exit(0)
sys.exit(1)
"""


def _prove_denied(action: str, path: Path) -> Path:
    completed = subprocess.run(
        [*without_override(), sys.executable, "-c", _PROBE, action, str(path)], check=False, timeout=60
    )
    assert completed.returncode == 0, f"{path}: {action} still works without root's override"
    return path


def lock_away(path: Path) -> Path:
    """chmod 000 `path` and prove that an unprivileged child really cannot read it."""
    path.chmod(0)
    return _prove_denied("read", path)


def read_only(folder: Path) -> Path:
    """Make `folder` and everything below it read-only, and prove an unprivileged child cannot write."""
    for path in sorted(folder.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    folder.chmod(0o555)
    return _prove_denied("write", folder)


def write(root: Path, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def leaf_commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command below `group` with its path of names (`("bundle", "publish")`), in name order."""
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command
