"""What every enforcement target implements, and the options a compile runs with.

A target turns the validated policies into files in a staging folder; `nauthera.targets.outputs`
moves them into `--out` all or nothing. A new target is a new module implementing `Target`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nauthera.compile.model import Policy


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


@dataclass(frozen=True)
class StagedOutput:
    """What a target wrote: its main artifact (relative to the output folder) and, for bundles, a revision."""

    artifact: Path
    revision: str | None = None


class Target(Protocol):
    #: The `--target` value that selects it.
    name: str
    #: Everything it owns in the output folder: replaced by its compiles, removed by other targets' compiles.
    owned: tuple[Path, ...]

    def stage(self, policies: Sequence[Policy], options: CompileOptions, staging: Path) -> StagedOutput:
        """Write this target's outputs under `staging` (laid out as in the output folder)."""
        ...


def write_tree(root: Path, files: Mapping[str, bytes]) -> None:
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
