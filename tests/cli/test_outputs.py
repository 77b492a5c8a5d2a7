"""Where `compile --out` cannot write, and many compiles into one folder at once (issue 17, items 5-6)."""

from __future__ import annotations

import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nauthera.targets.opa.bundle import ROOTS

from ..conftest import EXAMPLES
from ..harness.cli import nauthera, read_only

POLICIES = EXAMPLES / "policies"


@pytest.mark.parametrize("out", ["ro/out", "ro"])
def test_read_only_out_is_an_io_error_and_writes_nothing(tmp_path: Path, out: str) -> None:
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")
    completed = nauthera("compile", POLICIES, "--out", out, cwd=tmp_path, unprivileged=True)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith(f"nauthera: error: {out}: cannot write the output folder: "), (
        completed.stderr
    )
    assert "Permission denied" in completed.stderr
    assert list((tmp_path / "ro").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".nauthera-")] == [], "no staging left"


def test_out_that_is_a_file_is_an_io_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    completed = nauthera("compile", POLICIES, "--out", "taken/out", cwd=tmp_path)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith("nauthera: error: taken/out: cannot write the output folder: ")


def test_concurrent_compiles_into_one_folder_all_succeed(tmp_path: Path) -> None:
    """Eight real compiles at once (`--target all`): none crashes, and the folder holds one whole output."""

    def compile_once(_: int) -> tuple[int, str]:
        completed = nauthera("compile", POLICIES, "--out", "conc/o", "--target", "all", cwd=tmp_path)
        return completed.returncode, completed.stderr

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(compile_once, range(8)))
    assert outcomes == [(0, "")] * 8
    out = tmp_path / "conc" / "o"
    assert sorted(p.name for p in out.iterdir()) == ["bundle.tar.gz", "gatekeeper", "tests"]
    assert sorted(p.name for p in (out / "tests").iterdir()) == ["gatekeeper", "opa"]
    with tarfile.open(out / "bundle.tar.gz") as tar:
        handle = tar.extractfile(".manifest")
        assert handle is not None
        assert json.loads(handle.read())["roots"] == list(ROOTS)
    assert [p.name for p in (tmp_path / "conc").iterdir() if p.name != "o"] == [".o.lock"], (
        "only the lock file stays beside the output folder; no staging folders or retired outputs"
    )
