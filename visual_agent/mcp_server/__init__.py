"""The MCP server: the daemon's abilities as tools for other agents (docs/VISUAL_AGENT_GUIDE.md, "MCP").

| module | one job |
| --- | --- |
| `config.py` | `McpConfig`: the `mcp` section |
| `tools.py` | `DaemonTools`: what each tool does and returns (the MQTT interface's JSON), without the SDK |
| `questions.py` | `McpQuestions`: the intake of `ask` (the agent's `parse`, `take`, `refuse`; the answer's newest frame) |
| `asgi.py` | `asgi_handler`: an ASGI application as one aiohttp route (the SDK's endpoint on the daemon's port) |
| `server.py` | `McpService`: the SDK's server with the five tools, mounted on the page server (imports the SDK) |

`load_service()` imports `server.py`, so the light install (without the optional `mcp` package) never does unless
`mcp.enabled` is true, and then fails with a message that says what to install.
"""

from __future__ import annotations

from typing import Any

from .asgi import asgi_handler
from .config import DEFAULT_MCP_PATH, McpConfig
from .questions import McpQuestions
from .tools import DaemonTools, ToolArgumentError, ToolResult

__all__ = ["DEFAULT_MCP_PATH", "DaemonTools", "McpConfig", "McpQuestions", "McpUnavailableError", "ToolArgumentError",
           "ToolResult", "asgi_handler", "load_service"]

INSTALL_HINT = "pip install 'visual-agent[mcp]'"


class McpUnavailableError(ImportError):
    """`mcp.enabled` is true but the `mcp` package cannot be imported."""


def load_service() -> Any:
    """The `McpService` class; `McpUnavailableError` naming the install command when the SDK is missing."""
    try:
        from .server import McpService
    except ImportError as exc:
        raise McpUnavailableError(f"mcp.enabled is true but the MCP SDK cannot be imported ({exc}): {INSTALL_HINT}, "
                                  "or set mcp.enabled: false") from exc
    return McpService
