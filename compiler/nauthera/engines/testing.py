"""`nauthera test`: generated and hand-written Rego tests (`opa test`) and gator suites (`gator verify`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nauthera.engines.tools import run_tool
from nauthera.errors import ToolFailedError
from nauthera.targets.gatekeeper import GATEKEEPER_TESTS_DIR
from nauthera.targets.opa.target import BUNDLE_NAME, OPA_TESTS_DIR


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


@dataclass(frozen=True)
class SuiteRun:
    passed: bool
    output: str


def has_gatekeeper_suites(out: Path) -> bool:
    return (out / GATEKEEPER_TESTS_DIR).is_dir()


def run_gator_verify(out: Path, verbose: bool = False) -> SuiteRun:
    """`gator verify DIR/tests/gatekeeper/...`: every generated Suite, with the real gator."""
    # Suites name their files relative to themselves; run from `out` so the argument is relative too.
    args = ["verify", *(["-v"] if verbose else []), f"{GATEKEEPER_TESTS_DIR.as_posix()}/..."]
    run = run_tool("gator", args, cwd=out)
    output = (run.stdout + run.stderr).strip()
    if run.returncode != 0 and "FAIL" not in output:
        raise ToolFailedError(f"gator verify could not run: {output}")
    return SuiteRun(run.returncode == 0, output)
