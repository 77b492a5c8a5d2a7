"""A compile from PATHs to `--out`: the front end, then each selected target, written all or nothing."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nauthera.compile.analysis import analyse, collector_paused
from nauthera.compile.diagnostics import Diagnostic, Level, Position, has_errors
from nauthera.compile.model import Policy
from nauthera.errors import OutputError
from nauthera.targets.base import CompileOptions, Target
from nauthera.targets.gatekeeper import GatekeeperTarget
from nauthera.targets.opa.target import OpaTarget

#: Every target by its `--target` name, in the order they are staged.
BACKENDS: dict[str, Target] = {target.name: target for target in (OpaTarget(), GatekeeperTarget())}
ALL = "all"
TARGETS = (*BACKENDS, ALL)


@dataclass(frozen=True)
class PreparedPolicy:
    """A valid policy as each selected target prepared it (`Target.prepare`, in a worker process)."""

    id: str
    position: Position
    parts: tuple[Any, ...]


def prepare_for(names: tuple[str, ...], policy: Policy) -> PreparedPolicy:
    return PreparedPolicy(policy.id, policy.position, tuple(BACKENDS[name].prepare(policy) for name in names))


@dataclass
class CompileResult:
    diagnostics: list[Diagnostic] = field(default_factory=list)
    policies: list[PreparedPolicy] = field(default_factory=list)
    #: Each compiled target's main artifact in the output folder, by target name.
    artifacts: dict[str, Path] = field(default_factory=dict)
    revision: str | None = None
    written: bool = False

    @property
    def ok(self) -> bool:
        return self.written

    @property
    def bundle(self) -> Path | None:
        return self.artifacts.get("opa")

    @property
    def gatekeeper(self) -> Path | None:
        return self.artifacts.get("gatekeeper")


def selected(target: str) -> list[Target]:
    if target == ALL:
        return list(BACKENDS.values())
    if target not in BACKENDS:
        raise ValueError(f"unknown target {target!r}")
    return [BACKENDS[target]]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _publish(staging: Path, out: Path) -> None:
    """Move each staged output into `out`; remove owned outputs this compile did not produce."""
    out.mkdir(parents=True, exist_ok=True)
    for relative in (path for target in BACKENDS.values() for path in target.owned):
        staged, target = staging / relative, out / relative
        if not staged.exists():
            _remove(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if staged.is_dir() and (target.exists() or target.is_symlink()):
            # Swap whole folders so no reader ever sees half of the old and half of the new one.
            retired = target.with_name(f".{target.name}.old")
            _remove(retired)
            target.rename(retired)
            staged.rename(target)
            _remove(retired)
        else:
            staged.replace(target)


def compile_policies(options: CompileOptions, on_file: Callable[[Path], None] | None = None) -> CompileResult:
    """Compile to `options.out`; on any error (or warning with fail_on_warn) nothing there changes."""
    targets = selected(options.target)
    with collector_paused():
        return _compile(targets, options, on_file)


def _compile(
    targets: list[Target], options: CompileOptions, on_file: Callable[[Path], None] | None
) -> CompileResult:
    transform = functools.partial(prepare_for, tuple(target.name for target in targets))
    prepared, diagnostics = analyse(options.paths, on_file, transform)
    result = CompileResult(diagnostics=diagnostics, policies=prepared)
    failing = has_errors(diagnostics) or (
        options.fail_on_warn and any(d.level is Level.WARNING for d in diagnostics)
    )
    if failing:
        return result
    try:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        # Targets write into a staging folder beside --out, so any error there leaves --out untouched.
        with tempfile.TemporaryDirectory(prefix=".nauthera-", dir=options.out.parent) as tmp:
            staging = Path(tmp)
            for index, target in enumerate(targets):
                staged = target.stage([p.parts[index] for p in prepared], options, staging)
                result.artifacts[target.name] = options.out / staged.artifact
                result.revision = staged.revision or result.revision
            with _taking_turns(options.out):
                _publish(staging, options.out)
    except OSError as error:
        problem = error.strerror or str(error)
        raise OutputError(f"{options.out}: cannot write the output folder: {problem}") from error
    result.written = True
    return result


@contextlib.contextmanager
def _taking_turns(out: Path) -> Iterator[None]:
    """Compiles into the same folder publish one after the other: each holds an exclusive flock on
    `.<name>.lock` beside the folder (the kernel releases it when a compile dies), so the moves of
    one compile are never interleaved with another's."""
    with (out.parent / f".{out.name or 'out'}.lock").open("a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield
