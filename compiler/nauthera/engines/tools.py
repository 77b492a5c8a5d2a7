"""Find and run the real engines (opa, regal, gator, ...): `NAUTHERA_<TOOL>`, the tools folder, then PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nauthera.errors import ToolFailedError, ToolNotFoundError

#: `make tools` builds pinned engines here, in a source checkout.
TOOLS_DIR = Path(__file__).resolve().parents[3] / ".tools" / "bin"


def find_tool(name: str) -> Path:
    variable = f"NAUTHERA_{name.upper().replace('-', '_')}"  # kube-apiserver: NAUTHERA_KUBE_APISERVER
    override = os.environ.get(variable)
    if override:
        if Path(override).is_file():
            return Path(override)
        raise ToolNotFoundError(
            f"{variable}={override} does not exist; fix or unset it (without it nauthera "
            "uses .tools/bin from `make tools`, then PATH)"
        )
    candidate = TOOLS_DIR / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolNotFoundError(
        f"{name} not found: run `make tools` in the nauthera checkout (builds pinned versions into "
        f".tools/bin), put {name} on PATH, or set {variable}"
    )


def run_tool(
    name: str, args: Sequence[str], stdin: str | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool and return its result; only a failure to start or a timeout is an exception."""
    binary = find_tool(name)
    try:
        return subprocess.run(
            [str(binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as error:
        raise ToolFailedError(f"{name} {' '.join(args[:2])} did not finish within {timeout:.0f}s") from error
    except OSError as error:
        raise ToolFailedError(f"cannot run {binary}: {error}") from error
