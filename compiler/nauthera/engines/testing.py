"""`nauthera test`: generated and hand-written Rego tests (`opa test`) and gator suites (`gator verify`)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nauthera.engines.tools import run_tool
from nauthera.errors import ToolFailedError
from nauthera.targets.gatekeeper import GATEKEEPER_TESTS_DIR
from nauthera.targets.opa.bundle import read_bundle
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
    modules = {name for name in read_bundle(out / BUNDLE_NAME) if name.endswith(".rego")}
    coverage = _coverage(args, modules, all_passed=tests.returncode == 0)
    return TestRun(tests.returncode == 0, (tests.stdout + tests.stderr).strip(), coverage)


def _coverage(args: Sequence[str], modules: set[str], *, all_passed: bool) -> float:
    """Percentage of the bundle's Rego lines that the passing tests cover.

    `opa test --coverage` prints no coverage at all when a test fails, so then the tests that pass are
    named with `--run` and measured alone; tests themselves (generated or hand-written) never count.
    """
    selected: list[str] = []
    if not all_passed:
        listed = run_tool("opa", ["test", "--format", "json", *args])
        results = _json(listed.stdout, "opa test --format json")
        passing = [f"{r['package']}.{r['name']}" for r in results if not (r.get("fail") or r.get("error"))]
        if not passing:
            return 0.0
        selected = ["--run", "^(" + "|".join(map(re.escape, passing)) + ")$"]
    report = _json(
        run_tool("opa", ["test", "--coverage", "--format", "json", *selected, *args]).stdout, "opa test"
    )
    files = {name: counts for name, counts in report.get("files", {}).items() if name in modules}
    covered = sum(counts.get("covered_lines", 0) for counts in files.values())
    missed = sum(counts.get("not_covered_lines", 0) for counts in files.values())
    return 100.0 * covered / (covered + missed) if covered + missed else 0.0


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ToolFailedError(f"{what} did not print JSON: {text.strip()[:500]}") from error


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
