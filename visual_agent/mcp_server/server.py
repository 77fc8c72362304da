"""`McpService`: the MCP server (official `mcp` SDK, streamable HTTP) on the daemon's own port, at `mcp.path`.

The SDK's session manager runs stateless with JSON responses: each POST is one JSON-RPC exchange, no session is kept
between requests (nothing an outside caller can grow); only POST is routed, so no GET stream is held open (405).
Requests reach it through the page's server (`WebRTCServer.add_route`), so the token, Host/Origin checks, TLS and
deadlines are the page's; the SDK's own Host checks are off (the guard's are stricter and follow
`webrtc.allowed_hosts`). At most `mcp.max_in_flight` tool calls run at once; more get a `busy` tool error. This module
imports the SDK: import it only when MCP is on.
"""

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import Field

from .asgi import asgi_handler
from .config import McpConfig
from .tools import DaemonTools, ToolArgumentError, ToolResult

if TYPE_CHECKING:
    from ..host import DaemonHost

__all__ = ["McpService", "build_server"]

logger = logging.getLogger(__name__)

_INSTRUCTIONS = (
    "A visual agent watching live video sources (cameras, browsers, files). list_sources says which sources exist; "
    "ask answers a question about a source's current picture; search_events finds what was seen and said before "
    "(answers, descriptions, rule events) by words and time; get_rules and set_rules read and replace the standing "
    "yes/no questions (rules) that watch the sources."
)


def _result(result: ToolResult) -> CallToolResult:
    content: list[Any] = [TextContent(type="text", text=json.dumps(result.payload, ensure_ascii=False))]
    content += [ImageContent(type="image", data=base64.b64encode(jpeg).decode("ascii"), mime_type="image/jpeg")
                for jpeg in result.images]
    return CallToolResult(content=content, structured_content=result.payload, is_error=result.error)


class _Limiter:
    """At most `limit` tool calls at once; one more is refused at once (no queue that grows)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self.refused = 0

    async def run(self, call: Awaitable[ToolResult]) -> CallToolResult:
        if self.running >= self.limit:
            self.refused += 1
            if asyncio.iscoroutine(call):
                call.close()
            raise ToolError(f"busy: {self.running} tool calls in flight (mcp.max_in_flight); call again shortly")
        self.running += 1
        try:
            return _result(await call)
        except ToolArgumentError as exc:
            raise ToolError(str(exc)) from None
        finally:
            self.running -= 1


def build_server(tools: DaemonTools, limiter: _Limiter, version: str) -> MCPServer:
    """The MCP server with the daemon's five tools."""
    server: MCPServer = MCPServer("visual-agent", instructions=_INSTRUCTIONS, version=version)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=read_only)
    async def list_sources() -> CallToolResult:
        """The video sources this daemon holds, with their state (waiting, live, ended), frame rate and size."""
        return await limiter.run(tools.list_sources())

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def ask(
        question: Annotated[str, Field(description="The question about the picture.")],
        source: Annotated[str | None, Field(description="The source to look at (list_sources); none: the default.")] = None,
        frames: Annotated[int | None, Field(description="How many recent frames to look at; none: the daemon's.")] = None,
    ) -> CallToolResult:
        """Ask about what a source shows now. Returns the answer JSON (`text`, `source`, `frames`, `model`, `error`)
        and the newest frame the answer used as an image."""
        return await limiter.run(tools.ask(question, source, frames))

    @server.tool(annotations=read_only)
    async def search_events(
        query: Annotated[str | None, Field(description="Words to find in the stored texts (all must match).")] = None,
        since: Annotated[float | None, Field(description="Only events at or after this Unix time (seconds).")] = None,
        until: Annotated[float | None, Field(description="Only events at or before this Unix time (seconds).")] = None,
        source: Annotated[str | None, Field(description="Only events of this source.")] = None,
        kind: Annotated[str | None, Field(description="Only this kind: answer, description, memory or rule.")] = None,
        limit: Annotated[int | None, Field(description="At most this many events (newest first).")] = None,
    ) -> CallToolResult:
        """Search what the daemon saw and said before: answers, descriptions and rule events, newest first, with
        their times (`at`, Unix seconds) and the first thumbnails as images."""
        return await limiter.run(tools.search_events(query, since, until, source, kind, limit))

    @server.tool(annotations=read_only)
    async def get_rules() -> CallToolResult:
        """The standing yes/no questions (rules): each rule's state JSON under `rules`, and the rule set that
        set_rules replaces under `set`."""
        return await limiter.run(tools.get_rules())

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                                             open_world_hint=False))
    async def set_rules(
        rules: Annotated[list[dict[str, Any]], Field(description=(
            "The whole rule set (it replaces the earlier one; [] removes all): objects with `name` ([a-z0-9_]), "
            "`source`, `question` (yes/no), and optionally `check_every_s`, `only_on_change`, `on_after`, "
            "`off_after`, `cooldown_s`, `lookback_s`."))],
    ) -> CallToolResult:
        """Replace the rules set over MQTT (`<prefix>/rules/set`; rules from the config stay). A refused set changes
        nothing and returns the error."""
        return await limiter.run(tools.set_rules(rules))

    return server


class McpService:
    """Mounts the MCP endpoint on the daemon's page server (`mount`, before it starts), runs the SDK's session
    manager (`start`), stops it (`close`, safe twice)."""

    def __init__(self, daemon: "DaemonHost", config: McpConfig, *, version: str = "0.1.0") -> None:
        self.config = config
        self.limiter = _Limiter(config.max_in_flight)
        self.server = build_server(DaemonTools(daemon, config), self.limiter, version)
        # Builds the session manager: stateless, JSON answers; Host checks are the page server's.
        self.server.streamable_http_app(streamable_http_path=config.path, json_response=True, stateless_http=True,
                                        max_request_body_size=config.max_body_bytes,
                                        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def mount(self, driver: Any) -> None:
        """Serve the endpoint on `driver` (a `WebRTCServer` not yet started), behind its guard."""
        handler = asgi_handler(self.server.session_manager.handle_request, max_body_bytes=self.config.max_body_bytes,
                               body_timeout_s=driver.config.body_timeout_s)
        driver.add_route("POST", self.config.path, handler)  # stateless: no GET stream, no session to DELETE (405)

    async def start(self) -> None:
        """Run the session manager in a task of its own (its task group lives there from start to close)."""
        ready = asyncio.Event()

        async def run() -> None:
            async with self.server.session_manager.run():
                ready.set()
                await self._stop.wait()

        self._task = asyncio.get_running_loop().create_task(run(), name="mcp-session-manager")
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()  # raises what stopped it
        logger.info("MCP: tools %s served at %s", "list_sources, ask, search_events, get_rules, set_rules", self.config.path)

    def stats(self) -> dict[str, int]:
        """Tool calls running now and refused as busy."""
        return {"in_flight": self.limiter.running, "refused_busy": self.limiter.refused}

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 5.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            logger.exception("MCP: the session manager failed while stopping")
