"""HTTPS for the ingest server: the server's `ssl.SSLContext` and the host names its certificate covers.

Browsers give the camera (``getUserMedia``) only to secure contexts: ``https://`` pages, or ``http://``
on localhost. A page opened from a phone or another computer therefore needs HTTPS.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from .errors import WebRTCConfigError

__all__ = ["certificate_names", "server_ssl_context"]

logger = logging.getLogger(__name__)


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context with `certfile`/`keyfile` loaded; `WebRTCConfigError` naming the file otherwise."""
    for key, path in (("tls_certfile", certfile), ("tls_keyfile", keyfile)):
        if not Path(path).expanduser().is_file():
            raise WebRTCConfigError(f"webrtc.{key}: no file {path!r} (`visual-agent cert` makes a certificate and key)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(Path(certfile).expanduser()), str(Path(keyfile).expanduser()))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise WebRTCConfigError(
            f"webrtc.tls_certfile/tls_keyfile: cannot load {certfile!r} with {keyfile!r}: {exc} "
            "(PEM certificate and its unencrypted PEM key)"
        ) from exc
    return context


def certificate_names(certfile: str) -> list[str]:
    """DNS names and IP addresses in the certificate's subjectAltName (empty when it cannot be read)."""
    try:
        from cryptography import x509
    except ImportError:  # aiortc depends on cryptography; without it, list hosts in webrtc.allowed_hosts
        logger.warning("cryptography is not installed: the certificate's names are not added to the allowed hosts")
        return []
    try:
        cert = x509.load_pem_x509_certificate(Path(certfile).expanduser().read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError, OSError):
        return []
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return names
