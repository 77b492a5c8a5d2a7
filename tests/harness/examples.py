"""The expected outcome of every example client, read from examples/clients/EXPECTED.md (one table, one
source of truth: tests and demos parse it rather than keep a copy)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
EXPECTED_TABLE = EXAMPLES / "clients" / "EXPECTED.md"
COLUMNS = ["File", "Client", "Allowed", "Violations", "Warnings", "Dryrun", "Policies"]

Finding = tuple[str | None, str]


@dataclass(frozen=True)
class Expected:
    """One row: the decision an example client must get (findings as (policy, field) pairs, in order)."""

    file: str
    client: str
    allowed: bool
    violations: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    dryrun: tuple[Finding, ...]
    policies: tuple[str, ...]


def _findings(cell: str) -> tuple[Finding, ...]:
    if cell == "-":
        return ()
    found = []
    for entry in cell.split("; "):
        match = re.fullmatch(r"\((\S+), (\S+)\)", entry)
        assert match, f"{EXPECTED_TABLE}: cannot read the finding {entry!r} (expected `(policy, field)`)"
        policy, field = match.groups()
        found.append((None if policy == "null" else policy, field))
    return tuple(found)


def expected_outcomes(path: Path = EXPECTED_TABLE) -> dict[str, Expected]:
    """File name → expected decision, for every row of the table."""
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == COLUMNS, f"{path}: the table's columns are {header}, expected {COLUMNS}"
    outcomes = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        file, client, allowed, violations, warnings, dryrun, policies = cells
        assert allowed in ("yes", "no"), f"{path}: Allowed must be yes or no, not {allowed!r}"
        outcomes[file] = Expected(
            file,
            client,
            allowed == "yes",
            _findings(violations),
            _findings(warnings),
            _findings(dryrun),
            () if policies == "-" else tuple(policies.split("; ")),
        )
    assert outcomes, f"{path} has no rows"
    return outcomes
