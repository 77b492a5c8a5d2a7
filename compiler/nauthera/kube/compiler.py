"""The operator's compile step: validated AuthPolicy documents → the OPA bundle (and Gatekeeper objects).

It runs the same stages as `nauthera compile` (model, `render_opa`, `build_bundle` with the same
metadata), so the bundle and its revision are byte for byte what the CLI gives for the same documents.
The generated test fixtures and gator suites are left out: they are CI artifacts, and the gator suites
take minutes at 1,000 policies. This one function is where an incremental compiler would plug in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nauthera.compile.loading import SourceDocument
from nauthera.compile.model import build_policy
from nauthera.targets.base import CompileOptions
from nauthera.targets.gatekeeper import GatekeeperObjects, gatekeeper_objects
from nauthera.targets.opa.bundle import build_bundle
from nauthera.targets.opa.render import render_opa
from nauthera.targets.opa.target import BUNDLE_NAME, bundle_metadata


@dataclass(frozen=True)
class CompiledBundle:
    revision: str
    bundle: Path
    policies: tuple[str, ...]
    gatekeeper: GatekeeperObjects | None


def compile_documents(
    documents: Sequence[SourceDocument],
    out: Path,
    *,
    sources: Sequence[Path] = (),
    gatekeeper: bool = False,
    fail_closed: bool = True,
) -> CompiledBundle:
    """Compile documents that passed validation into `out/bundle.tar.gz`. `sources` are the folders
    they came from (for the Git metadata), none for cluster objects."""
    policies = sorted((build_policy(doc) for doc in documents), key=lambda p: p.id)
    out.mkdir(parents=True, exist_ok=True)
    options = CompileOptions(paths=list(sources) or [out], out=out, fail_closed=fail_closed)
    manifest = build_bundle(
        render_opa(policies, fail_closed).files,
        {"nauthera": bundle_metadata(options, len(policies))},
        None,
        out / BUNDLE_NAME,
    )
    objects = gatekeeper_objects(policies, fail_closed) if gatekeeper else None
    return CompiledBundle(
        str(manifest["revision"]), out / BUNDLE_NAME, tuple(p.id for p in policies), objects
    )
