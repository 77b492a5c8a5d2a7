"""The OPA target: a reproducible, optionally signed `bundle.tar.gz` and its generated Rego tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nauthera import __version__
from nauthera.compile.model import Policy
from nauthera.targets.base import CompileOptions, StagedOutput, write_tree
from nauthera.targets.opa.bundle import build_bundle, git_source
from nauthera.targets.opa.render import (
    PolicyFragment,
    fixture_entry,
    policy_fragment,
    render_fixture_data,
    render_fragments,
)
from nauthera.targets.opa.signing import sign_bundle

BUNDLE_NAME = "bundle.tar.gz"
OPA_TESTS_DIR = Path("tests") / "opa"


@dataclass(frozen=True)
class OpaPolicy:
    """One policy prepared for the OPA target: its bundle fragment and its generated-test entry."""

    fragment: PolicyFragment
    tests: bytes | None


def prepare_opa(policy: Policy) -> OpaPolicy:
    return OpaPolicy(policy_fragment(policy), fixture_entry(policy))


class OpaTarget:
    name = "opa"
    owned: tuple[Path, ...] = (Path(BUNDLE_NAME), OPA_TESTS_DIR)

    def prepare(self, policy: Policy) -> OpaPolicy:
        return prepare_opa(policy)

    def stage(self, prepared: Sequence[OpaPolicy], options: CompileOptions, staging: Path) -> StagedOutput:
        files = render_fragments([p.fragment for p in prepared], options.fail_closed).files
        tests = {p.fragment.id: p.tests for p in prepared if p.tests is not None}
        write_tree(staging / OPA_TESTS_DIR, render_fixture_data(tests))
        manifest = build_bundle(
            files,
            {"nauthera": bundle_metadata(options, len(prepared))},
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
