"""`visual-agent cert`: a self-signed certificate for the page's HTTPS, for the host names and IPs given.

Browsers open the camera only on secure pages, so a page reached from a phone needs HTTPS. A self-signed
certificate is enough for a home network: the browser warns once; compare the SHA-256 fingerprint it shows
with the one printed here before accepting it. For no warning at all, use a certificate from your own CA
(or a public one) in `webrtc.tls_certfile`/`tls_keyfile` instead.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["DEFAULT_CERT_DAYS", "SelfSignedCertificate", "fingerprint_sha256", "make_self_signed"]

DEFAULT_CERT_DAYS = 825
"""Validity of a made certificate (the longest Apple platforms accept for a server certificate)."""


@dataclass(frozen=True)
class SelfSignedCertificate:
    """Where `make_self_signed` wrote the pair, and the certificate's SHA-256 fingerprint (AA:BB:...)."""

    certfile: Path
    keyfile: Path
    fingerprint: str
    names: tuple[str, ...]


def fingerprint_sha256(der: bytes) -> str:
    """``AA:BB:...`` of a DER certificate, as browsers show it."""
    import hashlib

    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def make_self_signed(names: Sequence[str], certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str], *,
                     days: int = DEFAULT_CERT_DAYS, overwrite: bool = False) -> SelfSignedCertificate:
    """Write a self-signed ECDSA P-256 certificate for `names` (DNS names and IP addresses) and its key.

    The key is written to a new file readable by its owner only and renamed into place (so `overwrite` never
    keeps an old file's wider mode). Raises `ConfigError` for no names, a bad name, files that exist (unless
    `overwrite`), or a symbolic link where either file goes.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # aiortc depends on it, so a working install has it
        raise ConfigError("`visual-agent cert` needs the cryptography package (pip install cryptography)") from exc
    if not names:
        raise ConfigError("give at least one host name or IP address the page will be opened by")
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            if not name or any(c.isspace() or c in "/:@" for c in name):
                raise ConfigError(f"not a host name or IP address: {name!r}") from None
            alt.append(x509.DNSName(name.lower()))
    cert_path, key_path = Path(certfile).expanduser(), Path(keyfile).expanduser()
    for path in (cert_path, key_path):
        if path.is_symlink():  # even with --force: writing through it would put a key wherever the link points
            raise ConfigError(f"{path} is a symbolic link; refusing to write through it (give the real path)")
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} exists; remove it or pass --force")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    _replace_file(key_path, key_pem, 0o600)
    _replace_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return SelfSignedCertificate(cert_path, key_path, fingerprint_sha256(cert.public_bytes(serialization.Encoding.DER)),
                                 tuple(names))


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new file beside `path`, created with `mode` (never wider: an old file's mode is not kept),
    and rename it over `path`: the rename replaces a directory entry, so it never writes through a link."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # O_EXCL, mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def cert_command(names: Sequence[str], certfile: str, keyfile: str, days: int, force: bool) -> int:
    """The CLI's `cert` subcommand: make the pair and say how to use it."""
    made = make_self_signed(names, certfile, keyfile, days=days, overwrite=force)
    print(f"certificate: {made.certfile}")
    print(f"key:         {made.keyfile} (keep it private)")
    print(f"names:       {', '.join(made.names)}")
    print(f"SHA-256 fingerprint: {made.fingerprint}")
    print("use it with:")
    print(f"  webrtc: {{tls_certfile: {made.certfile}, tls_keyfile: {made.keyfile}}}")
    print("the browser warns once about a self-signed certificate: check that it shows this fingerprint")
    return 0
