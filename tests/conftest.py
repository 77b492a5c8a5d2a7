"""Shared fixtures. Tests use the real engines; a missing engine is a failure, never a skip."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from nauthera.engines.tools import find_tool
from nauthera.errors import ToolNotFoundError
from nauthera.targets.base import CompileOptions
from nauthera.targets.outputs import compile_policies

from .harness.cli import nauthera

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

Cli = Callable[..., subprocess.CompletedProcess[str]]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail loudly up front when an engine is missing, instead of letting tests skip or error one by one."""
    missing = []
    for tool in ("opa", "regal", "gator"):
        try:
            find_tool(tool)
        except ToolNotFoundError as error:
            missing.append(str(error))
    if missing:
        raise pytest.UsageError("required engines are missing (run `make tools`):\n" + "\n".join(missing))


def compile_to(policies: Path, out: Path) -> Path:
    """Compile a policy folder with the real pipeline; the bundle path."""
    result = compile_policies(CompileOptions(paths=[policies], out=out))
    assert result.ok and result.bundle is not None, result.diagnostics
    return result.bundle


@pytest.fixture(scope="session")
def example_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/policies compiled once; tests copy it, never change it."""
    return compile_to(EXAMPLES / "policies", tmp_path_factory.mktemp("examples"))


@pytest.fixture
def cli() -> Cli:
    """Run the real command line in a subprocess, exactly as users and CI do (never with a traceback)."""
    return nauthera


@pytest.fixture
def opa() -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = find_tool("opa")

    def run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *map(str, args)],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    return run
