"""A throwaway PKI for loopback clusters: one CA that issues every serving and client certificate.

kube-apiserver, the OPA admission webhook and Gatekeeper's webhook all serve TLS on 127.0.0.1 with
certificates from this CA, so the API server trusts the webhooks through one `caBundle`, and the
admin client certificate (`O=system:masters`) is cluster-admin. Keys are ECDSA P-256: generating one
takes microseconds (RSA-2048 takes tens of milliseconds) and every Go TLS stack here accepts them.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Certificates are valid from an hour ago (clock skew between processes is not a test subject)
#: for a week: long enough for any test session or demo, short enough to be obviously throwaway.
_BACKDATE = datetime.timedelta(hours=1)
_LIFETIME = datetime.timedelta(days=7)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


class CertificateAuthority:
    """A self-signed CA written to `folder` (ca.crt, ca.key) that issues leaf certificates there."""

    def __init__(self, folder: Path, name: str = "nauthera loopback CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self._cert.public_bytes(serialization.Encoding.PEM)
        self.cert = _write(folder / "ca.crt", self.pem)
        self.key = _write(folder / "ca.key", _private_key_pem(self._key))

    def issue(
        self,
        name: str,
        *,
        ip_addresses: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        organization: str | None = None,
        client: bool = False,
    ) -> KeyPair:
        """A leaf certificate `name.crt`/`name.key`: serving (with SANs) or, with `client`, for client auth.

        For a client certificate the common name is the Kubernetes user name and `organization` its group.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        if organization:
            attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        stem = name.replace(":", "-").replace("/", "-")
        return KeyPair(
            cert=_write(self.folder / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM)),
            key=_write(self.folder / f"{stem}.key", _private_key_pem(key)),
        )

    def session(self, client: KeyPair | None = None) -> requests.Session:
        """A keep-alive HTTPS session that trusts only this CA (optionally with a client certificate)."""
        session = requests.Session()
        # Otherwise REQUESTS_CA_BUNDLE (and proxy variables) from the environment override `verify`.
        session.trust_env = False
        session.verify = str(self.cert)
        if client is not None:
            session.cert = (str(client.cert), str(client.key))
        return session

    def serving(self, name: str) -> KeyPair:
        """A serving certificate for a server on 127.0.0.1 (SAN IP:127.0.0.1 and DNS:localhost)."""
        return self.issue(name, ip_addresses=["127.0.0.1"], dns_names=["localhost"])


def signing_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A bare key pair, `name.pub` and `name.key` (e.g. for signing service-account tokens)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _write(folder / f"{name}.pub", public), _write(folder / f"{name}.key", _private_key_pem(key))
