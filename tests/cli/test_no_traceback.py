"""No command prints a Python traceback, whatever it is given (issue 17).

Every subcommand is found by walking the click group, so a new command or option is covered without
touching this file. Each parameter in turn takes every hostile value of its kind while the others keep
a baseline; a required parameter without a baseline below fails the test until one is added. Servers
are pointed at a port that is already taken, so none of them ever serves.

The walk runs in-process (click's CliRunner; an exception other than SystemExit is a failure) inside
ONE child that runs without root's permission override, so unreadable paths are really unreadable.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner
from nauthera.cli import main

from ..harness.cli import leaf_commands, lock_away, read_only, without_override

REPO = Path(__file__).resolve().parents[2]
GOOD_POLICY = (
    "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthPolicy\n"
    "metadata: {name: good, namespace: security}\nspec:\n  allowedGrantTypes: [authorization_code]\n"
)
CLIENT = (
    "apiVersion: auth.nauthera.io/v1alpha1\nkind: AuthClient\n"
    "metadata: {name: app, namespace: team-a}\nspec:\n  grantTypes: [authorization_code]\n"
)
HOSTILE_TEXT = ("", "x" * 100_000, "../../escape", "caf\udce9", "99999999999999999999", "-1", "1e309")
EXIT_CODES = {0, 1, 2}


#: Missing, a directory where a file belongs, empty, binary, non-UTF-8, a tar.gz that is no bundle,
#: unreadable, read-only, below a file, a name too long, a name that is not UTF-8.
HOSTILE_PATHS = (
    "missing",
    "a-directory",
    "empty.yaml",
    "garbage.bin",
    "non-utf8.yaml",
    "not-a-bundle.tar.gz",
    "unreadable.yaml",
    "unreadable-dir",
    "read-only",
    "empty.yaml/below",
    "x" * 300,
    "caf\udce9.yaml",
)


def make_hostile_paths(root: Path) -> None:
    root.mkdir()
    (root / "a-directory").mkdir()
    (root / "empty.yaml").write_bytes(b"")
    (root / "garbage.bin").write_bytes(random.Random(17).randbytes(4096))
    (root / "non-utf8.yaml").write_bytes(b"apiVersion: auth.nauthera.io/v1alpha1\nkind: caf\xe9\n")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("policy.yaml")
        info.size = len(GOOD_POLICY)
        tar.addfile(info, io.BytesIO(GOOD_POLICY.encode()))
    (root / "not-a-bundle.tar.gz").write_bytes(raw.getvalue())
    (root / "unreadable.yaml").write_text(GOOD_POLICY)
    (root / "unreadable-dir").mkdir()
    (root / "unreadable-dir" / "p.yaml").write_text(GOOD_POLICY)
    (root / "read-only").mkdir()
    # A name that is not UTF-8, holding a mistake, so the name reaches stdout in a diagnostic.
    (root / "caf\udce9.yaml").write_text(GOOD_POLICY.replace("allowedGrantTypes", "allowedGrantType"))
    lock_away(root / "unreadable.yaml")
    lock_away(root / "unreadable-dir")
    read_only(root / "read-only")


def make_baselines(work: Path) -> None:
    """A policy and a client, their bundle published to a store, an HMAC key."""
    mixed, store, bundle = work / "mixed", work / "store", work / "build" / "bundle.tar.gz"
    mixed.mkdir()
    (mixed / "policy.yaml").write_text(GOOD_POLICY)
    (mixed / "client.yaml").write_text(CLIENT)
    (work / "hmac.key").write_text("a-shared-secret-that-is-long-enough-for-hs256")
    for args in (
        ["compile", str(mixed), "--out", str(bundle.parent)],
        ["bundle", "publish", str(bundle), "--store", str(store)],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output


def _hostile_values(param: click.Parameter, paths: list[Path]) -> list[str]:
    if isinstance(param, click.Option) and param.is_flag:
        return []
    if isinstance(param.type, click.Choice):
        return ["bogus"]
    if isinstance(param.type, click.Path):
        return [str(p) for p in paths]
    return list(HOSTILE_TEXT)


def _argv(command: click.Command, values: dict[str, str]) -> list[str]:
    options, arguments = [], []
    for param in command.params:
        if param.name in values:
            if isinstance(param, click.Argument):
                arguments.append(values[param.name])
            else:
                options += [param.opts[0], values[param.name]]
    return [*options, "--", *arguments]


def _baselines(work: Path, busy: str, closed: str) -> dict[str, str]:
    """A value for every parameter that must be given, or that would otherwise reach the network."""
    mixed, store, bundle = work / "mixed", work / "store", work / "build" / "bundle.tar.gz"
    return {
        "paths": str(mixed),
        "sources": str(mixed),
        "out": str(work / "out"),
        "bundle": str(bundle),
        "bundle_file": str(bundle),
        "store": str(store),
        "store_dir": str(store),
        "ref": "stable",
        "ref_a": "stable",
        "ref_b": str(bundle),
        "from_ref": "stable",
        "to_ref": str(bundle),
        "channel": "canary",
        "keep": "5",
        "key_file": str(work / "hmac.key"),
        "listen": busy,
        "server": closed,
    }


def hostile_walk(work: Path) -> dict[str, Any]:
    """Run every command with every hostile value; what went wrong, and how many runs there were.

    It runs in a folder of its own: a hostile value such as `--store -1` is a valid relative path, and
    what commands create there must not land in the checkout."""
    (work / "cwd").mkdir(exist_ok=True)
    os.chdir(work / "cwd")
    paths = [work / "hostile" / name for name in HOSTILE_PATHS]
    with socket.socket() as taken, socket.socket() as released:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        released.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{released.getsockname()[1]}"
        released.close()
        baselines = _baselines(work, f"127.0.0.1:{taken.getsockname()[1]}", closed)
        problems, runs, commands = [], 0, []
        for path, command in leaf_commands(main):
            commands.append(" ".join(path))
            given = {p.name: baselines[p.name] for p in command.params if p.name in baselines}
            missing = [p.name for p in command.params if p.required and p.name not in given]
            if missing:
                problems.append(f"{' '.join(path)}: add a baseline for {missing}")
                continue
            for param in command.params:
                for value in _hostile_values(param, paths):
                    argv = [*path, *_argv(command, {**given, str(param.name): value})]
                    result = CliRunner().invoke(main, argv)
                    logging.getLogger().handlers.clear()  # a fresh process would start without them
                    runs += 1
                    output = result.output + (result.stderr or "")
                    exception = result.exception
                    if (
                        (exception is not None and not isinstance(exception, SystemExit))
                        or result.exit_code not in EXIT_CODES
                        or "Traceback" in output
                    ):
                        shown = [a if len(a) < 60 else a[:30] + "…" + a[-20:] for a in argv]
                        problems.append(
                            f"{shown}: exit {result.exit_code}, {type(exception).__name__}: "
                            f"{str(exception)[:300]} {output[-300:]!r}"
                        )
    return {"runs": runs, "commands": commands, "problems": problems}


def test_no_command_prints_a_traceback_for_hostile_input(tmp_path: Path) -> None:
    make_hostile_paths(tmp_path / "hostile")
    make_baselines(tmp_path)
    completed = subprocess.run(
        [*without_override(), sys.executable, "-m", "tests.cli.test_no_traceback", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.splitlines()[-1])
    walked = {" ".join(path) for path, _ in leaf_commands(main)}
    assert set(report["commands"]) == walked
    assert report["runs"] > 10 * len(walked)
    assert report["problems"] == [], "\n".join(report["problems"])


if __name__ == "__main__":  # the child half of the test: only the walk, without root's override
    print(json.dumps(hostile_walk(Path(sys.argv[1]))))
