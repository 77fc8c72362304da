"""Restrict the local addresses aioice offers as ICE host candidates.

aioice gathers host candidates from every interface except 127.0.0.1 (``aioice.ice.get_host_addresses``)
and has no option to choose them. `restrict_host_addresses(["127.0.0.1"])` replaces that function with one
that returns the given addresses (IPv4 and/or IPv6 as aioice asks), so a server bound to one interface
offers only that interface, and tests in a loopback-only network namespace connect over 127.0.0.1.

This is process-wide (aioice reads a module-level function): the last call wins, for every peer
connection created afterwards, including aiortc clients in the same process. `restrict_host_addresses(None)`
restores aioice's own function.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import aioice.ice

__all__ = ["current_host_addresses", "restrict_host_addresses"]

_ORIGINAL = aioice.ice.get_host_addresses
_restricted: list[str] | None = None


def _restricted_get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = list(_restricted or [])
    return [
        a for a in addresses
        if (use_ipv4 and ipaddress.ip_address(a).version == 4) or (use_ipv6 and ipaddress.ip_address(a).version == 6)
    ]


def restrict_host_addresses(addresses: Sequence[str] | None) -> None:
    """Offer only `addresses` as ICE host candidates from now on (None: aioice's default again)."""
    global _restricted
    if addresses is None:
        _restricted = None
        aioice.ice.get_host_addresses = _ORIGINAL
        return
    checked = [str(ipaddress.ip_address(a)) for a in addresses]  # ValueError names a bad address
    _restricted = checked
    aioice.ice.get_host_addresses = _restricted_get_host_addresses


def current_host_addresses() -> list[str] | None:
    """The addresses set by `restrict_host_addresses`, or None when aioice chooses."""
    return None if _restricted is None else list(_restricted)
