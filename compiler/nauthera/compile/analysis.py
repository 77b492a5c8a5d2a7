"""Front end across sources: load → validate → model for every source, in parallel when it pays.

What comes out is the valid policies and every diagnostic; the targets (`nauthera.targets`) take it
from there. Each source is analysed on its own (`analyse_source`, a pure function of its name and
bytes); only the duplicate check (`merge`) looks across them, which is what lets an incremental
compile redo just the sources that changed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from nauthera.compile.diagnostics import Diagnostic, Level, Position, has_errors, sorted_diagnostics
from nauthera.compile.loading import decode_utf8, load_text
from nauthera.compile.model import Policy, build_policy
from nauthera.compile.sources import Source, folder_sources
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
    return len(folder_sources(paths))


class _Positioned(Protocol):
    @property
    def position(self) -> Position: ...


Item = TypeVar("Item", bound=_Positioned)


@dataclass(frozen=True)
class FileAnalysis(Generic[Item]):
    """One source taken through load, validate and model: what a worker process hands back.

    `policies` are the valid policies, or what a caller's `transform` kept of each (see
    `analyse_sources`).
    """

    policies: tuple[Item, ...]
    diagnostics: tuple[Diagnostic, ...]
    identities: tuple[PolicyIdentity, ...]


def content_digest(content: bytes) -> bytes:
    """What identifies a source's content: an unchanged digest means nothing to redo."""
    return hashlib.sha256(content).digest()


def analyse_source(name: str, content: bytes) -> FileAnalysis[Policy]:
    """Everything about one source, from its bytes alone."""
    text = decode_utf8(content, name)
    if isinstance(text, Diagnostic):
        return FileAnalysis((), (text,), ())
    loaded = load_text(text, name)
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


def analyse_file(file: Path) -> FileAnalysis[Policy]:
    """One file (named as given); an unreadable file is an I/O error."""
    content = Source(str(file), path=file).read()
    return analyse_source(str(file), content)


def read_and_analyse(transform: Callable[[Policy], Item], source: Source) -> tuple[bytes, FileAnalysis[Item]]:
    """The source's content digest and its analysis (run in worker processes for large inputs)."""
    content = source.read()
    analysis = analyse_source(source.name, content)
    kept = tuple(transform(policy) for policy in analysis.policies)
    return content_digest(content), FileAnalysis(kept, analysis.diagnostics, analysis.identities)


def keep_policy(policy: Policy) -> Policy:
    return policy


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a compile allocates millions of objects.

    A compile's objects form no reference cycles, yet each collection walks all of them: at 10,000
    policies the collector took a third of the compile. Reference counting still frees everything.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _worker_start() -> None:
    gc.disable()


def analyse_sources(
    sources: Sequence[Source],
    transform: Callable[[Policy], Item],
    on_source: Callable[[Source], None] | None = None,
) -> Iterator[tuple[Source, bytes, FileAnalysis[Item]]]:
    """(source, content digest, analysis) in source order; over all cores when the input is large
    enough to repay starting workers.

    `transform` (a module-level function, so workers can run it) turns each valid policy into what
    the caller keeps: the policy itself (`keep_policy`), or a target's rendering of it.
    Workers are forked when this process has a single thread (they start at once and share its
    memory), and spawned otherwise: the sidecar compiles changes from a thread, and forking a threaded
    process can deadlock. They read the files themselves, so content never travels through pipes.
    """
    task = functools.partial(read_and_analyse, transform)
    workers = min(os.cpu_count() or 1, MAX_WORKERS)
    if workers < 2 or sum(s.size for s in sources) < PARALLEL_MIN_BYTES:
        for source in sources:
            yield (source, *task(source))
            if on_source:
                on_source(source)
        return
    single_threaded = sys.platform == "linux" and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if single_threaded else "spawn")
    # Few large chunks: with one task per small file, pickling round trips cost more than parsing.
    chunk = max(1, len(sources) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_start) as pool:
        for source, (digest, analysis) in zip(sources, pool.map(task, sources, chunksize=chunk), strict=True):
            yield source, digest, analysis
            if on_source:
                on_source(source)


def merge(
    analyses: Iterable[tuple[Sequence[Item], Sequence[Diagnostic], Sequence[PolicyIdentity]]],
) -> tuple[list[Item], list[Diagnostic]]:
    """Per-source results (policies or what a target kept of them, in source order) → the valid ones
    and every diagnostic, with an error at each repeat of a namespace/name. A repeated policy is left
    out wherever it is, so the compile fails and names both places."""
    items: list[Item] = []
    diagnostics: list[Diagnostic] = []
    identities: list[PolicyIdentity] = []
    for found, problems, named in analyses:
        items.extend(found)
        diagnostics.extend(problems)
        identities.extend(named)
    duplicates = duplicate_diagnostics(identities)
    if not duplicates:
        return items, sorted_diagnostics(diagnostics)
    diagnostics.extend(duplicates)
    repeated = {d.position for d in duplicates}
    repeats = {i.start for i in identities if i.name_position in repeated}
    return [item for item in items if item.position not in repeats], sorted_diagnostics(diagnostics)


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
    transform: Callable[[Policy], Item] = keep_policy,  # type: ignore[assignment]
) -> tuple[list[Item], list[Diagnostic]]:
    """Everything short of writing: the valid policies (or what `transform` made of each, in the
    worker processes) and every diagnostic."""

    def on_source(source: Source) -> None:
        if on_file is not None and source.path is not None:
            on_file(source.path)

    sources = folder_sources(paths)
    with collector_paused():
        analysed = analyse_sources(sources, transform, on_source)
        items, diagnostics = merge((a.policies, a.diagnostics, a.identities) for _, _, a in analysed)
    if not items and not has_errors(diagnostics):
        diagnostics = sorted_diagnostics([*diagnostics, _no_policies(paths, len(sources))])
    return items, diagnostics
