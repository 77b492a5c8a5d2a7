"""`nauthera test`: the generated and hand-written Rego tests, run by the real `opa test`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nauthera.errors import ToolFailedError
from nauthera.pipeline import BUNDLE_NAME, OPA_TESTS_DIR
from nauthera.tools import run_tool


@dataclass(frozen=True)
class TestRun:
    passed: bool
    output: str
    coverage: float


def hand_written_rego(paths: Sequence[Path]) -> list[Path]:
    """Rego files kept next to the policies (tests and their helpers)."""
    found: set[Path] = set()
    for root in paths:
        found.update([root] if root.suffix == ".rego" else root.rglob("*.rego") if root.is_dir() else [])
    return sorted(found)


def run_opa_tests(out: Path, policy_paths: Sequence[Path], verbose: bool = False) -> TestRun:
    """Run every test against the compiled bundle; coverage is over the generated modules."""
    args = [str(out / BUNDLE_NAME), str(out / OPA_TESTS_DIR), *map(str, hand_written_rego(policy_paths))]
    tests = run_tool("opa", ["test", *(["--verbose"] if verbose else []), *args])
    if tests.returncode not in (0, 2):
        raise ToolFailedError(f"opa test could not run: {tests.stderr.strip() or tests.stdout.strip()}")
    covered = run_tool("opa", ["test", "--coverage", "--format", "json", *args])
    try:
        coverage = float(json.loads(covered.stdout).get("coverage", 0.0))
    except json.JSONDecodeError:
        coverage = 0.0
    return TestRun(tests.returncode == 0, (tests.stdout + tests.stderr).strip(), coverage)
