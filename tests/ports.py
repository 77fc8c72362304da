"""A free TCP port on 127.0.0.1, for servers the tests start (mosquitto, vLLM, the daemon's page)."""

from __future__ import annotations

import socket

__all__ = ["free_tcp_port"]


def free_tcp_port() -> int:
    """A port nothing listens on now (the kernel's pick; a server started right after takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
