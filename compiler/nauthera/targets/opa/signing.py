"""OPA bundle signatures: `.signatures.json` written and checked exactly as OPA does.

OPA hashes every file of a bundle except `.signatures.json` and lists the hashes in one JWT. Plain files
(Rego, Wasm, ...) are hashed as raw bytes. Structured files (`data.json`, `data.yaml`/`data.yml`,
`.manifest`) are parsed and hashed in a canonical form (OPA `v1/bundle/hash.go`): objects as `{`, keys in
byte order each followed by `:` and the value, `,` between entries, `}`; arrays likewise; scalars as Go's
`encoding/json` writes them with HTML escaping off. Numbers are kept as their literal text (OPA decodes
with `UseNumber`), so `1.0` and `1` hash differently. Whitespace and key order do not matter.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import load_pem_x509_certificate

from nauthera.errors import InputError, NautheraError
from nauthera.targets.opa.bundle import open_nauthera_bundle, read_bundle, write_tarball

SIGNATURES_FILE = ".signatures.json"
#: The algorithms OPA accepts for bundle signatures (`v1/keys/keys.go`).
ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "HS256",
    "HS384",
    "HS512",
)
#: What `opa build --signing-key` and `opa run --verification-key` call a key nobody named.
DEFAULT_KEY_ID = "default"
HASH_ALGORITHM = "SHA-256"
_HASHES = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-224": "sha224",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
    "SHA-512-224": "sha512_224",
    "SHA-512-256": "sha512_256",
}
_STRUCTURED = ("data.json", "data.yaml", "data.yml", ".manifest")


class SigningError(NautheraError):
    """A key, algorithm or bundle cannot be used for signing or verification."""


# --- OPA's canonical hashing -------------------------------------------------------------------------


class _Number(str):
    """A JSON number kept as its literal text, like Go's `json.Number`."""

    __slots__ = ()


def _go_replace(error: UnicodeError) -> tuple[str, int]:
    """Invalid UTF-8 becomes one U+FFFD per bad byte, as Go's decoder does."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "\ufffd", error.start + 1


codecs.register_error("nauthera-go-utf8", _go_replace)

_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\\u2028\u2029\ud800-\udfff]')


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _GO_ESCAPES:
        return _GO_ESCAPES[char]
    if "\ud800" <= char <= "\udfff":
        # A lone surrogate escape (`"\ud800"`) decodes to U+FFFD in Go.
        return "\ufffd"
    return f"\\u{ord(char):04x}"


def _go_string(text: str) -> str:
    """Go's `encoding/json` string form with SetEscapeHTML(false): `<`, `>`, `&` stay as they are."""
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'


_SURROGATE = re.compile("[\ud800-\udfff]")


