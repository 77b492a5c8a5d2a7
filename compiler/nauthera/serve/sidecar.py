"""The sidecar: compile on start and on every change, publish only good compiles, serve them to OPA.

Compiles are incremental (`targets.opa.incremental`): a change re-reads and re-analyses only the files
it touched, and the server gets the new bundle and its data tree directly, so agents receive a delta
of what changed. A change that does not compile is never published; the last good revision keeps
being served and the failure shows in the log, in `nauthera_compile_failures_total` and in `/readyz`'s
detail.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from watchfiles import Change, awatch

from nauthera.compile.diagnostics import Level
from nauthera.compile.loading import YAML_SUFFIXES
from nauthera.compile.sources import Source, file_source, folder_sources
from nauthera.errors import NautheraError
from nauthera.serve.bundles import in_daemon_thread
from nauthera.serve.server import ServerState
from nauthera.store.base import BundleFacts
from nauthera.targets.base import CompileOptions
from nauthera.targets.opa.incremental import IncrementalBuild, IncrementalCompiler

log = logging.getLogger("nauthera.sidecar")


@dataclass
class CompileStatus:
    ok: bool = False
    revision: str | None = None
    at: float = 0.0
    errors: list[str] = field(default_factory=list)


def _relevant(change: Change, path: str) -> bool:
    """Not `.git` internals or hidden files (editors' swap files); folders count (a moved folder)."""
    del change
    name = Path(path).name
    return not name.startswith(".") and "/.git/" not in path


def _absolute(path: str) -> str:
    return str(Path(path).absolute())


class SourceTree:
    """The sidecar's policy files: found by walking its folders once, then kept current from the
    watcher's change events (a walk again only when an event names a file or folder it does not know)."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = list(roots)
        self.sources: dict[str, Source] = {}
        self._names: dict[str, str] = {}

    def rescan(self) -> None:
        self.sources = {source.name: source for source in folder_sources(self.roots)}
        self._names = {_absolute(name): name for name in self.sources}

    def update(self, paths: Iterable[str]) -> None:
        """Take changed paths into account: known files are stat'ed again, unknown YAML files and
        folders mean a walk; anything else (a README, an editor's scratch file) changes nothing."""
        for path in paths:
            absolute = _absolute(path)
            name = self._names.get(absolute)
            if name is not None:
                fresh = file_source(Path(name), self.sources[name].order)
                if fresh is None:
                    del self.sources[name], self._names[absolute]
                else:
                    self.sources[name] = fresh
            elif absolute.endswith(YAML_SUFFIXES) or Path(absolute).is_dir() or self._contains(absolute):
                self.rescan()
                return

    def _contains(self, folder: str) -> bool:
        """Whether a known file lies under `folder` (which may be gone: a folder moved away)."""
        prefix = folder.rstrip(os.sep) + os.sep
        return any(known.startswith(prefix) for known in self._names)


class Sidecar:
    def __init__(
        self,
        sources: Sequence[Path],
        state: ServerState,
        channel: str,
        debounce: float = 0.2,
    ) -> None:
        self.sources = list(sources)
        self.state = state
        self.channel = channel
        self.debounce = debounce
        self.status = CompileStatus()
        self.tree = SourceTree(self.sources)
        self.compiler = IncrementalCompiler(CompileOptions(paths=self.sources, out=Path(os.devnull)))
        self._lock = threading.Lock()
        self._compiled = False
        #: Push mode's state (`OpaPusher.status`), shown in /readyz when there is one.
        self.push_status: dict[str, Any] | None = None

    def readiness(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"last_compile": asdict(self.status)}
        if self.push_status is not None:
            detail["push"] = dict(self.push_status)
        return detail

    def compile_and_publish(self, changed: Iterable[str] | None = None) -> CompileStatus:
        """Compile the sources (only what `changed` touched, when given); publish clean compiles."""
        with self._lock:
            started, clock = time.time(), time.perf_counter()
            try:
                if changed is None:
                    self.tree.rescan()
                else:
                    self.tree.update(changed)
                if not self.compiler.update(self.tree.sources.values()) and self._compiled:
                    return self.status
                self._compiled = True
                build = self.compiler.build()
                if not build.ok:
                    errors = [
                        f"{d.position}: {d.message} [{d.code}]"
                        for d in build.diagnostics
                        if d.level is Level.ERROR
                    ]
                    return self._failed(started, errors)
                compiled = time.perf_counter()
                revision = self._publish(build)
            except NautheraError as error:
                return self._failed(started, [str(error)])
            self.status = CompileStatus(True, revision, started, [])
            log.info(
                "compiled %d policies in %.3f s, published in %.3f s; channel %s serves %s",
                build.policies,
                compiled - clock,
                time.perf_counter() - compiled,
                self.channel,
                revision,
            )
            return self.status

    def _publish(self, build: IncrementalBuild) -> str:
        """Record the build in the store (its facts are known: nothing is read back) and hand the
        bundle and its data tree to the server."""
        assert build.bundle is not None and build.manifest is not None and build.state is not None
        facts = BundleFacts(
            revision=str(build.manifest["revision"]),
            digest=hashlib.sha256(build.bundle).hexdigest(),
            size=len(build.bundle),
            metadata=build.manifest["metadata"],
            policies=build.policy_digests or {},
            signer_key_id=None,
        )
        with tempfile.TemporaryDirectory(prefix="nauthera-sidecar-") as scratch:
            staged = Path(scratch) / "bundle.tar.gz"
            staged.write_bytes(build.bundle)
            info = self.state.store.publish(staged, self.channel, message="sidecar compile", facts=facts)
        self.state.announce(self.channel, info.revision, build.bundle, build.state)
        return info.revision

    def _failed(self, started: float, errors: list[str]) -> CompileStatus:
        self.state.metrics.compile_failures.inc()
        try:
            serving = self.state.store.channel_revision(self.channel)
        except NautheraError:  # an unreadable pointer: the server keeps its last good revision
            serving = self.status.revision
        self.status = CompileStatus(False, serving, started, errors[:50])
        for error in errors[:20]:
            log.error("compile failed, still serving the last good revision: %s", error)
        return self.status

    async def watch(self) -> None:
        async for changes in awatch(
            *self.sources,
            watch_filter=_relevant,
            debounce=int(self.debounce * 1000),
            step=20,
            rust_timeout=250,
        ):
            await in_daemon_thread(self.compile_and_publish, {path for _, path in changes})
