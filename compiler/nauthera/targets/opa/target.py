"""The OPA target: a reproducible, optionally signed `bundle.tar.gz` and its generated Rego tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nauthera import __version__
from nauthera.compile.model import Policy
from nauthera.targets.base import CompileOptions, StagedOutput, write_tree
from nauthera.targets.opa.bundle import build_bundle, git_source
from nauthera.targets.opa.render import render_fixture_tests, render_opa
from nauthera.targets.opa.signing import sign_bundle

BUNDLE_NAME = "bundle.tar.gz"
OPA_TESTS_DIR = Path("tests") / "opa"


class OpaTarget:
    name = "opa"
    owned: tuple[Path, ...] = (Path(BUNDLE_NAME), OPA_TESTS_DIR)

    def stage(self, policies: Sequence[Policy], options: CompileOptions, staging: Path) -> StagedOutput:
        files = render_opa(policies, options.fail_closed).files
        write_tree(staging / OPA_TESTS_DIR, render_fixture_tests(policies))
        manifest = build_bundle(
            files,
            {"nauthera": bundle_metadata(options, len(policies))},
            options.revision,
            staging / BUNDLE_NAME,
        )
        if options.signing_key is not None:
            sign_bundle(
                staging / BUNDLE_NAME, options.signing_key, options.signing_alg, options.signing_key_id
            )
        return StagedOutput(Path(BUNDLE_NAME), str(manifest["revision"]))


def bundle_metadata(options: CompileOptions, policy_count: int) -> dict[str, Any]:
    """The bundle's `.manifest` metadata: what it was compiled from and how."""
    metadata: dict[str, Any] = {
        "compiler": f"nauthera {__version__}",
        "policies": policy_count,
        "fail_closed": options.fail_closed,
    }
    source = git_source(list(options.paths))
    if source:
        metadata["git"] = source
    return metadata