def _go_key(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def _canonical_parts(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        # Go sorts keys by their UTF-8 bytes, which is code point order once surrogates are gone.
        # Keys that only differ in invalid UTF-16 collapse into one, the last winning, as in Go's map.
        items = sorted({_go_key(k): v for k, v in value.items()}.items(), key=lambda kv: kv[0])
        out.append("{")
        for index, (key, item) in enumerate(items):
            if index:
                out.append(",")
            out.append(_go_string(key))
            out.append(":")
            _canonical_parts(item, out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _canonical_parts(item, out)
        out.append("]")
    elif isinstance(value, _Number):
        out.append(str.__str__(value))
    elif isinstance(value, str):
        out.append(_go_string(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    else:  # pragma: no cover - the parser produces nothing else
        raise SigningError(f"cannot hash a {type(value).__name__}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_structured(content: bytes, name: str) -> Any:
    """Parse a structured bundle file the way OPA does before hashing it (JSON, numbers as text)."""
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    text = content.decode("utf-8", errors="nauthera-go-utf8")
    try:
        return json.loads(text, parse_int=_Number, parse_float=_Number, parse_constant=_reject_constant)
    except ValueError as error:
        if PurePosixPath(name).name in ("data.yaml", "data.yml"):
            raise SigningError(
                f"{name}: YAML data files are not supported; OPA's YAML→JSON number formatting "
                "cannot be reproduced exactly, use data.json"
            ) from error
        raise SigningError(f"{name}: not valid JSON: {error}") from error


def canonical_json(value: Any) -> bytes:
    """The byte string OPA feeds to the hash for a parsed structured file."""
    out: list[str] = []
    _canonical_parts(value, out)
    return "".join(out).encode("utf-8")


def is_structured(name: str) -> bool:
    return PurePosixPath(name).name in _STRUCTURED


def file_hash(name: str, content: bytes, algorithm: str = HASH_ALGORITHM) -> str:
    """The hex digest OPA expects for bundle file `name` (no leading slash)."""
    if algorithm not in _HASHES:
        raise SigningError(f"unsupported hashing algorithm {algorithm!r}")
    hasher = hashlib.new(_HASHES[algorithm])
    hasher.update(canonical_json(parse_structured(content, name)) if is_structured(name) else content)
    return hasher.hexdigest()


# --- keys --------------------------------------------------------------------------------------------


def _check_alg(alg: str) -> str:
    if alg not in ALGORITHMS:
        raise SigningError(f"unsupported signing algorithm {alg!r} (one of {', '.join(ALGORITHMS)})")
    return alg


def _is_pem(key: bytes) -> bool:
    return key.lstrip().startswith(b"-----BEGIN")


def _private_key(key: bytes, alg: str) -> Any:
    if alg.startswith("HS"):
        if _is_pem(key):
            raise SigningError(f"{alg} needs a shared secret, not a PEM key")
        if not key:
            raise SigningError(f"{alg} needs a non-empty shared secret")
        return key
    if not _is_pem(key):
        raise SigningError(f"{alg} needs a PEM private key")
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as error:
        raise SigningError(f"cannot read the PEM private key: {error}") from error
    _check_key_type(private, alg)
    return private


def _public_key(key: bytes, alg: str) -> Any:
    """A verification key as OPA accepts it: public key, certificate or private key (HMAC: the secret)."""
    if alg.startswith("HS"):
        if _is_pem(key):
            raise SigningError(f"{alg} verifies with a shared secret, not a PEM key")
        return key
    if not _is_pem(key):
        raise SigningError(f"{alg} verifies with a PEM public key or certificate")
    loaded: Any
    try:
        if b"CERTIFICATE-----" in key:
            loaded = load_pem_x509_certificate(key).public_key()
        elif b"PRIVATE KEY-----" in key:
            loaded = serialization.load_pem_private_key(key, password=None).public_key()
        else:
            loaded = serialization.load_pem_public_key(key)
    except (ValueError, TypeError) as error:
        raise SigningError(f"cannot read the PEM verification key: {error}") from error
    _check_key_type(loaded, alg)
    return loaded


def _check_key_type(key: Any, alg: str) -> None:
    is_rsa = alg[:2] in ("RS", "PS")
    wanted: tuple[type, ...] = (
        (rsa.RSAPrivateKey, rsa.RSAPublicKey)
        if is_rsa
        else (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)
    )
    if not isinstance(key, wanted):
        raise SigningError(f"{alg} needs an {'RSA' if is_rsa else 'EC'} key")


def algorithms_for_key(key: bytes) -> tuple[str, ...]:
    """The algorithms a key may verify when none is configured: never HMAC for a PEM key."""
    if not _is_pem(key):
        return ("HS256", "HS384", "HS512")
    try:
        _public_key(key, "RS256")
    except SigningError as error:
        if "needs an RSA key" not in str(error):
            raise
        return ("ES256", "ES384", "ES512")
    return ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


# --- signing -----------------------------------------------------------------------------------------


def signed_files(files: Mapping[str, bytes]) -> list[dict[str, str]]:
    """The JWT `files` claim: every file but `.signatures.json`, by name."""
    entries = []
    for raw_name in sorted(files, key=lambda n: n.lstrip("/")):
        name = raw_name.lstrip("/")
        if PurePosixPath(name).name == SIGNATURES_FILE:
            continue
        entries.append({"name": name, "hash": file_hash(name, files[raw_name]), "algorithm": HASH_ALGORITHM})
    return entries


def signatures_file(
    files: Mapping[str, bytes], key_pem_or_secret: bytes, alg: str, key_id: str | None
) -> bytes:
    """The `.signatures.json` content for a bundle made of `files` (name → bytes).

    The JWT header carries `kid` (and the payload the deprecated `keyid` claim), both `key_id` or
    "default" — what `opa build --signing-key` writes, and the name `opa run --verification-key` gives
    its key. No `iat`: RS256 and HS256 signatures, and so signed bundles, stay reproducible.
    """
    _check_alg(alg)
    kid = key_id or DEFAULT_KEY_ID
    payload = {"files": signed_files(files), "keyid": kid}
    try:
        token = jwt.encode(payload, _private_key(key_pem_or_secret, alg), algorithm=alg, headers={"kid": kid})
    except jwt.PyJWTError as error:
        raise SigningError(f"cannot sign with {alg}: {error}") from error
    return (json.dumps({"signatures": [token]}, indent=1) + "\n").encode()


def sign_bundle(bundle: Path, key: bytes, alg: str, key_id: str | None) -> None:
    """Rewrite `bundle` (a .tar.gz) with a fresh `.signatures.json`, reproducibly and atomically."""
    files = read_bundle(bundle)
    files = {name: content for name, content in files.items() if PurePosixPath(name).name != SIGNATURES_FILE}
    files[SIGNATURES_FILE] = signatures_file(files, key, alg, key_id)
    staged = bundle.with_name(f".{bundle.name}.signing")
    try:
        write_tarball(files, staged)
        staged.replace(bundle)
    except OSError as error:
        staged.unlink(missing_ok=True)
        raise InputError(f"{bundle}: cannot write the signed bundle: {error.strerror or error}") from error


def read_key(path: Path) -> bytes:
    """A key file's bytes exactly as OPA reads them (an HMAC secret includes any trailing newline)."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read the key: {error.strerror or error}") from error


# --- verification ------------------------------------------------------------------------------------


def _b64_json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def token_header(signatures: bytes) -> dict[str, Any]:
    """The (unverified) JWT header of a `.signatures.json`; {} when it cannot be read."""
    try:
        token = json.loads(signatures)["signatures"][0]
        header = _b64_json(token.split(".")[0])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, binascii.Error):
        return {}
    return header if isinstance(header, dict) else {}


def verify_bundle(  # noqa: PLR0911 - one early return per OPA refusal reads like OPA's own checks
    bundle: Path,
    key: bytes,
    alg: str | None,
    key_id: str | None,
    *,
    scope: str = "",
    exclude_files: Sequence[str] = (),
) -> list[str]:
    """Check `bundle`'s signature as `opa run --verification-key` does; the problems, [] when it passes.

    `alg` None takes the token's algorithm, limited to the key's family (a PEM key never verifies an
    HMAC token). `key_id` None accepts any `kid`, like `opa run --verification-key`; a `key_id` must be
    the token's `kid` (or `keyid` claim) when the token names one, like a `keys:` entry in OPA config.
    """
    files = open_nauthera_bundle(bundle).files
    signature_names = [n for n in files if PurePosixPath(n).name == SIGNATURES_FILE]
    if not signature_names:
        return ["bundle missing .signatures.json file"]
    if len(signature_names) > 1:
        return [f"bundle contains multiple signatures files: {', '.join(sorted(signature_names))}"]
    try:
        document = json.loads(files[signature_names[0]])
        tokens = document["signatures"]
    except (ValueError, KeyError, TypeError) as error:
        return [f".signatures.json: cannot be read: {error}"]
    if not isinstance(tokens, list) or not tokens:
        return [".signatures.json: missing JWT (expected exactly one)"]
    if len(tokens) > 1:
        return [".signatures.json: multiple JWTs not supported (expected exactly one)"]
    token = tokens[0]
    if not isinstance(token, str) or token.count(".") != 2:
        return [".signatures.json: the signature is not a compact JWS"]
    try:
        header, claims = _b64_json(token.split(".")[0]), _b64_json(token.split(".")[1])
    except (ValueError, binascii.Error) as error:
        return [f".signatures.json: cannot decode the JWT: {error}"]
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return [".signatures.json: the JWT header and payload must be objects"]
    named = header.get("kid") if isinstance(header.get("kid"), str) else claims.get("keyid")
    if key_id is not None and named and named != key_id:
        return [f"verification key corresponding to ID {named} not found (the key given is {key_id!r})"]
    token_alg = header.get("alg")
    allowed = (alg,) if alg else algorithms_for_key(key)
    if alg:
        _check_alg(alg)
    if token_alg not in allowed:
        return [f"the JWT is signed with {token_alg}, the verification key is for {'/'.join(allowed)}"]
    try:
        jwt.decode(
            token,
            _public_key(key, str(token_alg)),
            algorithms=[str(token_alg)],
            options={"verify_signature": True, "verify_exp": False, "verify_aud": False, "verify_iat": False},
        )
    except jwt.PyJWTError as error:
        return [f"signature verification failed: {error}"]
    if claims.get("scope", "") != scope:
        return ["scope mismatch"]
    return _check_files(files, claims.get("files"), exclude_files)


def go_path_match(pattern: str, name: str) -> bool:
    """Go's `filepath.Match` (OPA's `exclude_files`): `*` and `?` never match `/`; `[...]` classes."""
    regex, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            regex.append("[^/]*")
        elif char == "?":
            regex.append("[^/]")
        elif char == "\\" and index + 1 < len(pattern):
            index += 1
            regex.append(re.escape(pattern[index]))
        elif char == "[":
            end = pattern.find("]", index + 2)
            if end < 0:
                return False  # Go: ErrBadPattern, which OPA treats as no match
            body = pattern[index + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            regex.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            index = end
        else:
            regex.append(re.escape(char))
        index += 1
    try:
        return re.fullmatch("".join(regex), name, flags=re.DOTALL) is not None
    except re.error:
        return False


def _check_files(files: Mapping[str, bytes], listed: Any, exclude_files: Sequence[str]) -> list[str]:
    if not isinstance(listed, list) or not all(isinstance(f, dict) for f in listed):
        return ["the JWT payload has no `files` list"]
    expected = {str(f.get("name")): f for f in listed}
    problems = []
    for raw_name in sorted(files):
        name = raw_name.lstrip("/")
        if PurePosixPath(name).name == SIGNATURES_FILE:
            continue
        if any(go_path_match(pattern, name) for pattern in exclude_files):
            expected.pop(name, None)
            continue
        entry = expected.pop(name, None)
        if entry is None:
            problems.append(f"file {name} not included in bundle signature")
            continue
        algorithm = str(entry.get("algorithm") or "")
        if not algorithm:
            problems.append(f"no hashing algorithm provided for file {name}")
            continue
        try:
            actual = file_hash(name, files[raw_name], algorithm)
        except SigningError as error:
            problems.append(str(error))
            continue
        if actual != str(entry.get("hash", "")).lower():
            problems.append(f"{name}: digest mismatch (want: {entry.get('hash')}, got: {actual})")
    if expected:
        missing = ", ".join(sorted(expected))
        problems.append(
            f"file(s) [{missing}] specified in bundle signatures but not found in the target bundle"
        )
    return problems
