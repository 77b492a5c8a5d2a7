"""The compile pipeline: load → validate → model → render → package, writing outputs all or nothing."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nauthera import __version__
from nauthera.bundle import build_bundle, git_source
from nauthera.diagnostics import Diagnostic, Level, has_errors, sorted_diagnostics
from nauthera.fixtures import render_fixture_tests
from nauthera.gatekeeper import render_gatekeeper, render_gatekeeper_suites
from nauthera.loading import discover, load_file
from nauthera.model import Policy, build_policy
from nauthera.render import render_opa
from nauthera.signing import sign_bundle
from nauthera.validation import PolicyIdentity, check_policy, classify, duplicate_diagnostics, policy_identity

BUNDLE_NAME = "bundle.tar.gz"
GATEKEEPER_DIR = Path("gatekeeper")
OPA_TESTS_DIR = Path("tests") / "opa"
GATEKEEPER_TESTS_DIR = Path("tests") / "gatekeeper"
TARGETS = ("opa", "gatekeeper", "all")
#: Below this much YAML, starting worker processes costs more than it saves.
PARALLEL_MIN_BYTES = 2 * 1024 * 1024
MAX_WORKERS = 4
#: Everything a compile owns in --out, per target. A compile replaces what its target produces and
#: removes what the other target produced earlier, so --out never mixes outputs of two compiles.
OUTPUTS = {
    "opa": (Path(BUNDLE_NAME), OPA_TESTS_DIR),
    "gatekeeper": (GATEKEEPER_DIR, GATEKEEPER_TESTS_DIR),
}


@dataclass(frozen=True)
class CompileOptions:
    paths: Sequence[Path]
    out: Path
    revision: str | None = None
    fail_closed: bool = True
    fail_on_warn: bool = False
    target: str = "opa"
    signing_key: bytes | None = None
    signing_alg: str = "RS256"
    signing_key_id: str | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        return ("opa", "gatekeeper") if self.target == "all" else (self.target,)


@dataclass
class CompileResult:
    diagnostics: list[Diagnostic] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    bundle: Path | None = None
    gatekeeper: Path | None = None
    revision: str | None = None
    written: bool = False

    @property
    def ok(self) -> bool:
        return self.written


def count_files(paths: Sequence[Path]) -> int:
    return sum(1 for _ in discover(paths))


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


def analyse(
    paths: Sequence[Path],
    on_file: Callable[[Path], None] | None = None,
) -> tuple[list[Policy], list[Diagnostic]]:
    """Everything short of writing: the valid policies and every diagnostic."""
    policies: list[Policy] = []
    diagnostics: list[Diagnostic] = []
    identities: list[PolicyIdentity] = []
    for analysis in _analyse_files(list(discover(paths)), on_file):
        policies.extend(analysis.policies)
        diagnostics.extend(analysis.diagnostics)
        identities.extend(analysis.identities)
    duplicates = duplicate_diagnostics(identities)
    diagnostics.extend(duplicates)
    repeated = {d.position for d in duplicates}
    repeats = {i.start for i in identities if i.name_position in repeated}
    return [p for p in policies if p.position not in repeats], sorted_diagnostics(diagnostics)


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _publish(staging: Path, out: Path) -> None:
    """Move each staged output into `out`; remove owned outputs this compile did not produce."""
    out.mkdir(parents=True, exist_ok=True)
    for relative in (path for paths in OUTPUTS.values() for path in paths):
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
    if options.target not in TARGETS:
        raise ValueError(f"unknown target {options.target!r}")
    policies, diagnostics = analyse(options.paths, on_file)
    result = CompileResult(diagnostics=diagnostics, policies=policies)
    failing = has_errors(diagnostics) or (
        options.fail_on_warn and any(d.level is Level.WARNING for d in diagnostics)
    )
    if failing:
        return result
    # Render everything before touching the disk, so a rendering error writes nothing either.
    staged: dict[Path, bytes] = {}
    opa_files = render_opa(policies, options.fail_closed).files if "opa" in options.targets else None
    if "gatekeeper" in options.targets:
        for name, content in render_gatekeeper(policies, options.fail_closed).items():
            staged[GATEKEEPER_DIR / name] = content
        for name, content in render_gatekeeper_suites(policies, options.fail_closed).items():
            staged[GATEKEEPER_TESTS_DIR / name] = content
    if "opa" in options.targets:
        for name, content in render_fixture_tests(policies).items():
            staged[OPA_TESTS_DIR / name] = content
    options.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".nauthera-", dir=options.out.parent) as tmp:
        staging = Path(tmp)
        _write_tree(staging, {str(path): content for path, content in staged.items()})
        if opa_files is not None:
            manifest = build_bundle(
                opa_files,
                {"nauthera": _metadata(options, len(policies))},
                options.revision,
                staging / BUNDLE_NAME,
            )
            if options.signing_key is not None:
                # In staging, so a signing error leaves --out untouched.
                sign_bundle(
                    staging / BUNDLE_NAME, options.signing_key, options.signing_alg, options.signing_key_id
                )
            result.bundle = options.out / BUNDLE_NAME
            result.revision = str(manifest["revision"])
        _publish(staging, options.out)
    if "gatekeeper" in options.targets:
        result.gatekeeper = options.out / GATEKEEPER_DIR
    result.written = True
    return result


def _metadata(options: CompileOptions, policy_count: int) -> dict[str, Any]:
    """The bundle's `.manifest` metadata: what it was compiled from and how."""
    metadata: dict[str, Any] = {
        "compiler": f"nauthera {__version__}",
        "policies": policy_count,
        "fail_closed": options.fail_closed,
    }
    source = git_source(list(options.paths))
    if source:
        metadata["git"] = source
    return metadata
