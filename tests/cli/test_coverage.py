"""`nauthera test` reports the coverage of the generated Rego even when a test fails (issue 17, item 9)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..conftest import EXAMPLES
from ..harness.cli import nauthera

FAILING_TEST = "package mine_test\n\nimport rego.v1\n\ntest_fails if {\n\t1 == 2\n}\n"
COVERAGE = re.compile(r"^coverage of generated Rego: ([0-9.]+)%$", re.MULTILINE)


def test_coverage_is_the_same_whether_or_not_a_hand_written_test_fails(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "policies", tmp_path / "p")
    passing = nauthera("test", "p", "--target", "opa", cwd=tmp_path)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    (figure,) = COVERAGE.findall(passing.stdout)
    assert float(figure) > 50

    (tmp_path / "p" / "mine_test.rego").write_text(FAILING_TEST, encoding="utf-8")
    failing = nauthera("test", "p", "--target", "opa", "--coverage-threshold", "50", cwd=tmp_path)
    assert failing.returncode == 1, "a failing test fails the run"
    assert "data.mine_test.test_fails: FAIL" in failing.stdout
    assert COVERAGE.findall(failing.stdout) == [figure]
    assert "below the threshold" not in failing.stderr
