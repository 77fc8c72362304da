"""The page's URL, and which address to print in it: a server bound to every interface (0.0.0.0, ::) is reached by a
phone at one of the certificate's names or at this machine's LAN address, never at ``0.0.0.0``."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from .config import WebRTCConfig
from .tls import certificate_names

__all__ = ["WILDCARD_HOSTS", "lan_addresses", "page_url", "reachable_hosts"]

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_PROBE = ("192.0.2.1", 9)
"""TEST-NET-1: a UDP socket "connected" there learns the default route's source address; nothing is sent."""


def lan_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses, the default route's first; empty when there is none."""
    found: list[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_PROBE)
            found.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    found.extend(str(info[4][0]) for info in infos)
    usable = []
    for address in found:
        ip = ipaddress.ip_address(address)
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local) and address not in usable:
            usable.append(address)
    return usable


def reachable_hosts(bound: str, certificate_names: Iterable[str] = ()) -> list[str]:
    """Host names to put in the page's URL, best first: the bound host itself unless it is a wildcard; else the
    certificate's names (a browser trusts only those), then the LAN addresses, then 127.0.0.1."""
    if bound not in WILDCARD_HOSTS:
        return [bound]
    names = [n for n in certificate_names if "*" not in n and n not in ("localhost", "127.0.0.1", "::1")]
    hosts = names + [a for a in lan_addresses() if a not in names]
    return hosts or ["127.0.0.1"]


def page_url(config: WebRTCConfig, port: int, host: str | None = None) -> str:
    """The page's URL with the token in its fragment (``/#token=...``): for a person's terminal, never a log. With no
    `host`, the first of `reachable_hosts` (the certificate's names read from `config.tls_certfile`)."""
    if host is None:
        names = certificate_names(config.tls_certfile) if config.tls_certfile else []
        host = reachable_hosts(config.host, names)[0]
    name = f"[{host}]" if ":" in host and not host.startswith("[") else host
    base = f"{'https' if config.tls else 'http'}://{name}:{port}/"
    return f"{base}#token={config.auth_token}" if config.auth_token else base
