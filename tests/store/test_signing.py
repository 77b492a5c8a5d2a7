"""Bundle signatures against the real OPA: same hashes as `opa sign`, accepted and refused like OPA."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nauthera.engines.tools import find_tool
from nauthera.targets.opa.bundle import read_bundle, write_tarball
from nauthera.targets.opa.signing import (
    SIGNATURES_FILE,
    SigningError,
    file_hash,
    sign_bundle,
    signatures_file,
    signed_files,
    verify_bundle,
)

from .conftest import Invoke, Keys

OPA = str(find_tool("opa"))
CLIENT = {
    "apiVersion": "auth.nauthera.io/v1alpha1",
    "kind": "AuthClient",
    "metadata": {"name": "x", "namespace": "nowhere"},
    "spec": {},
}

#: Structured files whose canonical form is easy to get wrong: numbers as literal text, Go string
#: escaping without HTML escaping, U+2028/2029, invalid UTF-8 and lone surrogates, key order, BOM.
TRICKY_DATA = {
    "numbers": b'{"a": [1.0, 1e5, 1E+05, -0, 0.1, 12345678901234567890123, -1.5e-7, 0, 100, 1.50]}',
    "html": b'{"html": "<a href=\'x\'>&amp;</a> \\u003c \\u0026"}',
    "control": b'{"c": "\\u0000\\u0001\\u001f\\b\\f\\n\\r\\t\\"\\\\\\/ \\u007f"}',
    "unicode": '{"u": "é日本😀\u2028\u2029 \\u2028 \\ud83d\\ude00"}'.encode(),
    "surrogates": b'{"lone": "\\ud800x\\udc00 \\ud800\\u0041"}',
    "keys": '{"k": {"é": 1, "z": 2, "Z": 3, "😀": 4, "\uffff": 5, "": 6, "a\\nb": 7, "<": 8}}'.encode(),
    "layout": b'  {\n "t" : true , "f":false,"n":null, "s":"\\/", "x": [[], {}, [{}], {"y": []}]}\n',
    "bom": b'\xef\xbb\xbf{"bom": 1}',
    "bad_utf8": b'{"bad": "a\xffb\xe2\x82c\xc3", "k\xfe": 1}',
    "duplicates": b'{"d": 1, "d": 2, "e": {"x": 1}, "e": {"y": 2}}',
    "array": b'[1, "two", {"b": 2, "a": 1}]',
    "string": b'"just a string <>&"',
}


def _payload(signatures: bytes) -> dict[str, Any]:
    token = json.loads(signatures)["signatures"][0]
    part = token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return payload


def _header(signatures: bytes) -> dict[str, Any]:
    part = json.loads(signatures)["signatures"][0].split(".")[0]
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return header


def _opa_sign(folder: Path, key: Path, out: Path) -> bytes:
    out.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        [OPA, "sign", "--bundle", ".", "--signing-key", str(key), "-o", str(out)],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return (out / SIGNATURES_FILE).read_bytes()


def _opa_repl(bundle: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`opa run -b BUNDLE FLAGS` (interactive mode, fed one query): loads and verifies like the server.

    The REPL prints load errors on stdout, so stderr is merged into it.
    """
    return subprocess.run(
        [OPA, "run", "--skip-version-check", "-b", str(bundle), *flags],
        input="data.nauthera_data.settings.fail_closed\n",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        timeout=120,
    )


def _signed_copy(example_bundle: Path, tmp_path: Path, key: Path, alg: str, key_id: str | None) -> Path:
    bundle = tmp_path / f"signed-{alg}.tar.gz"
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(example_bundle, bundle)
    sign_bundle(bundle, key.read_bytes(), alg, key_id)
    return bundle


def test_hashes_equal_opa_sign_for_a_compiled_bundle(
    example_bundle: Path, keys: Keys, tmp_path: Path
) -> None:
    folder = tmp_path / "bundle"
    with tarfile.open(example_bundle) as tar:
        tar.extractall(folder, filter="data")
    expected = _payload(_opa_sign(folder, keys.rsa_private, tmp_path / "opa"))["files"]
    assert signed_files(read_bundle(example_bundle)) == expected


