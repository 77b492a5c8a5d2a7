"""Incremental compilation of the OPA bundle: redo only the sources that changed.

The compiler keeps, per source, its content digest and what the bundle needs of each of its policies
(`PolicyFragment`s: the rendered parameters and index entries), never the policies themselves. An
update re-reads only sources whose stamp moved, re-analyses only those whose content changed, and a
build reassembles data.json from the kept fragments, rebuilds the index only when some policy's
targets changed, and recompresses only the parts of the tarball that changed. The bundle is the one
`nauthera compile --target opa` writes for the same sources, byte for byte (the same functions render
both); the generated tests are not written here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from nauthera.compile.analysis import analyse_sources, collector_paused, merge
from nauthera.compile.diagnostics import Diagnostic, Level, has_errors
from nauthera.compile.sources import Source
from nauthera.compile.validation import PolicyIdentity
from nauthera.targets.base import CompileOptions
from nauthera.targets.opa.bundle import MANIFEST, TarballWriter, bundle_bytes
from nauthera.targets.opa.datatree import DataNode
from nauthera.targets.opa.delta import BundleState, bundle_state
from nauthera.targets.opa.render import PolicyFragment, index_node, policy_fragment, render_fragments
from nauthera.targets.opa.target import bundle_metadata


@dataclass(frozen=True, slots=True)
class _SourceState:
    source: Source
    digest: bytes
    fragments: tuple[PolicyFragment, ...]
    diagnostics: tuple[Diagnostic, ...]
    identities: tuple[PolicyIdentity, ...]


@dataclass(frozen=True)
class IncrementalBuild:
    """One build: the diagnostics always; the bundle only when the sources compiled."""

    diagnostics: list[Diagnostic]
    policies: int
    bundle: bytes | None = None
    manifest: dict[str, Any] | None = None
    #: What a server needs to send deltas from or to this bundle.
    state: BundleState | None = None
    #: sha256 (hex) of each policy's parameters, as `nauthera bundle publish` records them.
    policy_digests: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.bundle is not None

    @property
    def revision(self) -> str | None:
        return None if self.manifest is None else str(self.manifest["revision"])


class IncrementalCompiler:
    """Keeps the front end's per-source results between builds; see the module docstring."""

    def __init__(self, options: CompileOptions) -> None:
        if options.signing_key is not None:
            raise ValueError("incremental builds are not signed; sign with `nauthera compile`")
        self.options = options
        self._states: dict[str, _SourceState] = {}
        self._writer = TarballWriter()
        self._index: tuple[tuple[tuple[str, Any], ...], DataNode] | None = None

    def __len__(self) -> int:
        return len(self._states)

    def update(self, sources: Iterable[Source], on_source: Callable[[Source], None] | None = None) -> bool:
        """Take `sources` as the complete input now; return whether any content changed.

        A source with the same name and stamp as before is not read again; one whose content digest
        did not change is not analysed again. Sources are ordered by their `order` keys.
        """
        with collector_paused():
            kept: dict[str, _SourceState] = {}
            stale: list[Source] = []
            reordered = False
            for source in sources:
                known = self._states.get(source.name)
                if known is not None and known.source is source:  # the caller's unchanged source
                    kept[source.name] = known
                elif known is not None and source.stamp is not None and source.stamp == known.source.stamp:
                    moved = known.source.order != source.order
                    reordered = reordered or moved
                    kept[source.name] = replace(known, source=source) if moved else known
                else:
                    stale.append(source)
            changed = False
            for source, digest, analysis in analyse_sources(stale, policy_fragment, on_source):
                known = self._states.get(source.name)
                if known is not None and known.digest == digest:
                    kept[source.name] = replace(known, source=source)
                    continue
                changed = True
                kept[source.name] = _SourceState(
                    source, digest, analysis.policies, analysis.diagnostics, analysis.identities
                )
            if kept.keys() == self._states.keys() and not reordered:
                self._states = {name: kept[name] for name in self._states}
            else:
                changed = changed or kept.keys() != self._states.keys()
                self._states = dict(sorted(kept.items(), key=lambda item: item[1].source.order))
        return changed

    def build(self) -> IncrementalBuild:
        """The bundle from the current sources, or only diagnostics when they do not compile."""
        with collector_paused():
            fragments, diagnostics = merge(
                (s.fragments, s.diagnostics, s.identities) for s in self._states.values()
            )
            failing = has_errors(diagnostics) or (
                self.options.fail_on_warn and any(d.level is Level.WARNING for d in diagnostics)
            )
            if failing:
                return IncrementalBuild(diagnostics, len(fragments))
            rendered = render_fragments(fragments, self.options.fail_closed, self._index_node(fragments))
            metadata = {"nauthera": bundle_metadata(self.options, len(fragments))}
            content, manifest = bundle_bytes(rendered.files, metadata, self.options.revision, self._writer)
            files = {**rendered.files, MANIFEST: json.dumps(manifest).encode()}
            return IncrementalBuild(
                diagnostics,
                len(fragments),
                content,
                manifest,
                bundle_state(files, rendered.data),
                {f.id: f.digest.hex() for f in fragments},
            )

    def _index_node(self, fragments: list[PolicyFragment]) -> DataNode:
        """The index depends only on each policy's id and index entries: rebuilt when those change."""
        signature = tuple((f.id, f.index_entries) for f in fragments)
        if self._index is None or self._index[0] != signature:
            self._index = (signature, index_node(fragments))
        return self._index[1]
