"""`nauthera compile --signing-key`: reproducible signed bundles that the real OPA verifies."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import requests
from nauthera.engines.tools import find_tool

from ..conftest import EXAMPLES, Cli
from ..harness.processes import free_port, opa_serving, wait_until
from .conftest import Keys


def test_signed_compiles_are_reproducible_and_verified_by_opa(cli: Cli, tmp_path: Path, keys: Keys) -> None:
    for out in ("a", "b"):
        result = cli(
            "compile", EXAMPLES / "policies", "--out", tmp_path / out, "--signing-key", keys.rsa_private
        )
        assert result.returncode == 0, result.stdout + result.stderr
    signed = tmp_path / "a" / "bundle.tar.gz"
    assert signed.read_bytes() == (tmp_path / "b" / "bundle.tar.gz").read_bytes()
    verified = cli("bundle", "verify", signed, "--verification-key", keys.rsa_public)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    opa, url = opa_serving(signed, tmp_path / "opa.log", "--verification-key", str(keys.rsa_public))
    try:
        wait_until(
            lambda: requests.get(f"{url}/health?bundles", timeout=1).status_code == 200,
            30,
            f"OPA to activate the signed bundle:\n{opa.output()}",
        )
    finally:
        opa.stop()


def test_opa_refuses_a_bundle_signed_with_another_key(cli: Cli, tmp_path: Path, keys: Keys) -> None:
    result = cli(
        "compile",
        EXAMPLES / "policies",
        "--out",
        tmp_path,
        "--signing-key",
        keys.ec_private,
        "--signing-alg",
        "ES256",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    started = time.monotonic()
    refused = subprocess.run(
        [
            str(find_tool("opa")),
            "run",
            "--skip-version-check",
            "--server",
            "--addr",
            f"127.0.0.1:{free_port()}",
            "-b",
            str(tmp_path / "bundle.tar.gz"),
            "--verification-key",
            str(keys.rsa_public),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and time.monotonic() - started < 60
    assert "verif" in (refused.stdout + refused.stderr).lower()


def test_a_bad_signing_key_is_an_io_error_and_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    result = cli("compile", EXAMPLES / "policies", "--out", tmp_path / "out", "--signing-key", bad)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "bundle.tar.gz").exists()