def test_canonical_hashes_equal_opa_sign_on_tricky_json(keys: Keys, tmp_path: Path) -> None:
    folder = tmp_path / "tricky"
    for name, content in TRICKY_DATA.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "data.json").write_bytes(content)
    (folder / ".manifest").write_bytes(b'{"revision": "r\\u00e9v<1>", "metadata": {"n": 1.10, "h": "&"}}')
    (folder / "policy.rego").write_bytes(b"package x\n\nallow := true\n")
    expected = {
        f["name"]: f["hash"] for f in _payload(_opa_sign(folder, keys.rsa_private, tmp_path / "o"))["files"]
    }
    assert set(expected) == {f"{name}/data.json" for name in TRICKY_DATA} | {".manifest", "policy.rego"}
    for name, digest in expected.items():
        assert file_hash(name, (folder / name).read_bytes()) == digest, name


def test_opa_built_signed_bundle_passes_our_verify(example_bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """`opa build --signing-key` output: our hashes agree with its payload, and `verify` accepts it."""
    folder = tmp_path / "bundle"
    with tarfile.open(example_bundle) as tar:
        tar.extractall(folder, filter="data")
    built = tmp_path / "opa-signed.tar.gz"
    subprocess.run(
        [OPA, "build", "-b", str(folder), "-o", str(built), "--signing-key", str(keys.rsa_private)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    files = read_bundle(built)
    payload = _payload(files[SIGNATURES_FILE])
    assert {f["name"]: f["hash"] for f in payload["files"]} == {
        name: file_hash(name, content) for name, content in files.items() if name != SIGNATURES_FILE
    }
    assert _header(files[SIGNATURES_FILE])["kid"] == "default"
    assert verify_bundle(built, keys.rsa_public.read_bytes(), "RS256", None) == []
    assert verify_bundle(built, keys.rsa_public.read_bytes(), None, "default") == []


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "HS256"])
def test_signed_bundle_loads_in_opa_with_the_verification_key(
    example_bundle: Path, keys: Keys, tmp_path: Path, alg: str
) -> None:
    private, public = {
        "RS256": (keys.rsa_private, keys.rsa_public),
        "PS256": (keys.rsa_private, keys.rsa_public),
        "ES256": (keys.ec_private, keys.ec_public),
        "HS256": (keys.hmac, keys.hmac),
    }[alg]
    bundle = _signed_copy(example_bundle, tmp_path, private, alg, None)
    loaded = _opa_repl(bundle, "--verification-key", str(public), "--signing-alg", alg)
    assert loaded.returncode == 0, loaded.stdout
    assert "true" in loaded.stdout
    assert verify_bundle(bundle, public.read_bytes(), alg, None) == []
    assert verify_bundle(bundle, public.read_bytes(), None, None) == []
    # opa eval has no verification flags: it loads signed bundles without checking them.
    evaluated = subprocess.run(
        [OPA, "eval", "-b", str(bundle), "--format", "raw", "data.nauthera_data.settings.fail_closed"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert (evaluated.returncode, evaluated.stdout.strip()) == (0, "true"), evaluated.stderr


def test_opa_run_refuses_a_signed_bundle_without_or_with_the_wrong_key(
    example_bundle: Path, keys: Keys, tmp_path: Path
) -> None:
    bundle = _signed_copy(example_bundle, tmp_path, keys.rsa_private, "RS256", None)
    missing = _opa_repl(bundle)
    assert missing.returncode != 0
    assert "verification key not provided" in missing.stdout
    other = tmp_path / "other.pub.pem"
    other_private = tmp_path / "other.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(other_private), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", str(other_private), "-pubout", "-out", str(other)],
        check=True,
        capture_output=True,
    )
    wrong = _opa_repl(bundle, "--verification-key", str(other))
    assert wrong.returncode != 0
    assert verify_bundle(bundle, other.read_bytes(), "RS256", None) != []


def test_key_ids_work_with_opa_run_flags(example_bundle: Path, keys: Keys, tmp_path: Path) -> None:
    default = _signed_copy(example_bundle, tmp_path / "a", keys.rsa_private, "RS256", None)
    named = _signed_copy(example_bundle, tmp_path / "b", keys.rsa_private, "RS256", "ci-2025")
    assert _header(read_bundle(default)[SIGNATURES_FILE])["kid"] == "default"
    assert _payload(read_bundle(named)[SIGNATURES_FILE])["keyid"] == "ci-2025"
    for bundle in (default, named):
        plain = _opa_repl(bundle, "--verification-key", str(keys.rsa_public))
        assert plain.returncode == 0, plain.stdout
    with_id = _opa_repl(named, "--verification-key", str(keys.rsa_public), "--verification-key-id", "ci-2025")
    assert with_id.returncode == 0, with_id.stdout
    assert verify_bundle(named, keys.rsa_public.read_bytes(), "RS256", "ci-2025") == []
    assert verify_bundle(named, keys.rsa_public.read_bytes(), "RS256", None) == []
    assert verify_bundle(named, keys.rsa_public.read_bytes(), "RS256", "default") != []


def _tampered(signed: Path, target: Path, how: str) -> Path:
    files = read_bundle(signed)
    if how == "rego-byte":
        body = files["nauthera/lib/checks.rego"]
        files["nauthera/lib/checks.rego"] = body[:-2] + bytes([body[-2] ^ 0x01]) + body[-1:]
    elif how == "data-byte":
        body = files["nauthera_data/data.json"]
        files["nauthera_data/data.json"] = body.replace(b'"15m"', b'"16m"', 1)
        assert files["nauthera_data/data.json"] != body
    elif how == "manifest-byte":
        files[".manifest"] = files[".manifest"].replace(b'"revision":"', b'"revision":"x', 1)
    elif how == "added-file":
        files["nauthera/extra/data.json"] = b'{"allow": true}'
    elif how == "removed-file":
        del files["nauthera/admission/review.rego"]
    elif how == "signature-byte":
        document = json.loads(files[SIGNATURES_FILE])
        token = document["signatures"][0]
        document["signatures"][0] = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
        files[SIGNATURES_FILE] = json.dumps(document).encode()
    write_tarball(files, target)
    return target


@pytest.mark.parametrize(
    ("how", "opa_says"),
    [
        ("rego-byte", "digest mismatch"),
        ("data-byte", "digest mismatch"),
        ("manifest-byte", "digest mismatch"),
        ("added-file", "not included in bundle signature"),
        ("removed-file", "specified in bundle signatures but not found"),
        ("signature-byte", "verif"),
    ],
)
def test_tampered_bundles_are_refused_by_opa_and_verify(
    example_bundle: Path, keys: Keys, tmp_path: Path, how: str, opa_says: str
) -> None:
    signed = _signed_copy(example_bundle, tmp_path, keys.rsa_private, "RS256", None)
    assert _opa_repl(signed, "--verification-key", str(keys.rsa_public)).returncode == 0
    bad = _tampered(signed, tmp_path / f"{how}.tar.gz", how)
    refused = _opa_repl(bad, "--verification-key", str(keys.rsa_public))
    assert refused.returncode != 0
    assert opa_says in refused.stdout, refused.stdout
    problems = verify_bundle(bad, keys.rsa_public.read_bytes(), "RS256", None)
    assert problems
    assert any(opa_says in p for p in problems) or how == "signature-byte", problems


def test_whitespace_in_data_json_is_not_a_change(example_bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """OPA hashes data.json canonically, so reformatting it keeps the signature valid (and so do we)."""
    signed = _signed_copy(example_bundle, tmp_path, keys.rsa_private, "RS256", None)
    files = read_bundle(signed)
    files["nauthera_data/data.json"] = json.dumps(
        json.loads(files["nauthera_data/data.json"]), indent=3
    ).encode()
    write_tarball(files, tmp_path / "reformatted.tar.gz")
    assert (
        _opa_repl(tmp_path / "reformatted.tar.gz", "--verification-key", str(keys.rsa_public)).returncode == 0
    )
    assert verify_bundle(tmp_path / "reformatted.tar.gz", keys.rsa_public.read_bytes(), None, None) == []


def test_signing_is_reproducible_and_keeps_the_revision(
    example_bundle: Path, keys: Keys, tmp_path: Path
) -> None:
    first = _signed_copy(example_bundle, tmp_path / "1", keys.rsa_private, "RS256", None)
    second = _signed_copy(example_bundle, tmp_path / "2", keys.rsa_private, "RS256", None)
    assert first.read_bytes() == second.read_bytes()
    again = tmp_path / "again.tar.gz"
    shutil.copyfile(first, again)
    sign_bundle(again, keys.rsa_private.read_bytes(), "RS256", None)
    assert again.read_bytes() == first.read_bytes(), "re-signing replaces the old signature"
    original = read_bundle(example_bundle)
    signed = read_bundle(first)
    assert {k: v for k, v in signed.items() if k != SIGNATURES_FILE} == original


def test_bad_keys_and_algorithms_are_errors(example_bundle: Path, keys: Keys) -> None:
    files = read_bundle(example_bundle)
    with pytest.raises(SigningError, match="unsupported signing algorithm"):
        signatures_file(files, keys.rsa_private.read_bytes(), "none", None)
    with pytest.raises(SigningError, match="needs an EC key"):
        signatures_file(files, keys.rsa_private.read_bytes(), "ES256", None)
    with pytest.raises(SigningError, match="PEM private key"):
        signatures_file(files, keys.hmac.read_bytes(), "RS256", None)
    with pytest.raises(SigningError, match="shared secret"):
        signatures_file(files, keys.rsa_private.read_bytes(), "HS256", None)


def test_a_pem_key_never_verifies_an_hmac_token(example_bundle: Path, keys: Keys, tmp_path: Path) -> None:
    """Algorithm confusion: an HS256 token 'signed' with the public key text must not pass."""
    public_text = keys.rsa_public.read_bytes()
    files = read_bundle(example_bundle)

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "kid": "default"}).encode())
    payload = b64(json.dumps({"files": signed_files(files)}).encode())
    mac = hmac.new(public_text, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    files[SIGNATURES_FILE] = json.dumps({"signatures": [f"{header}.{payload}.{b64(mac)}"]}).encode()
    bundle = tmp_path / "forged.tar.gz"
    write_tarball(files, bundle)
    problems = verify_bundle(bundle, public_text, None, None)
    assert problems == [
        "the JWT is signed with HS256, the verification key is for RS256/RS384/RS512/PS256/PS384/PS512"
    ]
    refused = _opa_repl(bundle, "--verification-key", str(keys.rsa_public))
    assert refused.returncode != 0


def test_verify_command_exit_codes(example_bundle: Path, keys: Keys, tmp_path: Path, invoke: Invoke) -> None:
    signed = _signed_copy(example_bundle, tmp_path, keys.rsa_private, "RS256", None)
    ok = invoke("bundle", "verify", signed, "--verification-key", keys.rsa_public)
    assert (ok.exit_code, ok.stdout) == (0, f"{signed}: signature verified\n")
    unsigned = invoke(
        "bundle", "verify", example_bundle, "--verification-key", keys.rsa_public, "--format", "json"
    )
    assert unsigned.exit_code == 1
    assert json.loads(unsigned.stdout)["problems"] == ["bundle missing .signatures.json file"]
    missing_key = invoke("bundle", "verify", signed, "--verification-key", tmp_path / "nope.pem")
    assert missing_key.exit_code == 2
    assert missing_key.stderr.startswith("nauthera: error: ")
    bad_alg = invoke(
        "bundle", "verify", signed, "--verification-key", keys.rsa_public, "--signing-alg", "XX1"
    )
    assert bad_alg.exit_code == 2


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server for one folder: OPA's bundle service in the config-file test."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = lambda *args: _Quiet(*args, directory=str(folder))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _decision(port: int) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/data/nauthera/authclient/decision",
        data=json.dumps({"input": CLIENT}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read()).get("result")
    except OSError:
        return None


@pytest.mark.parametrize(
    ("signed_as", "config_key", "keyid_in_config", "tamper", "refusal"),
    [
        ("ci-2025", "ci-2025", False, False, None),  # the token's kid picks the key
        ("ci-2025", "ci-2025", True, False, None),  # signing.keyid picks it
        (None, "default", True, False, None),  # unnamed: kid "default"
        ("ci-2025", "other", False, False, "verification key corresponding to ID ci-2025 not found"),
        (None, "default", True, True, "digest mismatch"),
    ],
)
def test_opa_config_keys_and_bundle_signing_as_documented(
    example_bundle: Path,
    keys: Keys,
    tmp_path: Path,
    file_server: tuple[str, Path],
    signed_as: str | None,
    config_key: str,
    keyid_in_config: bool,
    tamper: bool,
    refusal: str | None,
) -> None:
    """The docs/store.md OPA config: `keys` + `bundles.*.signing`, the bundle served over HTTP."""
    url, folder = file_server
    signed = _signed_copy(example_bundle, tmp_path, keys.rsa_private, "RS256", signed_as)
    if tamper:
        signed = _tampered(signed, tmp_path / "tampered.tar.gz", "data-byte")
    shutil.copyfile(signed, folder / "bundle.tar.gz")
    config = {
        "services": {"nauthera": {"url": url}},
        "keys": {config_key: {"algorithm": "RS256", "key": keys.rsa_public.read_text()}},
        "bundles": {
            "nauthera": {
                "service": "nauthera",
                "resource": "bundle.tar.gz",
                "signing": {"keyid": config_key} if keyid_in_config else {"scope": ""},
                "polling": {"min_delay_seconds": 1, "max_delay_seconds": 2},
            }
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    port = _free_port()
    log = tmp_path / "opa.log"
    with log.open("wb") as output:
        opa = subprocess.Popen(
            [
                OPA,
                "run",
                "--skip-version-check",
                "--server",
                "--addr",
                f"127.0.0.1:{port}",
                "-c",
                str(tmp_path / "config.json"),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        decision = None
        while time.monotonic() < deadline:
            decision = _decision(port)
            if decision is not None or (refusal and refusal in log.read_text()):
                break
            time.sleep(0.2)
        if refusal is None:
            assert decision is not None, log.read_text()[-2000:]
            assert decision["allowed"] is False
        else:
            assert refusal in log.read_text()
            assert decision is None, "OPA must not activate a bundle it cannot verify"
    finally:
        opa.terminate()
        opa.wait(timeout=10)


def test_excluded_files_are_skipped_like_opa(example_bundle: Path, keys: Keys, tmp_path: Path) -> None:
    signed = _signed_copy(example_bundle, tmp_path, keys.rsa_private, "RS256", None)
    extra = _tampered(signed, tmp_path / "extra.tar.gz", "added-file")
    flags = ["--verification-key", str(keys.rsa_public), "--exclude-files-verify", "nauthera/*/data.json"]
    assert _opa_repl(extra, *flags).returncode == 0
    assert (
        verify_bundle(extra, keys.rsa_public.read_bytes(), None, None, exclude_files=["nauthera/*/data.json"])
        == []
    )
    # Go's filepath.Match: `*` stops at `/`, so this glob does not reach nauthera/extra/data.json.
    assert (
        _opa_repl(extra, "--verification-key", str(keys.rsa_public), "--exclude-files-verify", "*").returncode
        != 0
    )
    assert verify_bundle(extra, keys.rsa_public.read_bytes(), None, None, exclude_files=["*"]) != []
