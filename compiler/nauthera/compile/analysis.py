"""Front end across files: load → validate → model for every input file, in parallel when it pays.

What comes out is the valid policies and every diagnostic; the targets (`nauthera.targets`) take it
from there.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nauthera.compile.diagnostics import Diagnostic, Level, Position, has_errors, sorted_diagnostics
from nauthera.compile.loading import discover, load_file
from nauthera.compile.model import Policy, build_policy
from nauthera.compile.validation import (
    PolicyIdentity,
    check_policy,
    classify,
    duplicate_diagnostics,
    policy_identity,
)

#: Below this much YAML, starting worker processes costs more than it saves.
PARALLEL_MIN_BYTES = 2 * 1024 * 1024
MAX_WORKERS = 4


def count_files(paths: Sequence[Path]) -> int:
    return len(discover(paths))


@dataclass(frozen=True)
class FileAnalysis:
    """One file taken through load, validate and model: what a worker process hands back."""

    policies: tuple[Policy, ...]
    diagnostics: tuple[Diagnostic, ...]
    identities: tuple[PolicyIdentity, ...]


def analyse_file(file: Path) -> FileAnalysis:
    loaded = load_file(file)
    classified = classify(loaded.documents)
    diagnostics = [*loaded.diagnostics, *classified.diagnostics]
    diagnostics.extend(
        Diagnostic(Level.NOTE, doc.start, "skipped", "skipped AuthClient: `nauthera check` evaluates clients")
        for doc in classified.clients
    )
    policies, identities = [], []
    for doc in classified.policies:
        problems = check_policy(doc)
        diagnostics.extend(problems)
        if not any(p.level is Level.ERROR for p in problems):
            policies.append(build_policy(doc))
        identity = policy_identity(doc)
        if identity is not None:
            identities.append(identity)
    return FileAnalysis(tuple(policies), tuple(diagnostics), tuple(identities))


def _analyse_files(files: list[Path], on_file: Callable[[Path], None] | None) -> Iterator[FileAnalysis]:
    """In file order; over all cores when the input is large enough to repay starting workers.

    Workers are spawned, not forked: the sidecar compiles from a thread, and forking a threaded
    process can deadlock.
    """
    workers = min(os.cpu_count() or 1, MAX_WORKERS)
    if workers < 2 or sum(f.stat().st_size for f in files) < PARALLEL_MIN_BYTES:
        for file in files:
            yield analyse_file(file)
            if on_file:
                on_file(file)
        return
    context = multiprocessing.get_context("spawn")
    # Few large chunks: with one task per small file, pickling round trips cost more than parsing.
    chunk = max(1, len(files) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for file, analysis in zip(files, pool.map(analyse_file, files, chunksize=chunk), strict=True):
            yield analysis
            if on_file:
                on_file(file)


def _no_policies(paths: Sequence[Path], files: int) -> Diagnostic:
    """An input without a single policy makes a bundle that decides every client as ungoverned: almost
    always a wrong path, so it is said rather than compiled in silence."""
    return Diagnostic(
        Level.WARNING,
        Position(str(paths[0]), 1, 1),
        "no-policies",
        f"no AuthPolicy found in {', '.join(map(str, paths))} ({files} YAML file{'s' * (files != 1)} read); "
        "every client is ungoverned (denied unless --default-allow): check the path",
    )


def analyse(
    paths: Sequence[Path],
    on_file: Callable[[Path], None] | None = None,
) -> tuple[list[Policy], list[Diagnostic]]:
    """Everything short of writing: the valid policies and every diagnostic."""
    policies: list[Policy] = []
    diagnostics: list[Diagnostic] = []
    identities: list[PolicyIdentity] = []
    files = discover(paths)
    for analysis in _analyse_files(files, on_file):
        policies.extend(analysis.policies)
        diagnostics.extend(analysis.diagnostics)
        identities.extend(analysis.identities)
    if not policies and not has_errors(diagnostics):
        diagnostics.append(_no_policies(paths, len(files)))
    duplicates = duplicate_diagnostics(identities)
    diagnostics.extend(duplicates)
    repeated = {d.position for d in duplicates}
    repeats = {i.start for i in identities if i.name_position in repeated}
    return [p for p in policies if p.position not in repeats], sorted_diagnostics(diagnostics)
