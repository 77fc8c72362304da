"""`McpConfig`: the `mcp` section. The MCP server is served on the daemon's own HTTP port (behind the page's token,
Host and Origin checks, and its TLS), at `mcp.path`; it is off unless `mcp.enabled` is true, and then needs the
optional `mcp` package (`pip install 'visual-agent[mcp]'`)."""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, field_validator

from ..strict_numbers import NumbersNotBooleans

__all__ = ["DEFAULT_MCP_PATH", "McpConfig"]

DEFAULT_MCP_PATH = "/mcp"
DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_IMAGES = 8

_PATH = re.compile(r"/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_TAKEN = ("/", "/app.js", "/healthz", "/favicon.ico", "/offer", "/whip", "/webrtc-config", "/metrics", "/events")


class McpConfig(NumbersNotBooleans):
    """The MCP server for other agents (tools `list_sources`, `ask`, `search_events`, `get_rules`, `set_rules`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    enabled: bool = False
    """Serve MCP (streamable HTTP) at `path` on the daemon's port. Off by default: it needs the optional `mcp`
    package, and it lets any holder of the page's token set rules."""
    path: str = DEFAULT_MCP_PATH
    """Where the MCP endpoint is served on the daemon's HTTP port."""
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, le=256)
    """Tool calls served at once; more get a `busy` tool error (questions are bounded again by `agent.max_in_flight`)."""
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, le=4 * 1024 * 1024)
    """Largest MCP request body (413 beyond)."""
    max_images: int = Field(DEFAULT_MAX_IMAGES, ge=0, le=32)
    """Most event thumbnails a `search_events` result carries as image content (the JSON lists every event)."""

    @field_validator("path")
    @classmethod
    def _path_ok(cls, value: str) -> str:
        if not _PATH.fullmatch(value) or value in _TAKEN or value.startswith("/events/"):
            raise ValueError(f"must be a path like {DEFAULT_MCP_PATH!r} (letters, digits, '_', '.', '-') that the "
                             "page does not serve already")
        return value
