"""Incremental compilation: after any sequence of edits, the same bundle as a cold compile, byte for byte."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nauthera.compile.diagnostics import Diagnostic
from nauthera.compile.sources import folder_sources
from nauthera.store.base import bundle_facts
from nauthera.targets.base import CompileOptions
from nauthera.targets.opa.bundle import TarballWriter, read_bundle
from nauthera.targets.opa.incremental import IncrementalCompiler
from nauthera.targets.outputs import compile_policies

from ...conftest import EXAMPLES
from ...harness.policies import RandomRepo


def _diagnostics(items: Sequence[Diagnostic]) -> list[str]:
    return [f"{d.position}: {d.level}: {d.message} [{d.code}]" for d in items]


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_incremental_builds_equal_cold_compiles_after_every_edit(
    seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Add, change, remove, rename, break, duplicate and repair files: after every edit the incremental
    build and `nauthera compile --target opa` agree on the bundle bytes, revision and diagnostics, and
    an edit that does not compile gives no bundle on either side."""
    work = tmp_path_factory.mktemp("incremental")
    repo = RandomRepo(work / "policies", random.Random(seed))
    repo.seed(6)
    compiler = IncrementalCompiler(CompileOptions(paths=[repo.root], out=work / "unused"))
    for step in range(14):
        done = "seed" if step == 0 else repo.edit()
        compiler.update(folder_sources([repo.root]))
        incremental = compiler.build()
        cold = compile_policies(CompileOptions(paths=[repo.root], out=work / f"cold-{step}"))
        context = f"after {done} (seed {seed}, step {step})"
        assert _diagnostics(incremental.diagnostics) == _diagnostics(cold.diagnostics), context
        assert incremental.ok == cold.ok, context
        if cold.ok:
            assert cold.bundle is not None and incremental.bundle is not None
            assert incremental.bundle == cold.bundle.read_bytes(), context
            assert incremental.revision == cold.revision, context
            assert incremental.policies == len(cold.policies), context


def test_an_unchanged_source_is_not_analysed_again(tmp_path: Path) -> None:
    repo = RandomRepo(tmp_path / "policies", random.Random(7))
    repo.seed(5)
    compiler = IncrementalCompiler(CompileOptions(paths=[repo.root], out=tmp_path / "unused"))
    assert compiler.update(folder_sources([repo.root])) is True
    first = compiler.build()
    # Touching files (new stamps, same content) reads them again but changes nothing.
    for path in repo.root.rglob("*.yaml"):
        path.write_bytes(path.read_bytes())
    assert compiler.update(folder_sources([repo.root])) is False
    assert compiler.build().bundle == first.bundle
    repo.edit()
    assert compiler.update(folder_sources([repo.root])) is True


def test_published_facts_equal_what_the_store_reads_from_the_bundle(tmp_path: Path) -> None:
    """The sidecar hands the store the facts of its build instead of letting it read them back."""
    compiler = IncrementalCompiler(CompileOptions(paths=[EXAMPLES / "policies"], out=tmp_path))
    compiler.update(folder_sources([EXAMPLES / "policies"]))
    build = compiler.build()
    assert build.bundle is not None and build.manifest is not None
    facts = bundle_facts(build.bundle, "built")
    assert facts.revision == build.revision
    assert facts.policies == build.policy_digests
    assert facts.metadata == build.manifest["metadata"]
    assert facts.digest == hashlib.sha256(build.bundle).hexdigest()


def test_tarballs_are_what_tarfile_writes_and_reusing_a_writer_changes_no_byte(tmp_path: Path) -> None:
    """The chunked gzip stream decompresses to exactly the tar that `tarfile` writes, and a writer that
    kept chunks from an earlier tarball writes the same bytes as a fresh one."""
    compiler = IncrementalCompiler(CompileOptions(paths=[EXAMPLES / "policies"], out=tmp_path))
    compiler.update(folder_sources([EXAMPLES / "policies"]))
    bundle = tmp_path / "bundle.tar.gz"
    build = compiler.build()
    assert build.bundle is not None
    bundle.write_bytes(build.bundle)
    files = read_bundle(bundle)
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    assert gzip.decompress(build.bundle) == expected.getvalue()
    writer = TarballWriter()
    changed = {**files, "nauthera/extra.json": b"{}"}
    writer.write(changed)
    assert writer.write(files) == TarballWriter().write(files) == build.bundle
