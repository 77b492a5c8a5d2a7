"""The compile pipeline: load → validate → model → render → package, writing outputs all or nothing."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nauthera import __version__
from nauthera.bundle import build_bundle, git_source
from nauthera.diagnostics import Diagnostic, Level, has_errors, sorted_diagnostics
from nauthera.fixtures import render_fixture_tests
from nauthera.loading import LoadResult, discover, load_file
from nauthera.model import Policy, build_policy
from nauthera.render import render_opa
from nauthera.validation import classify, validate_policies

BUNDLE_NAME = "bundle.tar.gz"
OPA_TESTS_DIR = Path("tests") / "opa"


@dataclass(frozen=True)
class CompileOptions:
    paths: Sequence[Path]
    out: Path
    revision: str | None = None
    fail_closed: bool = True
    fail_on_warn: bool = False


@dataclass
class CompileResult:
    diagnostics: list[Diagnostic] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    bundle: Path | None = None
    revision: str | None = None

    @property
    def ok(self) -> bool:
        return self.bundle is not None


def load_all(paths: Sequence[Path], on_file: Callable[[Path], None] | None = None) -> LoadResult:
    """Load every YAML file under `paths`, reporting each file to `on_file` (for progress bars)."""
    total = LoadResult()
    files = list(discover(paths))
    for file in files:
        loaded = load_file(file)
        total.documents.extend(loaded.documents)
        total.diagnostics.extend(loaded.diagnostics)
        if on_file:
            on_file(file)
    return total


def count_files(paths: Sequence[Path]) -> int:
    return sum(1 for _ in discover(paths))


def analyse(
    paths: Sequence[Path],
    on_file: Callable[[Path], None] | None = None,
) -> tuple[list[Policy], list[Diagnostic]]:
    """Everything short of writing: the valid policies and every diagnostic."""
    loaded = load_all(paths, on_file)
    classified = classify(loaded.documents)
    valid, problems = validate_policies(classified.policies)
    diagnostics = [*loaded.diagnostics, *classified.diagnostics, *problems]
    diagnostics.extend(
        Diagnostic(Level.NOTE, doc.start, "skipped", "skipped AuthClient: `nauthera check` evaluates clients")
        for doc in classified.clients
    )
    return [build_policy(doc) for doc in valid], sorted_diagnostics(diagnostics)


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def _publish(staging: Path, out: Path) -> None:
    """Move each staged entry into `out`, replacing only what this compile produces."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staging.iterdir()):
        target = out / entry.name
        if entry.is_dir() and target.exists():
            retired = out / f".{entry.name}.old"
            shutil.rmtree(retired, ignore_errors=True)
            target.rename(retired)
            entry.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            entry.replace(target)


def compile_policies(options: CompileOptions, on_file: Callable[[Path], None] | None = None) -> CompileResult:
    """Compile to `options.out`; on any error (or warning with fail_on_warn) nothing there changes."""
    policies, diagnostics = analyse(options.paths, on_file)
    result = CompileResult(diagnostics=diagnostics, policies=policies)
    failing = has_errors(diagnostics) or (
        options.fail_on_warn and any(d.level is Level.WARNING for d in diagnostics)
    )
    if failing:
        return result
    metadata: dict[str, Any] = {
        "compiler": f"nauthera {__version__}",
        "policies": len(policies),
        "fail_closed": options.fail_closed,
    }
    source = git_source(list(options.paths))
    if source:
        metadata["git"] = source
    rendered = render_opa(policies, options.fail_closed)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".nauthera-", dir=options.out.parent) as tmp:
        staging = Path(tmp)
        manifest = build_bundle(
            rendered.files, {"nauthera": metadata}, options.revision, staging / BUNDLE_NAME
        )
        _write_tree(staging / OPA_TESTS_DIR, render_fixture_tests(policies))
        _publish(staging, options.out)
    result.bundle = options.out / BUNDLE_NAME
    result.revision = str(manifest["revision"])
    return result
